//! The servers of a setup: `ethkms-server` processes (`ETHKMS_BENCH_SERVER`) on a journal of their own (a
//! SQLite file, or a fresh PostgreSQL database), started and waited for until every key is held — and,
//! with several replicas, shared out among them — before any round is timed.

use std::time::{Duration, Instant};

use alloy_primitives::Address;
use sha2::Digest as _;

use super::{Journal, Setup, TOKEN};

/// The servers of one setup: their processes and URLs.
pub(super) struct Servers {
    pub(super) children: Vec<std::process::Child>,
    pub(super) urls: Vec<String>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `setup.replicas` servers on `keys` (named `hot0`, `hot1`, …) and waits until each key is held.
pub(super) async fn start(
    setup: Setup,
    concurrency: usize,
    rpc_url: &str,
    keys: &[(String, Address)],
    http: &reqwest::Client,
) -> Result<Servers, Box<dyn std::error::Error>> {
    let server = std::env::var("ETHKMS_BENCH_SERVER")
        .map_err(|_| "ETHKMS_BENCH_SERVER is not set: the ethkms-server binary (`cargo xtask bench withdrawals`)")?;
    let kms_endpoint = std::env::var("ETHKMS_TEST_KMS_ENDPOINT")?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let directory = std::env::temp_dir().join(format!("ethkms-bench-withdrawals-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&directory)?;
    let journal = match setup.journal {
        Journal::Sqlite => directory.join("journal.sqlite").display().to_string(),
        Journal::Postgres => create_database(&format!("ethkms_bench_{}_{nanos}", std::process::id()))?,
    };
    let token_sha256: String =
        sha2::Sha256::digest(TOKEN.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect();
    let names: Vec<String> = (0..keys.len()).map(|index| format!("hot{index}")).collect();
    let mut servers = Servers { children: Vec::new(), urls: Vec::new() };
    for replica in 0..setup.replicas {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut text = format!(
            r#"listen = "127.0.0.1:{port}"
upstream = "{rpc_url}"
audit_log = "{audit}"
journal = "{journal}"
# anvil mines at once: a transaction unmined after 2 s is stuck (anvil can leave the next nonce in
# its queue while later ones pile up behind it), and re-signing it with higher fees releases them.
withdrawals = {{ poll_interval_ms = 200, rebroadcast_after_seconds = 2, signing_concurrency = {concurrency} }}
replica = {{ name = "r{replica}", lease_seconds = 10 }}

[clients.bench]
token_sha256 = "{token_sha256}"
keys = {names:?}
methods = ["withdrawals"]
"#,
            audit = directory.join(format!("audit-r{replica}.jsonl")).display(),
        );
        for ((key_id, _), name) in keys.iter().zip(&names) {
            // anvil does not reorganise: final once mined.
            text.push_str(&format!("\n[keys.{name}]\nkey = \"{key_id}\"\nchain_id = 31337\nconfirmations = 1\n"));
        }
        let config = directory.join(format!("server-r{replica}.toml"));
        std::fs::write(&config, text)?;
        let child = std::process::Command::new(&server)
            .arg("--config")
            .arg(&config)
            .env("AWS_ENDPOINT_URL", &kms_endpoint)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(directory.join(format!("server-r{replica}.log")))?)
            .spawn()
            .map_err(|error| format!("{server}: {error}"))?;
        servers.children.push(child);
        servers.urls.push(format!("http://127.0.0.1:{port}"));
    }
    let started = Instant::now();
    for url in &servers.urls {
        while !http.get(format!("{url}/readyz")).send().await.is_ok_and(|response| response.status().is_success()) {
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!("{server} did not become ready at {url} (logs in {})", directory.display()).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Every key held by some replica (its lease taken and its rows recovered) before the clock starts.
    for name in &names {
        let line = format!("ethkms_lease_held{{key=\"{name}\"}} 1");
        loop {
            let mut held = false;
            for url in &servers.urls {
                let text = match http.get(format!("{url}/metrics")).send().await {
                    Ok(response) => response.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                held |= text.lines().any(|candidate| candidate == line);
            }
            if held {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!("no replica took key {name} within 60 s").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if setup.replicas > 1 {
        wait_shared_out(http, &servers.urls, &names, started).await?;
    }
    Ok(servers)
}

/// Waits until the replicas' counts of held keys are at most one apart (each key held once): the keys
/// are handed over one at a time after the first replica took them all.
async fn wait_shared_out(
    http: &reqwest::Client,
    urls: &[String],
    names: &[String],
    started: Instant,
) -> Result<(), Box<dyn std::error::Error>> {
    loop {
        let mut counts = Vec::new();
        for url in urls {
            let text = match http.get(format!("{url}/metrics")).send().await {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            let held =
                |name: &String| text.lines().any(|line| line == format!("ethkms_lease_held{{key=\"{name}\"}} 1"));
            counts.push(names.iter().filter(|name| held(name)).count());
        }
        let (fewest, most) = (counts.iter().min().copied(), counts.iter().max().copied());
        if counts.iter().sum::<usize>() == names.len()
            && most.zip(fewest).is_some_and(|(most, fewest)| most - fewest <= 1)
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!("the keys were not shared out among the replicas within 120 s: {counts:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A fresh PostgreSQL database on the server of `ETHKMS_TEST_POSTGRES_URL` (through `psql`): its URL.
fn create_database(name: &str) -> Result<String, Box<dyn std::error::Error>> {
    let url = std::env::var("ETHKMS_TEST_POSTGRES_URL")
        .map_err(|_| "ETHKMS_TEST_POSTGRES_URL is not set: start PostgreSQL with `cargo xtask services up`")?;
    let binaries = std::env::var("ETHKMS_TEST_POSTGRES_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let output = std::process::Command::new(format!("{binaries}/psql"))
        .args(["--quiet", "--no-psqlrc", "--dbname", &url, "--command", &format!("CREATE DATABASE {name}")])
        .output()
        .map_err(|error| format!("{binaries}/psql: {error}"))?;
    if !output.status.success() {
        return Err(format!("CREATE DATABASE {name}: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    let (server, _) = url.rsplit_once('/').ok_or("ETHKMS_TEST_POSTGRES_URL names no database")?;
    Ok(format!("{server}/{name}"))
}
