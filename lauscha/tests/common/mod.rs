//! Test harness: a real `lauscha dev` process (in-process roles or `--cluster`), found
//! through its cluster.json, driven with aws-sdk-s3.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use serde_json::Value;

pub const ACCESS_KEY: &str = "LKTESTACCESSKEY00001";
pub const SECRET_KEY: &str = "test/secret+key0123456789abcdefghijklmn";

/// A running `lauscha dev`; killed (SIGKILL) when dropped.
pub struct Dev {
    pub child: Child,
    pub data_dir: PathBuf,
    pub cluster: Value,
    _tmp: Option<tempfile::TempDir>,
}

fn lauscha() -> &'static str {
    env!("CARGO_BIN_EXE_lauscha")
}

impl Dev {
    /// Starts `lauscha dev` on a fresh directory.
    pub fn start(extra: &[&str]) -> Dev {
        Dev::start_env(extra, &[])
    }

    /// Starts `lauscha dev` on `data_dir` (which may hold an earlier run's data).
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Dev {
        Dev::start_in_env(data_dir, extra, &[])
    }

    /// Starts `lauscha dev` in a fresh temporary directory with extra environment
    /// variables (config overrides such as `LAUSCHA__GATEWAY__MAINTENANCE__GC_GRACE_S`
    /// reach every child process of a `--cluster`).
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Dev {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().join("data");
        let mut dev = Dev::start_in_env(&data_dir, extra, env);
        if std::env::var_os("LAUSCHA_TEST_KEEP").is_some() {
            eprintln!("keeping {}", tmp.keep().display());
        } else {
            dev._tmp = Some(tmp);
        }
        dev
    }

