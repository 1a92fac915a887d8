//! `lauscha-load`: the S3 load generator. Fills buckets with many small objects, measures
//! listing speed at scale, and small-object PUT/GET rates with concurrent clients.
//!
//! Examples (against `lauscha dev --data-dir DIR`, which holds the endpoint and keys):
//!   lauscha-load --data-dir DIR fill --bucket big --keys 1000000
//!   lauscha-load --data-dir DIR list --bucket big
//!   lauscha-load --data-dir DIR small --concurrency 16 --seconds 10
//!   lauscha-load --data-dir DIR fill --bucket big --keys 16 --size 67108864 --concurrency 2
//!   lauscha-load --data-dir DIR get --bucket big --keys 16 --seconds 20 --label healthy
//! Results are printed as `name=value` lines for scripts; progress goes to stderr.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use lauscha_benches::pseudo_random_bytes;

#[derive(Parser)]
#[command(about = "S3 load generator for Lauscha")]
struct Cli {
    /// S3 endpoint URL (or take it from --data-dir).
    #[arg(long)]
    endpoint: Option<String>,
    /// A `lauscha dev` data directory: endpoint and root keys from its credentials.json.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// PUT many small objects: keys `dNNN/kNNNNNNN` spread over 100 prefixes.
    Fill {
        #[arg(long)]
        bucket: String,
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// List a bucket in pages of 1,000: flat, then every prefix with a delimiter.
    List {
        #[arg(long)]
        bucket: String,
    },
    /// GETs of the objects `fill` wrote, by concurrent clients for a fixed time; every
    /// body is compared with what `fill` sent. Reports MB/s and latency percentiles.
    Get {
        #[arg(long)]
        bucket: String,
        /// How many of the filled keys to read (the first N).
        #[arg(long)]
        keys: u64,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Prefix of the result names, e.g. `healthy` or `degraded`.
        #[arg(long, default_value = "get")]
        label: String,
    },
    /// Small-object PUTs then GETs with concurrent clients for a fixed time each.
    Small {
        #[arg(long, default_value = "small-ops")]
        bucket: String,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 4096)]
        size: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

fn client(cli: &Cli) -> anyhow::Result<Client> {
    let (endpoint, access, secret) = match &cli.data_dir {
        Some(dir) => {
            let creds: serde_json::Value = serde_json::from_slice(
                &std::fs::read(dir.join("credentials.json"))
                    .with_context(|| format!("read {}/credentials.json", dir.display()))?,
            )?;
            let s = |k: &str| creds[k].as_str().unwrap_or_default().to_string();
            (s("endpoint"), s("access_key_id"), s("secret_access_key"))
        }
        None => (
            cli.endpoint
                .clone()
                .context("pass --endpoint or --data-dir")?,
            std::env::var("AWS_ACCESS_KEY_ID").context("AWS_ACCESS_KEY_ID")?,
            std::env::var("AWS_SECRET_ACCESS_KEY").context("AWS_SECRET_ACCESS_KEY")?,
        ),
    };
    let endpoint = cli.endpoint.clone().unwrap_or(endpoint);
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(access, secret, None, None, "load"))
        .force_path_style(true)
        .build();
    Ok(Client::from_conf(config))
}

fn key(i: u64) -> String {
    format!("d{:03}/k{i:07}", i % 100)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:40}} {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
        ))
        .expect("valid template"),
    );
    bar
}

async fn ensure_bucket(s3: &Client, bucket: &str) -> anyhow::Result<()> {
    match s3.create_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let code = e
                .as_service_error()
                .and_then(|s| s.meta().code())
                .unwrap_or("");
            if code == "BucketAlreadyOwnedByYou" {
                Ok(())
            } else {
                bail!("create bucket {bucket}: {e:?}")
            }
        }
    }
}

