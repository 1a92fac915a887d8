#!/usr/bin/env python3
"""Benchmark helper, not a test: 4 KiB PUT and GET operations per second.

N threads, each with its own boto3 client (own session and connection pool),
run PUTs of 4 KiB for a fixed time, then GETs of the objects just written for
the same time. SDK defaults are kept (including request checksums).

Environment:
  LAUSCHA_ENDPOINT        S3 endpoint of a running `lauscha dev` (required)
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (required), AWS_DEFAULT_REGION (default us-east-1)
  SMALL_OPS_THREADS       concurrent clients (default 16)
  SMALL_OPS_SECONDS       duration of each phase (default 10)
  SMALL_OPS_BUCKET        bucket (default small-ops; created if missing, and
                          then removed again at the end)
  SMALL_OPS_KEEP=1        leave the objects (and bucket) in place

Prints put_4KiB_ops_per_s=..., get_4KiB_ops_per_s=... and latency
percentiles. boto3 spends about a millisecond of CPU per request under the
GIL, so with 2 cores the client side may be what limits these numbers.
Exits 1 if any request failed or a GET returned wrong bytes.
"""

import os
import random
import sys
import threading
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

SIZE = 4096


def env_int(name, default):
    value = os.environ.get(name, str(default))
    try:
        n = int(value)
    except ValueError:
        sys.exit(f"small_ops: {name}={value!r} is not an integer")
    if n <= 0:
        sys.exit(f"small_ops: {name} must be positive")
    return n


def make_client(endpoint):
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        config=Config(
            s3={"addressing_style": "path"},
            # No retries: a failed request is counted as an error, not hidden.
            retries={"mode": "standard", "total_max_attempts": 1},
        ),
    )


class Worker:
    def __init__(self):
        self.ok = 0
        self.errors = 0
        self.first_error = None
        self.latencies = []
        self.keys = []
        self.end = 0.0

    def error(self, what):
        self.errors += 1
        if self.first_error is None:
            self.first_error = what


def run_phase(name, clients, seconds, op):
    """Runs op(client, worker, tid, i) in a loop on every thread for `seconds`."""
    workers = [Worker() for _ in clients]
    shared = {}

    def set_deadline():
        shared["start"] = time.monotonic()
        shared["deadline"] = shared["start"] + seconds

    barrier = threading.Barrier(len(clients), action=set_deadline)

    def loop(tid):
        w = workers[tid]
        barrier.wait()
        deadline = shared["deadline"]
        i = 0
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                good = op(clients[tid], w, tid, i)
            except Exception as e:  # any failure counts, not just ClientError
                w.error(f"{type(e).__name__}: {e}")
            else:
                if good:
                    w.ok += 1
                    w.latencies.append(time.perf_counter() - t0)
            i += 1
        w.end = time.monotonic()

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    elapsed = max(w.end for w in workers) - shared["start"]
    ok = sum(w.ok for w in workers)
    errors = sum(w.errors for w in workers)
    lat = sorted(x for w in workers for x in w.latencies)
    print(f"{name}_ops_per_s={ok / elapsed:.1f}")
    print(f"{name}_ops={ok}")
    if lat:
        print(f"{name}_p50_ms={lat[len(lat) // 2] * 1000:.2f}")
        print(f"{name}_p99_ms={lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000:.2f}")
    print(f"{name}_errors={errors}", flush=True)
    for w in workers:
        if w.first_error:
            print(f"small_ops: {name}: first error: {w.first_error}", file=sys.stderr)
            break
    return workers, errors


def main():
    endpoint = os.environ.get("LAUSCHA_ENDPOINT")
    if not endpoint or not os.environ.get("AWS_ACCESS_KEY_ID") or not os.environ.get("AWS_SECRET_ACCESS_KEY"):
        sys.exit("small_ops: set LAUSCHA_ENDPOINT, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    threads = env_int("SMALL_OPS_THREADS", 16)
    seconds = env_int("SMALL_OPS_SECONDS", 10)
    bucket = os.environ.get("SMALL_OPS_BUCKET", "small-ops")
    keep = os.environ.get("SMALL_OPS_KEEP") == "1"

    # Clients are created up front, one session each (sessions are not
    # thread-safe), so that set-up cost is not measured.
    clients = [make_client(endpoint) for _ in range(threads)]
    admin = clients[0]
    created = False
    try:
        admin.head_bucket(Bucket=bucket)
    except ClientError:
        admin.create_bucket(Bucket=bucket)
        created = True

    payload = os.urandom(SIZE)
    run_id = f"{int(time.time())}-{os.getpid()}"
    print(f"small_ops: {threads} threads, {seconds} s per phase, bucket {bucket}, "
          f"endpoint {endpoint}", file=sys.stderr, flush=True)

    def put(client, w, tid, i):
        key = f"small-ops/{run_id}/{tid:02d}/{i:08d}"
        client.put_object(Bucket=bucket, Key=key, Body=payload)
        w.keys.append(key)
        return True

    put_workers, put_errors = run_phase("put_4KiB", clients, seconds, put)
    keys = [k for w in put_workers for k in w.keys]
    if not keys:
        sys.exit("small_ops: no PUT succeeded; nothing to GET")

    orders = []
    for tid in range(threads):
        order = keys[:]
        random.Random(tid).shuffle(order)
        orders.append(order)

    def get(client, w, tid, i):
        key = orders[tid][i % len(keys)]
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        if body != payload:
            w.error(f"GET {key}: {len(body)} bytes that differ from the {SIZE} put")
            return False
        return True

    _, get_errors = run_phase("get_4KiB", clients, seconds, get)

    if not keep:
        for n in range(0, len(keys), 1000):
            batch = keys[n:n + 1000]
            resp = admin.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            if resp.get("Errors"):
                sys.exit(f"small_ops: clean-up: delete_objects errors {resp['Errors'][:3]}")
        if created:
            admin.delete_bucket(Bucket=bucket)

    if put_errors or get_errors:
        sys.exit(f"small_ops: {put_errors} PUT and {get_errors} GET errors")


if __name__ == "__main__":
    main()
