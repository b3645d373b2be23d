//! Webhooks against a real HTTP receiver (a small HTTP/1.1 server in this test that can fail, be down and
//! never answer), LocalStack's KMS and anvil: every event arrives, signed, in order per withdrawal and
//! de-duplicable by its id, after failures and an outage; after `kill -9` between the changes and their
//! delivery, the events are delivered after the restart; a receiver that never answers does not slow
//! withdrawals down, nor hold up another client's webhooks.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use ethkms_server::journal::{DeliveryState, SqliteJournal, WebhookStore as _};
use ethkms_server::webhooks::signature::{DEFAULT_TOLERANCE, WebhookSecret, verify};
use ethkms_test_support::{service_from_env, unique};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

const SECRET: &str = "whsec_test_receiver";
/// In the receiver's URL: it must never show in an error or a log line.
const URL_SECRET: &str = "pathsecret123";

/// A request the receiver accepted.
#[derive(Clone, Debug)]
struct Received {
    event_id: String,
    body: Value,
}

#[derive(Default)]
struct Behaviour {
    /// Answer 503 to this many requests first.
    failures_left: AtomicUsize,
    /// Never answer.
    hang: AtomicBool,
    /// Requests received (answered or not).
    requests: AtomicUsize,
    accepted: Mutex<Vec<Received>>,
    /// Requests whose signature did not verify, with why.
    invalid: Mutex<Vec<String>>,
}

/// An HTTP/1.1 receiver on a fixed port: every answer closes the connection, so that "down" (the listener
/// and its connections gone) is down for the sender too.
struct Receiver {
    port: u16,
    behaviour: Arc<Behaviour>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    fn new(port: u16) -> Self {
        Self { port, behaviour: Arc::new(Behaviour::default()), server: None }
    }

    fn url(&self) -> String {
        format!("http://user:{URL_SECRET}@127.0.0.1:{}/hooks/{URL_SECRET}?token={URL_SECRET}", self.port)
    }

    async fn up(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let behaviour = Arc::clone(&self.behaviour);
        self.server = Some(tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                connections.spawn(serve(stream, Arc::clone(&behaviour)));
            }
        }));
    }

    /// Down: the listener and every connection closed (aborting the task drops its `JoinSet`).
    fn down(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    fn accepted(&self) -> Vec<Received> {
        self.behaviour.accepted.lock().unwrap().clone()
    }
}

async fn serve(stream: tokio::net::TcpStream, behaviour: Arc<Behaviour>) {
    let mut reader = BufReader::new(stream);
    let mut headers = BTreeMap::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length: usize = headers.get("content-length").and_then(|length| length.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).await.is_err() {
        return;
    }
    behaviour.requests.fetch_add(1, Ordering::SeqCst);
    if behaviour.hang.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let status =
        if behaviour.failures_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1)).is_ok()
        {
            "503 Service Unavailable"
        } else {
            let signature = headers.get("ethkms-signature").cloned().unwrap_or_default();
            let event_id = headers.get("ethkms-event-id").cloned().unwrap_or_default();
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
            let secret = WebhookSecret::new(SECRET).unwrap();
            let parsed: Option<Value> = serde_json::from_slice(&body).ok();
            match (verify(&secret, &signature, &body, now, DEFAULT_TOLERANCE), parsed) {
                (Ok(_), Some(body))
                    if body["id"] == event_id.as_str()
                        && headers.get("content-type").map(String::as_str) == Some("application/json") =>
                {
                    behaviour.accepted.lock().unwrap().push(Received { event_id, body });
                    "200 OK"
                }
                (verified, _) => {
                    behaviour.invalid.lock().unwrap().push(format!("{verified:?} {headers:?}"));
                    "400 Bad Request"
                }
            }
        };
    let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = reader.get_mut().write_all(answer.as_bytes()).await;
}