async fn fill(
    s3: Client,
    bucket: &str,
    keys: u64,
    size: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    ensure_bucket(&s3, bucket).await?;
    let body = pseudo_random_bytes(1, size);
    let bar = progress(keys, "fill");
    let started = Instant::now();
    let failures = AtomicU64::new(0);
    futures::stream::iter(0..keys)
        .map(|i| {
            let (s3, body, bar, failures) = (&s3, body.clone(), &bar, &failures);
            async move {
                // Retry a few times: a fill should not stop for one transient error.
                for _ in 0..5 {
                    let put = s3
                        .put_object()
                        .bucket(bucket)
                        .key(key(i))
                        .body(body.clone().into())
                        .send()
                        .await;
                    if put.is_ok() {
                        bar.inc(1);
                        return;
                    }
                }
                failures.fetch_add(1, Ordering::Relaxed);
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!("fill_keys={keys}");
    println!("fill_seconds={secs:.1}");
    println!("fill_puts_per_s={:.0}", keys as f64 / secs);
    println!("fill_failed={}", failures.load(Ordering::Relaxed));
    Ok(())
}

/// Pages through a listing; returns (keys + prefixes seen, per-page durations).
async fn list_all(
    s3: &Client,
    bucket: &str,
    prefix: Option<&str>,
    delimiter: Option<&str>,
    bar: &ProgressBar,
) -> anyhow::Result<(u64, Vec<Duration>)> {
    let mut token = None;
    let mut n = 0u64;
    let mut pages = Vec::new();
    loop {
        let started = Instant::now();
        let out = s3
            .list_objects_v2()
            .bucket(bucket)
            .set_prefix(prefix.map(str::to_string))
            .set_delimiter(delimiter.map(str::to_string))
            .max_keys(1000)
            .set_continuation_token(token.clone())
            .send()
            .await
            .context("list")?;
        pages.push(started.elapsed());
        let got = (out.contents().len() + out.common_prefixes().len()) as u64;
        n += got;
        bar.inc(got);
        if out.is_truncated() != Some(true) {
            return Ok((n, pages));
        }
        token = out.next_continuation_token().map(str::to_string);
    }
}

fn report_pages(name: &str, n: u64, elapsed: Duration, pages: &[Duration]) {
    println!("{name}_keys={n}");
    println!("{name}_pages={}", pages.len());
    println!("{name}_keys_per_s={:.0}", n as f64 / elapsed.as_secs_f64());
    let mean = |p: &[Duration]| {
        if p.is_empty() {
            0.0
        } else {
            p.iter().map(Duration::as_secs_f64).sum::<f64>() / p.len() as f64 * 1000.0
        }
    };
    let k = pages.len().min(10);
    println!("{name}_first_{k}_pages_mean_ms={:.2}", mean(&pages[..k]));
    println!(
        "{name}_last_{k}_pages_mean_ms={:.2}",
        mean(&pages[pages.len() - k..])
    );
    let mut sorted = pages.to_vec();
    sorted.sort();
    println!("{name}_page_p50_ms={:.2}", percentile(&sorted, 0.5));
    println!("{name}_page_p99_ms={:.2}", percentile(&sorted, 0.99));
}

async fn list(s3: Client, bucket: &str) -> anyhow::Result<()> {
    let bar = progress(0, "list flat");
    let started = Instant::now();
    let (n, pages) = list_all(&s3, bucket, None, None, &bar).await?;
    bar.finish_and_clear();
    report_pages("list_flat", n, started.elapsed(), &pages);

    // With a delimiter: the 100 prefixes at the top, then each prefix listed alone.
    let bar = progress(0, "list delimited");
    let started = Instant::now();
    let (n_top, mut pages) = list_all(&s3, bucket, None, Some("/"), &bar).await?;
    let mut n = 0;
    for d in 0..n_top {
        let prefix = format!("d{d:03}/");
        let (got, p) = list_all(&s3, bucket, Some(&prefix), Some("/"), &bar).await?;
        n += got;
        pages.extend(p);
    }
    bar.finish_and_clear();
    println!("list_delimited_prefixes={n_top}");
    report_pages("list_delimited", n, started.elapsed(), &pages);
    Ok(())
}

async fn small(
    s3: Client,
    bucket: &str,
    concurrency: usize,
    size: usize,
    seconds: u64,
) -> anyhow::Result<()> {
    ensure_bucket(&s3, bucket).await?;
    let body = pseudo_random_bytes(2, size);
    let next = Arc::new(AtomicU64::new(0));
    for phase in ["put", "get"] {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let written = next.load(Ordering::Relaxed).max(1);
        let tasks: Vec<_> = (0..concurrency)
            .map(|worker| {
                let (s3, body, next, bucket) =
                    (s3.clone(), body.clone(), next.clone(), bucket.to_string());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut errors = 0u64;
                    let mut i = worker as u64;
                    while Instant::now() < deadline {
                        let started = Instant::now();
                        let ok = if phase == "put" {
                            let k = next.fetch_add(1, Ordering::Relaxed);
                            s3.put_object()
                                .bucket(&bucket)
                                .key(format!("s{k:08}"))
                                .body(body.clone().into())
                                .send()
                                .await
                                .is_ok()
                        } else {
                            i = (i + 7919) % written;
                            match s3
                                .get_object()
                                .bucket(&bucket)
                                .key(format!("s{i:08}"))
                                .send()
                                .await
                            {
                                Ok(out) => out
                                    .body
                                    .collect()
                                    .await
                                    .is_ok_and(|b| b.into_bytes().len() == body.len()),
                                Err(_) => false,
                            }
                        };
                        if ok {
                            latencies.push(started.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                    (latencies, errors)
                })
            })
            .collect();
        let started = Instant::now();
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await?;
            all.extend(l);
            errors += e;
        }
        let secs = started.elapsed().as_secs_f64();
        all.sort();
        println!("{phase}_{size}B_ops_per_s={:.0}", all.len() as f64 / secs);
        println!("{phase}_{size}B_p50_ms={:.2}", percentile(&all, 0.5));
        println!("{phase}_{size}B_p99_ms={:.2}", percentile(&all, 0.99));
        println!("{phase}_{size}B_errors={errors}");
    }
    Ok(())
}

async fn get(
    s3: Client,
    bucket: &str,
    keys: u64,
    concurrency: usize,
    seconds: u64,
    label: &str,
) -> anyhow::Result<()> {
    let size = s3
        .head_object()
        .bucket(bucket)
        .key(key(0))
        .send()
        .await
        .context("head the first filled key")?
        .content_length()
        .unwrap_or(0) as usize;
    let expected = Arc::new(pseudo_random_bytes(1, size));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (s3, bucket, expected) = (s3.clone(), bucket.to_string(), expected.clone());
            tokio::spawn(async move {
                let (mut latencies, mut errors, mut wrong) = (Vec::new(), 0u64, 0u64);
                let mut i = worker as u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    i = (i + 7919) % keys;
                    match s3.get_object().bucket(&bucket).key(key(i)).send().await {
                        Ok(out) => match out.body.collect().await {
                            Ok(body) => {
                                if body.into_bytes()[..] == expected[..] {
                                    latencies.push(t.elapsed());
                                } else {
                                    wrong += 1;
                                }
                            }
                            Err(_) => errors += 1,
                        },
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors, wrong)
            })
        })
        .collect();
    let (mut all, mut errors, mut wrong) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, e, w) = t.await?;
        all.extend(l);
        errors += e;
        wrong += w;
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    println!("{label}_object_bytes={size}");
    println!("{label}_gets={}", all.len());
    println!("{label}_MBps={:.1}", (all.len() * size) as f64 / secs / 1e6);
    println!("{label}_p50_ms={:.2}", percentile(&all, 0.5));
    println!("{label}_p99_ms={:.2}", percentile(&all, 0.99));
    println!("{label}_max_ms={:.2}", percentile(&all, 1.0));
    println!("{label}_errors={errors}");
    println!("{label}_wrong_bytes={wrong}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let s3 = client(&cli)?;
    match cli.command {
        Cmd::Fill {
            ref bucket,
            keys,
            size,
            concurrency,
        } => fill(s3, bucket, keys, size, concurrency).await,
        Cmd::List { ref bucket } => list(s3, bucket).await,
        Cmd::Get {
            ref bucket,
            keys,
            concurrency,
            seconds,
            ref label,
        } => get(s3, bucket, keys, concurrency, seconds, label).await,
        Cmd::Small {
            ref bucket,
            concurrency,
            size,
            seconds,
        } => small(s3, bucket, concurrency, size, seconds).await,
    }
}
