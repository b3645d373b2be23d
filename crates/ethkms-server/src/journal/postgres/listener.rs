//! Wake-ups between replicas: a connection of its own that `LISTEN`s on [`CHANNEL`] and passes every key
//! notified (by any replica's insert, RPC transaction or cancellation request) to the journal's
//! [`wake_ups`](crate::journal::JournalStore::wake_ups) receivers.
//!
//! tokio-postgres delivers notifications through the `Connection` future, so this task drives the
//! connection itself with `poll_message`. When the connection ends (PostgreSQL restarted, the backend was
//! terminated, the network failed), it reconnects with a back-off, listens again, and then wakes every key
//! that has work waiting, since notifications sent meanwhile were lost.

use std::time::{Duration, Instant};

use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Config, Socket};

use super::{Failure, describe};

/// The notification channel (`NOTIFY ethkms_work, '<key>'`).
pub(super) const CHANNEL: &str = "ethkms_work";

/// The listener connection's `application_name`, by which `pg_stat_activity` shows it.
pub(crate) const APPLICATION_NAME: &str = "ethkms-listener";

/// The first wait before reconnecting, doubled at every failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Keys with work waiting for their owner: what a reconnected listener wakes, as it may have missed them.
const WAITING: &str = "SELECT DISTINCT key FROM withdrawals \
    WHERE NOT confirmed AND (status = 'accepted' OR (cancel_requested AND status NOT IN ('confirmed', 'failed')))";

/// Starts the listener; answers once it listens (or with why it could not, the first time).
pub(super) async fn start<T>(
    config: Config,
    tls: T,
    sender: broadcast::Sender<String>,
    shown: String,
) -> Result<JoinHandle<()>, Failure>
where
    T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
    T::Stream: Sync + Send,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (ready, listening) = oneshot::channel();
    let task = tokio::spawn(run(config, tls, sender, shown, ready));
    match listening.await {
        Ok(Ok(())) => Ok(task),
        Ok(Err(error)) => Err(Failure::Postgres(error)),
        Err(_) => Err(Failure::Invalid("the listener stopped before it listened".into())),
    }
}

async fn run<T>(
    config: Config,
    tls: T,
    sender: broadcast::Sender<String>,
    shown: String,
    ready: oneshot::Sender<Result<(), tokio_postgres::Error>>,
) where
    T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
    T::Stream: Sync + Send,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let mut ready = Some(ready);
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = Instant::now();
        let outcome = listen(&config, tls.clone(), &sender, &mut ready).await;
        if let Some(ready) = ready.take() {
            // Never listened: the journal's connect reports it.
            let _ = ready.send(outcome);
            return;
        }
        match outcome {
            Ok(()) => tracing::warn!(journal = %shown, "the PostgreSQL listener's connection closed; reconnecting"),
            Err(error) => {
                tracing::warn!(journal = %shown, error = %describe(&error), "the PostgreSQL listener failed; reconnecting");
            }
        }
        if started.elapsed() > MAX_BACKOFF * 2 {
            backoff = MIN_BACKOFF;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: connects, listens (then answers `ready`, the first time, or wakes the waiting
/// keys), forwards notifications until the connection ends.
async fn listen<T>(
    config: &Config,
    tls: T,
    sender: &broadcast::Sender<String>,
    ready: &mut Option<oneshot::Sender<Result<(), tokio_postgres::Error>>>,
) -> Result<(), tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
    T::Stream: Sync + Send,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, mut connection) = config.connect(tls).await?;
    let forward = sender.clone();
    let mut driver = Driver(tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|context| connection.poll_message(context)).await {
                Some(Ok(AsyncMessage::Notification(notification))) if notification.channel() == CHANNEL => {
                    // No receiver yet (or none left) is not an error.
                    let _ = forward.send(notification.payload().to_owned());
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            }
        }
    }));
    let setup = async {
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        if ready.is_none() {
            for row in client.query(WAITING, &[]).await? {
                let _ = sender.send(row.try_get(0)?);
            }
        }
        Ok::<_, tokio_postgres::Error>(())
    };
    setup.await?;
    if let Some(ready) = ready.take() {
        let _ = ready.send(Ok(()));
    } else {
        tracing::info!("the PostgreSQL listener listens again");
    }
    let outcome = (&mut driver.0).await;
    drop(client);
    outcome.unwrap_or(Ok(()))
}

/// The task driving a listener's connection, stopped when the listener is (dropping a task's handle does
/// not stop it).
struct Driver(JoinHandle<Result<(), tokio_postgres::Error>>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}
