//! The demo's last act: two replicas of the signing service sharing a PostgreSQL journal (a fresh database
//! on the services' cluster). Withdrawals are posted to both; the replica holding the key's lease is
//! killed with `kill -9`; the other takes the key over once the lease has run out, and every withdrawal is
//! confirmed exactly once, with contiguous nonces.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Api, Server, cli, json as run_json, text};
use crate::Result;
use crate::command::{display, workspace_root};
use crate::services::{ServiceEnv, http_request, postgres};

/// Seconds a replica's lease lasts: how soon the survivor takes the key.
const LEASE_SECONDS: u64 = 3;

/// Withdrawals posted, alternately to each replica.
const COUNT: usize = 6;

/// One replica: its name, port and process.
struct Replica {
    name: &'static str,
    port: u16,
    server: Server,
}

/// Two replicas on one PostgreSQL database; the lease holder killed; everything confirmed once.
pub(super) fn run(services: &ServiceEnv, binary: &Path, key_id: &str, summary: &mut Vec<String>) -> Result {
    let directory = workspace_root().join("target/demo/replicas");
    std::fs::create_dir_all(&directory)?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let database = format!("ethkms_demo_{}_{nanos}", std::process::id());
    let mut psql = Command::new(postgres::binaries()?.join("psql"));
    psql.args(["--quiet", "--no-psqlrc", "--dbname", &services.postgres_url, "--command"])
        .arg(format!("CREATE DATABASE {database}"));
    super::output(&mut psql)?;
    let (base, _) = services.postgres_url.rsplit_once('/').ok_or("the PostgreSQL URL has no database")?;
    let journal = format!("{base}/{database}");
    let token = format!("demo-replicas-{nanos}");

    let mut replicas = Vec::new();
    for name in ["demo-a", "demo-b"] {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let files = directory.join(name);
        std::fs::create_dir_all(&files)?;
        let text = super::configuration(port, &services.rpc_url, key_id, &token, &files, None)
            .replace(&format!("\"{}\"", files.join("journal.sqlite").display()), &format!("\"{journal}\""))
            + &format!("\n[replica]\nname = \"{name}\"\nlease_seconds = {LEASE_SECONDS}\n");
        let config = files.join("ethkms-server.toml");
        std::fs::write(&config, text)?;
        let log = files.join("serve.log");
        let mut serve = cli(binary, services);
        serve.args(["serve", "--config"]).arg(&config).stdout(Stdio::null()).stderr(std::fs::File::create(&log)?);
        eprintln!("$ {} 2> {}", display(&serve), log.display());
        let mut server =
            Server(Some(serve.spawn().map_err(|error| format!("could not start `ethkms serve`: {error}"))?));
        server.wait_ready(port, &log)?;
        replicas.push(Replica { name, port, server });
    }
    let holder = wait_for_holder(&replicas, Duration::from_secs(30))?;
    summary.push(format!(
        "started two replicas, {} and {}, on one PostgreSQL journal ({journal}); {} holds key `hot`'s lease \
         ({LEASE_SECONDS} s)",
        replicas[0].name, replicas[1].name, replicas[holder].name
    ));

    let mut ids = Vec::new();
    for index in 0..COUNT {
        let replica = &replicas[index % 2];
        let api = Api { port: replica.port, token: token.clone() };
        let to = format!("0x{:040x}", 0x5000 + index);
        let body = json!({ "idempotency_key": format!("replicas-{index}"), "key": "hot", "to": to, "asset": "ETH", "amount": "0.001ether" });
        let (status, answer) = api.call("POST", "/v1/withdrawals", Some(&body))?;
        if status != 202 {
            return Err(format!("{} answered {status}: {answer}", replica.name).into());
        }
        ids.push(text(&answer["id"])?);
    }
    let killed = replicas[holder].name;
    let child = replicas[holder].server.0.take().ok_or("the holder is not running")?;
    eprintln!("$ kill -9 {} # {killed}, the lease holder", child.id());
    Command::new("kill").args(["-KILL", &child.id().to_string()]).status()?;
    let killed_at = Instant::now();
    let survivor = 1 - holder;
    wait_for_holder(&replicas[survivor..=survivor], Duration::from_secs(LEASE_SECONDS * 10))?;
    let took_over = killed_at.elapsed();

    let api = Api { port: replicas[survivor].port, token };
    let mut nonces = BTreeSet::new();
    for id in &ids {
        let started = Instant::now();
        let answer = loop {
            let (status, answer) = api.call("GET", &format!("/v1/withdrawals/{id}"), None)?;
            if status == 200 && answer["final"] == true {
                break answer;
            }
            if started.elapsed() > Duration::from_secs(90) {
                return Err(format!("withdrawal {id} is still {} after 90 s", answer["status"]).into());
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if answer["status"] != "confirmed" {
            return Err(format!("withdrawal {id} ended {}: {answer}", answer["status"]).into());
        }
        if !nonces.insert(answer["nonce"].as_u64().ok_or("no nonce")?) {
            return Err(format!("nonce {} used twice", answer["nonce"]).into());
        }
    }
    let (first, last) = (nonces.first().copied().unwrap_or(0), nonces.last().copied().unwrap_or(0));
    if last - first + 1 != nonces.len() as u64 {
        return Err(format!("the withdrawals' nonces are not contiguous: {nonces:?}").into());
    }
    summary.push(format!(
        "posted {COUNT} withdrawals, alternately to each replica; killed {killed} (kill -9): {} took key `hot` over \
         {:.1} s later\nall {COUNT} confirmed exactly once, nonces {first}…{last}, whichever replica they were posted to",
        replicas[survivor].name,
        took_over.as_secs_f64()
    ));
    let survivor = replicas.swap_remove(survivor);
    survivor.server.stop()?;
    for replica in ["demo-a", "demo-b"] {
        let audit = directory.join(replica).join("audit.jsonl");
        let verified = run_json(&mut cli(binary, services), &["audit", "verify", &audit.display().to_string()])?;
        if verified["valid"] != true {
            return Err(format!("{replica}'s audit log does not verify: {verified}").into());
        }
    }
    summary.push("each replica's audit log verifies on its own (one hash chain per replica)".into());
    Ok(())
}

/// The index (in `replicas`) of the replica that reports holding key `hot`'s lease, waiting up to `within`.
fn wait_for_holder(replicas: &[Replica], within: Duration) -> Result<usize> {
    let started = Instant::now();
    loop {
        for (index, replica) in replicas.iter().enumerate() {
            let held = http_request(replica.port, "GET", "/metrics", None).is_ok_and(|response| {
                response.body.lines().any(|line| line.trim() == "ethkms_lease_held{key=\"hot\"} 1")
            });
            if held {
                return Ok(index);
            }
        }
        if started.elapsed() > within {
            return Err(format!("no replica took key `hot`'s lease within {within:?}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