/// The configuration of [`configuration_with_journal`] with a webhook for `exchange` (its secret in a file).
fn with_webhook(text: &str, url: &str, paths: &Paths, timeout_ms: u64) -> String {
    let secret_file = paths.journal.with_extension("webhook-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let webhook = format!("webhook = {{ url = \"{url}\", secret_file = \"{}\" }}\n", secret_file.display());
    let settings = format!(
        "webhooks = {{ timeout_ms = {timeout_ms}, min_backoff_ms = 100, max_backoff_ms = 1000, poll_interval_ms = 50 }}\n"
    );
    let text = text.replacen("methods = [\"withdrawals\"]\n", &format!("methods = [\"withdrawals\"]\n{webhook}"), 1);
    assert!(text.contains(&webhook));
    format!("{settings}{text}")
}

async fn deliveries(api: &Api, token: &str, query: &str) -> (u16, Value) {
    let url = format!("{}/v1/webhooks/deliveries{query}", api.url);
    let response = api.http.get(url).bearer_auth(token).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Waits until none of `exchange`'s events is pending or failing.
async fn all_delivered(api: &Api, within: Duration) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let (status, pending) = deliveries(api, TOKEN, "?status=pending").await;
        let (_, failing) = deliveries(api, TOKEN, "?status=failing").await;
        assert_eq!(status, 200, "{pending}");
        if pending["deliveries"].as_array().unwrap().is_empty() && failing["deliveries"].as_array().unwrap().is_empty()
        {
            let (_, delivered) = deliveries(api, TOKEN, "?status=delivered&limit=1000").await;
            return delivered["deliveries"].as_array().unwrap().clone();
        }
        assert!(started.elapsed() < within, "not all delivered in {within:?}: {pending} {failing}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every withdrawal of `ids` had all its events received, once each at least, in order (by their
/// first receipt, de-duplicated by event id), from `accepted` to `confirmed`, each body its event.
fn assert_in_order_per_withdrawal(received: &[Received], ids: &[String]) -> usize {
    let mut seen = HashSet::new();
    let mut by_withdrawal: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for event in received {
        if seen.insert(event.event_id.clone()) {
            let subject = event.body["subject"].as_str().unwrap().to_owned();
            let sequence = event.body["sequence"].as_u64().unwrap();
            by_withdrawal.entry(subject).or_default().push((sequence, event.body["type"].as_str().unwrap().to_owned()));
            assert_eq!(event.body["data"]["id"], event.body["subject"]);
            let status = event.body["data"]["status"].as_str().unwrap();
            assert_eq!(event.body["type"], format!("withdrawal.{status}"), "{}", event.body);
        }
    }
    for id in ids {
        let events = by_withdrawal.get(id).unwrap_or_else(|| panic!("no event of {id}"));
        let sequences: Vec<u64> = events.iter().map(|(sequence, _)| *sequence).collect();
        assert_eq!(
            sequences,
            (1..=events.len() as u64).collect::<Vec<_>>(),
            "{id}: in order, none missing: {events:?}"
        );
        assert_eq!(events.first().unwrap().1, "withdrawal.accepted", "{events:?}");
        assert_eq!(events.last().unwrap().1, "withdrawal.confirmed", "{events:?}");
        assert!(events.iter().any(|(_, kind)| kind == "withdrawal.submitted"), "{events:?}");
    }
    seen.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_in_order_after_failures_and_an_outage() {
    let Some((_, backend)) = localstack().await else { return };
    let rpc_url = service_from_env("ETHKMS_TEST_RPC_URL", "anvil").unwrap();
    let (key, _) = funded_key(&backend, &rpc_url).await;
    let mut receiver = Receiver::new(free_port());
    receiver.behaviour.failures_left.store(3, Ordering::SeqCst);
    receiver.up().await;
    let paths = Paths::new();
    let text = with_webhook(&configuration("127.0.0.1:0", &rpc_url, &key, &paths), &receiver.url(), &paths, 2000);
    let api = serve_in_process(&text, backend).await;
    let run = unique("webhooks");

    let mut ids = Vec::new();
    for index in 0..3 {
        let (status, body) =
            api.post(&withdrawal(&format!("{run}-{index}"), recipient(&run, index), "ETH", "1000")).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    // Down for a while, with withdrawals changing meanwhile: their events fail and are retried.
    receiver.down();
    for index in 3..6 {
        let (status, body) =
            api.post(&withdrawal(&format!("{run}-{index}"), recipient(&run, index), "ETH", "1000")).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let started = Instant::now();
    let failing = loop {
        let (_, failing) = deliveries(&api, TOKEN, "?status=failing").await;
        if let Some(first) = failing["deliveries"].as_array().unwrap().first() {
            break first.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no delivery failed while the receiver was down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let last_error = failing["last_error"].as_str().unwrap();
    assert!(!last_error.is_empty() && !last_error.contains(URL_SECRET), "{failing}");
    assert!(failing["attempts"].as_u64().unwrap() >= 1 && failing["next_attempt_ms"].as_u64().is_some(), "{failing}");
    for id in &ids {
        assert_eq!(api.settled(id, Duration::from_secs(60)).await["status"], "confirmed");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    receiver.up().await;

    let delivered = all_delivered(&api, Duration::from_secs(60)).await;
    let received = receiver.accepted();
    assert!(receiver.behaviour.invalid.lock().unwrap().is_empty(), "{:?}", receiver.behaviour.invalid);
    let unique_events = assert_in_order_per_withdrawal(&received, &ids);
    assert_eq!(delivered.len(), unique_events, "every event delivered was received");
    assert!(delivered.iter().all(|event| event["status"] == "delivered" && event["next_attempt_ms"].is_null()));
    assert!(delivered.iter().any(|event| event["attempts"].as_u64().unwrap() > 1), "some were retried");
    assert!(receiver.behaviour.requests.load(Ordering::SeqCst) > unique_events, "the first ones failed");
    // The last event of each withdrawal carries what the REST API shows of it.
    for id in &ids {
        let last = received.iter().rev().find(|event| event.body["subject"] == id.as_str()).unwrap();
        assert_eq!(last.body["data"], api.get(id).await, "the event's data is the REST representation");
    }
    let metrics = api.metrics().await;
    assert!(metrics.contains("ethkms_webhook_deliveries_total{outcome=\"failed\"}"), "{metrics}");
    assert!(!metrics.contains(URL_SECRET));
    // Another client's view: it has no webhook.
    let (status, body) = deliveries(&api, "reader-token", "").await;
    assert_eq!((status, body["error"]["kind"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = deliveries(&api, TOKEN, "?status=lost").await;
    assert_eq!(status, 400, "{body}");
    receiver.down();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_between_the_changes_and_their_delivery_the_events_are_delivered() {
    let Some((kms_endpoint, backend)) = localstack().await else { return };
    let rpc_url = service_from_env("ETHKMS_TEST_RPC_URL", "anvil").unwrap();
    let (key, _) = funded_key(&backend, &rpc_url).await;
    // The receiver is not there yet: nothing can be delivered before the kill.
    let mut receiver = Receiver::new(free_port());
    let paths = Paths::new();
    let listen = format!("127.0.0.1:{}", free_port());
    let config_path = paths.journal.with_extension("toml");
    let text = with_webhook(&configuration(&listen, &rpc_url, &key, &paths), &receiver.url(), &paths, 2000);
    std::fs::write(&config_path, text).unwrap();
    let url = format!("http://{listen}");
    let api = Api { url: url.clone(), http: reqwest::Client::new() };
    let mut server = Server::start(&config_path, &kms_endpoint, &url).await;
    let run = unique("webhooks-kill");
    let mut ids = Vec::new();
    for index in 0..2 {
        let (status, body) =
            api.post(&withdrawal(&format!("{run}-{index}"), recipient(&run, index), "ETH", "1000")).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        assert_eq!(api.settled(id, Duration::from_secs(60)).await["status"], "confirmed");
    }
    server.kill_9();

    // Every change is in the outbox, none delivered.
    let journal = SqliteJournal::open(&paths.journal).unwrap();
    let events = journal.webhook_events("exchange", None, 1000).await.unwrap();
    ethkms_server::journal::JournalStore::close(&journal);
    assert!(events.len() >= 2 * 5, "accepted, signing, signed, submitted, mined/confirmed each: {events:?}");
    assert!(events.iter().all(|event| event.state != DeliveryState::Delivered), "{events:?}");

    receiver.up().await;
    let _server = Server::start(&config_path, &kms_endpoint, &url).await;
    let delivered = all_delivered(&api, Duration::from_secs(60)).await;
    assert_eq!(delivered.len(), events.len(), "each event of the outbox, delivered");
    let received = receiver.accepted();
    assert_eq!(assert_in_order_per_withdrawal(&received, &ids), events.len());
    let ids_stored: HashSet<&str> = events.iter().map(|event| event.id.as_str()).collect();
    assert!(
        received.iter().all(|event| ids_stored.contains(event.event_id.as_str())),
        "the ids stored before the kill"
    );
    assert!(receiver.behaviour.invalid.lock().unwrap().is_empty());
    receiver.down();
}

/// Posts `count` withdrawals and waits for all to be confirmed: the longest answer to a post and the time
/// until the last was confirmed.
async fn withdrawals_timed(api: &Api, run: &str, count: u64) -> (Duration, Duration) {
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut ids = Vec::new();
    for index in 0..count {
        let posted = Instant::now();
        let (status, body) =
            api.post(&withdrawal(&format!("{run}-{index}"), recipient(run, index), "ETH", "1000")).await;
        slowest = slowest.max(posted.elapsed());
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        assert_eq!(api.settled(id, Duration::from_secs(90)).await["status"], "confirmed");
    }
    (slowest, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_does_not_slow_withdrawals() {
    let Some((_, backend)) = localstack().await else { return };
    let rpc_url = service_from_env("ETHKMS_TEST_RPC_URL", "anvil").unwrap();
    // Without a webhook first: the baseline on this machine, now.
    let (key, _) = funded_key(&backend, &rpc_url).await;
    let paths = Paths::new();
    let plain = serve_in_process(&configuration("127.0.0.1:0", &rpc_url, &key, &paths), Arc::clone(&backend)).await;
    let (baseline_post, baseline) = withdrawals_timed(&plain, &unique("baseline"), 10).await;

    let (key, _) = funded_key(&backend, &rpc_url).await;
    let mut receiver = Receiver::new(free_port());
    receiver.behaviour.hang.store(true, Ordering::SeqCst);
    receiver.up().await;
    let paths = Paths::new();
    // Each attempt waits a minute for an answer that never comes.
    let text = with_webhook(&configuration("127.0.0.1:0", &rpc_url, &key, &paths), &receiver.url(), &paths, 60_000);
    let api = serve_in_process(&text, backend).await;
    let (slowest_post, elapsed) = withdrawals_timed(&api, &unique("hanging"), 10).await;
    eprintln!(
        "baseline: {baseline:?} (slowest post {baseline_post:?}); hanging receiver: {elapsed:?} (slowest post {slowest_post:?})"
    );
    assert!(receiver.behaviour.requests.load(Ordering::SeqCst) >= 1, "the deliverer is waiting on the receiver");
    let (_, pending) = deliveries(&api, TOKEN, "?status=pending").await;
    assert!(!pending["deliveries"].as_array().unwrap().is_empty(), "nothing was delivered: {pending}");
    // Generous bounds (a shared machine): the same work, not slower by more than 3× and 10 s, and no post
    // waiting on the receiver.
    assert!(elapsed < baseline * 3 + Duration::from_secs(10), "{elapsed:?} against {baseline:?}");
    assert!(slowest_post < Duration::from_secs(5), "{slowest_post:?}");
    receiver.down();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_receiver_hangs_never_holds_up_another_clients_webhooks() {
    let Some((_, backend)) = localstack().await else { return };
    let rpc_url = service_from_env("ETHKMS_TEST_RPC_URL", "anvil").unwrap();
    let (key, _) = funded_key(&backend, &rpc_url).await;
    let mut hanging = Receiver::new(free_port());
    hanging.behaviour.hang.store(true, Ordering::SeqCst);
    hanging.up().await;
    let mut healthy = Receiver::new(free_port());
    healthy.up().await;
    let paths = Paths::new();
    // Two attempts in flight at most, each waiting a minute for the hanging receiver: without a share per
    // client, the exchange's older events would hold both.
    let text = with_webhook(&configuration("127.0.0.1:0", &rpc_url, &key, &paths), &hanging.url(), &paths, 60_000)
        .replacen("poll_interval_ms = 50 }", "poll_interval_ms = 50, concurrency = 2 }", 1);
    let secret_file = paths.journal.with_extension("webhook-secret");
    let treasury = config_client("treasury", "treasury-token", &["withdrawals"]).replacen(
        "methods = [\"withdrawals\"]\n",
        &format!(
            "methods = [\"withdrawals\"]\nwebhook = {{ url = \"{}\", secret_file = \"{}\" }}\n",
            healthy.url(),
            secret_file.display()
        ),
        1,
    );
    let api = serve_in_process(&format!("{text}{treasury}"), backend).await;
    let run = unique("fair");
    for index in 0..4 {
        let (status, body) =
            api.post(&withdrawal(&format!("{run}-x{index}"), recipient(&run, index), "ETH", "1000")).await;
        assert_eq!(status, 202, "{body}");
    }
    let started = Instant::now();
    while hanging.behaviour.requests.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the exchange's events were never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids = Vec::new();
    for index in 0..2 {
        let body = withdrawal(&format!("{run}-t{index}"), recipient(&run, 10 + index), "ETH", "1000");
        let response = api
            .http
            .post(format!("{}/v1/withdrawals", api.url))
            .bearer_auth("treasury-token")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        ids.push(response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    // The treasury's events arrive while every attempt to the exchange's receiver still hangs.
    let started = Instant::now();
    loop {
        let subjects: HashSet<String> = healthy
            .accepted()
            .iter()
            .filter_map(|received| received.body["subject"].as_str().map(str::to_owned))
            .collect();
        if ids.iter().all(|id| subjects.contains(id)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the treasury's events wait behind the exchange's hanging receiver: {} received",
            healthy.accepted().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healthy.behaviour.invalid.lock().unwrap().is_empty(), "every request signed");
    assert!(hanging.accepted().is_empty(), "the exchange's receiver never answered");
    assert!(
        hanging.behaviour.requests.load(Ordering::SeqCst) <= 1,
        "the exchange had at most its share (one of two) in flight"
    );
    hanging.down();
    healthy.down();
}