    /// As [`Dev::start_in`], with extra environment variables.
    pub fn start_in_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Dev {
        std::fs::create_dir_all(data_dir).expect("create data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("dev.log"))
            .expect("open dev.log");
        let mut child = Command::new(lauscha())
            .args(["dev", "--data-dir"])
            .arg(data_dir)
            .args([
                "--s3-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--nbd-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("LAUSCHA_ACCESS_KEY", ACCESS_KEY)
            .env("LAUSCHA_SECRET_KEY", SECRET_KEY)
            .env("LAUSCHA_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start lauscha dev");
        // The banner is printed after cluster.json is in place: wait for it, not for time.
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.any(|line| {
            line.map(|l| l.contains("Lauscha dev is running"))
                .unwrap_or(false)
        });
        assert!(ready, "lauscha dev exited before it was ready");
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let cluster: Value = serde_json::from_slice(
            &std::fs::read(data_dir.join("cluster.json")).expect("cluster.json"),
        )
        .expect("cluster.json parses");
        Dev {
            child,
            data_dir: data_dir.to_path_buf(),
            cluster,
            _tmp: None,
        }
    }

    /// The NBD address, `host:port`.
    pub fn nbd_addr(&self) -> String {
        self.cluster["nbd_endpoint"]
            .as_str()
            .expect("NBD served")
            .trim_start_matches("nbds://")
            .trim_start_matches("nbd://")
            .to_string()
    }

    pub fn endpoint(&self) -> String {
        self.cluster["s3_endpoint"].as_str().unwrap().to_string()
    }

    pub fn client(&self) -> Client {
        client(&self.endpoint(), ACCESS_KEY, SECRET_KEY)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill lauscha dev");
        self.child.wait().expect("reap lauscha dev");
    }

    /// Processes of a role in cluster.json.
    pub fn processes(&self, role: &str) -> Vec<Value> {
        self.cluster["processes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["role"] == role)
            .cloned()
            .collect()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An S3 client for `endpoint` with the given key.
pub fn client(endpoint: &str, access_key: &str, secret_key: &str) -> Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(access_key, secret_key, None, None, "test"))
        .force_path_style(true)
        // One attempt: a test must see the first answer, not a retried one.
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(1))
        .build();
    Client::from_conf(config)
}

/// SIGKILL a process by pid, and return once it is dead: a signal is delivered
/// asynchronously, and a process restarted on the same directory while the old one still
/// holds its files (RocksDB's lock, the listening port) would fail to start.
pub fn kill_pid(pid: u64) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -9 {pid}");
    wait_dead(pid);
}

/// Waits until `pid` has exited (gone, or a zombie its parent has not reaped yet).
fn wait_dead(pid: u64) {
    assert!(
        dies_within(pid, Duration::from_secs(10)),
        "process {pid} still alive 10 s after SIGKILL"
    );
}

/// Whether process `pid` is gone (or a zombie) within `timeout`.
pub fn dies_within(pid: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        // Field 3 of /proc/PID/stat, after the parenthesised command name.
        let dead = match &state {
            None => true,
            Some(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|s| s == "Z" || s == "X"),
        };
        if dead {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A process a test started; SIGKILLed when dropped, also when the test fails.
pub struct Restarted(pub Child);

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Restarts a cluster process with the argv cluster.json gives.
pub fn restart(process: &Value) -> Restarted {
    restart_ready(process).0
}

/// As [`restart`], with the process's readiness line (its listen addresses: a gateway's
/// S3, admin and NBD ports are new ones).
pub fn restart_ready(process: &Value) -> (Restarted, Value) {
    let argv: Vec<String> = process["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    // Not the test's own stderr (the harness would wait for this process to close it): a
    // file, shown if the process does not come up.
    let log_path = std::env::temp_dir().join(format!(
        "lauscha-restart-{}-{}-{}.log",
        process["role"].as_str().unwrap_or("process"),
        process["id"],
        std::process::id()
    ));
    let log = std::fs::File::create(&log_path).expect("create restart log");
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .env("LAUSCHA_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("restart process");
    // One readiness line once it serves.
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(
        line.contains("listen"),
        "restarted process not ready: {line:?}; its log:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    let _ = std::fs::remove_file(&log_path);
    std::thread::spawn(move || for _ in reader.lines() {});
    let ready = serde_json::from_str(&line).expect("readiness line is JSON");
    (Restarted(child), ready)
}

/// Deterministic bytes for an object.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    lauscha_core_bytes(seed, len)
}

fn lauscha_core_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub async fn must_create_bucket(s3: &Client, bucket: &str) {
    s3.create_bucket()
        .bucket(bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
}

pub async fn must_put(s3: &Client, bucket: &str, key: &str, body: &[u8]) -> String {
    let out = s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body.to_vec().into())
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {bucket}/{key}: {e:?}"));
    out.e_tag().unwrap_or_default().to_string()
}

pub async fn must_get(s3: &Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {bucket}/{key}: {e:?}"));
    out.body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("read body of {bucket}/{key}: {e:?}"))
        .into_bytes()
        .to_vec()
}

pub async fn must_get_range(s3: &Client, bucket: &str, key: &str, range: &str) -> Vec<u8> {
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .range(range)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {bucket}/{key} {range}: {e:?}"));
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

/// The S3 error code and HTTP status of a failed call.
#[track_caller]
pub fn error_of<E, R>(
    result: Result<R, aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::http::Response>>,
) -> (String, u16)
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    match result {
        Ok(ok) => panic!("expected an error, got {ok:?}"),
        Err(e) => {
            let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
            let code = e
                .as_service_error()
                .and_then(|s| s.code())
                .unwrap_or("<none>")
                .to_string();
            (code, status)
        }
    }
}

/// Waits until `f` returns true, checking every 50 ms, for at most `timeout`. For
/// conditions another process makes true (a node is up again), not for ordering.
pub async fn eventually(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

pub fn md5_hex(data: &[u8]) -> String {
    use md5::Digest as _;
    hex::encode(md5::Md5::digest(data))
}

/// Serialises the tests that run whole clusters: on two cores, parallel clusters would
/// starve each other's Raft timers.
pub async fn cluster_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

impl Dev {
    /// Runs `lauscha admin --data-dir DIR --json ARGS` and parses its output.
    pub fn admin(&self, args: &[&str]) -> Value {
        let out = Command::new(lauscha())
            .args(["admin", "--json", "--data-dir"])
            .arg(&self.data_dir)
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("run lauscha admin");
        assert!(
            out.status.success(),
            "lauscha admin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("admin prints JSON")
    }

    /// Every voter's status as the admin API reports it.
    pub fn voters(&self) -> Vec<Value> {
        self.admin(&["meta", "status"])["metadata"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The id of the voter that says it is leader, if one does.
    pub fn leader(&self) -> Option<u64> {
        self.voters()
            .iter()
            .find(|v| v["state"] == "leader")
            .and_then(|v| v["node_id"].as_u64())
    }

    /// The cluster.json entry of a process.
    pub fn process(&self, role: &str, id: u64) -> Value {
        self.processes(role)
            .into_iter()
            .find(|p| p["id"].as_u64() == Some(id))
            .unwrap_or_else(|| panic!("no {role} {id} in cluster.json"))
    }
}

/// Sends a signal by name (`KILL`, `STOP`, `CONT`) to a pid; after `KILL`, returns once
/// the process is dead.
pub fn signal(pid: u64, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
    if name == "KILL" {
        wait_dead(pid);
    }
}

/// Starts `lauscha server` with the given TOML config (written into `dir`); returns the
/// process and its readiness line.
pub fn start_server(dir: &Path, name: &str, toml: &str) -> (Restarted, Value) {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut child = Command::new(lauscha())
        .args(["server", "--config"])
        .arg(&path)
        .env("LAUSCHA_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start lauscha server");
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    std::thread::spawn(move || for _ in reader.lines() {});
    let ready: Value = serde_json::from_str(line.trim()).unwrap_or_else(|_| {
        panic!(
            "{name} did not start; see {}",
            dir.join(format!("{name}.log")).display()
        )
    });
    (Restarted(child), ready)
}

/// One HTTP/1.1 exchange on a fresh connection, for what an S3 SDK cannot send (CORS
/// preflight, anonymous requests, foreign signatures): status, headers (names
/// lower-case) and body (the response must carry Content-Length or end the connection).
pub fn raw_http(
    endpoint: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::{Read, Write};
    let addr = endpoint.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, response[split + 4..].to_vec())
}

/// The value of a header in a `raw_http` answer.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Runs a client tool (qemu-io, nbdinfo, ...) and returns what it did, success or not.
pub fn tool_output(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} could not run (install it: see .ci/run): {e}"))
}

/// A tool's stdout and stderr, as one text.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a client tool; panics with its output when it fails.
#[track_caller]
pub fn run(program: &str, args: &[&str]) -> String {
    let out = tool_output(program, args);
    let text = output_text(&out);
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

/// An NBD option request: `IHAVEOPT, option, length, data`.
pub fn nbd_option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut out = lauscha_core::nbd::IHAVEOPT.to_be_bytes().to_vec();
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The data of NBD_OPT_GO / NBD_OPT_INFO for `export`, asking for no extra information.
pub fn nbd_info_request(export: &str) -> Vec<u8> {
    let mut data = (export.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(export.as_bytes());
    data.extend_from_slice(&0u16.to_be_bytes());
    data
}

/// Reads one NBD option reply: its type and data.
pub fn read_nbd_option_reply(tcp: &mut std::net::TcpStream) -> (u32, Vec<u8>) {
    use std::io::Read;
    let mut header = [0u8; 20];
    tcp.read_exact(&mut header).unwrap();
    assert_eq!(
        &header[..8],
        &lauscha_core::nbd::OPT_REPLY_MAGIC.to_be_bytes()
    );
    let reply_type = u32::from_be_bytes(header[12..16].try_into().unwrap());
    let len = u32::from_be_bytes(header[16..20].try_into().unwrap());
    let mut data = vec![0u8; len as usize];
    tcp.read_exact(&mut data).unwrap();
    (reply_type, data)
}
