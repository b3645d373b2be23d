//! Requests made together, as the SQLite journal's thread commits what is queued at once: requests of one
//! kind take turns, and the request whose turn it is takes every request waiting by then and makes them
//! all in one statement — one round trip and one commit for many when they come together, at once for a
//! lone one. The statements are written for several rows (`= ANY`, `unnest`) and answer each.

use std::sync::{Arc, Mutex, PoisonError};

use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use crate::journal::JournalError;

/// The most requests one statement makes.
const MOST: usize = 256;

/// Requests of one kind (for one key, when they are fenced).
pub(super) struct Batches<T, R> {
    /// Requests not yet taken, oldest first.
    waiting: Mutex<Vec<Waiting<T, R>>>,
    /// Held while a batch is made.
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl<T, R> Default for Batches<T, R> {
    fn default() -> Self {
        Self { waiting: Mutex::default(), turn: Arc::default() }
    }
}

/// A request and where its answer goes.
pub(super) struct Waiting<T, R> {
    pub(super) request: T,
    pub(super) answer: oneshot::Sender<Result<R, JournalError>>,
}

impl<T, R> Waiting<T, R> {
    pub(super) fn answer(self, result: Result<R, JournalError>) {
        // The asker may be gone (a client that went away): nothing to tell.
        let _ = self.answer.send(result);
    }
}

impl<T: Send + 'static, R: Send + 'static> Batches<T, R> {
    /// Makes `request` with those waiting in its turn: `make` takes them (oldest first, at most [`MOST`])
    /// and answers each.
    pub(super) async fn make(
        &self,
        request: T,
        make: impl FnOnce(Vec<Waiting<T, R>>) -> BoxFuture<'static, ()> + Send + 'static,
    ) -> Result<R, JournalError> {
        let (answer, mut answered) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).push(Waiting { request, answer });
        let turn = Arc::clone(&self.turn).lock_owned().await;
        if let Ok(result) = answered.try_recv() {
            return result; // made in a turn before
        }
        let mut batch = {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            let taken = waiting.len().min(MOST);
            let rest = waiting.split_off(taken);
            std::mem::replace(&mut *waiting, rest)
        };
        // Not for askers gone meanwhile (a client that went away): as if they had never asked.
        batch.retain(|waiting| !waiting.answer.is_closed());
        if batch.is_empty() {
            return answered.await.unwrap_or_else(|_| Err(JournalError::Postgres("the request was dropped".into())));
        }
        // In a task of its own, holding the turn: the other requests of the batch do not depend on this
        // asker staying. (Those left for later are each waiting for a turn of their own.)
        let _ = tokio::spawn(async move {
            make(batch).await;
            drop(turn);
        })
        .await;
        answered.await.unwrap_or_else(|_| Err(JournalError::Postgres("the request's task stopped".into())))
    }
}

/// The same error, for every request of a batch.
pub(super) fn copy(error: &JournalError) -> JournalError {
    match error {
        JournalError::Fenced { key, epoch } => JournalError::Fenced { key: key.clone(), epoch: *epoch },
        JournalError::Refused(reason) => JournalError::Refused(reason.clone()),
        JournalError::Closed => JournalError::Closed,
        JournalError::Postgres(message) => JournalError::Postgres(message.clone()),
        error => JournalError::Postgres(error.to_string()),
    }
}
