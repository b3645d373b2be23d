//! Nonces left as holes below the key's rows: a transaction sent from the key elsewhere was seen pending
//! (so the allocator skipped its nonce) and vanished. Freed once that has lasted `rebroadcast_after` with
//! nothing processing and nothing pending at the node, so that the gap is filled and later rows are mined.

use std::sync::PoisonError;
use std::time::Instant;

use super::Engine;
use crate::journal::Fence;
use crate::shared::{Key, redact_urls};

impl Engine {
    /// Nonces from the key's mined count up to the lowest one a followed row holds, held by nothing of ours:
    /// a transaction sent from the key elsewhere was seen pending there (so the allocator skipped them) and
    /// has vanished since. Once that has lasted `rebroadcast_after` with nothing processing and the node has
    /// nothing pending there, they are freed, and so filled (or reused) — otherwise every later row would wait
    /// behind them until a restart.
    pub(super) async fn release_holes(
        &self,
        fence: &Fence,
        key: &Key,
        lowest_held: Option<u64>,
        mined_count: u64,
    ) -> Result<(), String> {
        let Some(state) = self.state(&key.name) else { return Ok(()) };
        let Some(lowest) = lowest_held.filter(|lowest| *lowest > mined_count) else {
            *state.hole.lock().unwrap_or_else(PoisonError::into_inner) = None;
            return Ok(());
        };
        if state.in_process.count() > 0 {
            return Ok(());
        }
        {
            let mut hole = state.hole.lock().unwrap_or_else(PoisonError::into_inner);
            match *hole {
                Some((at, since)) if at == mined_count && since.elapsed() >= self.settings.rebroadcast_after => {}
                Some((at, _)) if at == mined_count => return Ok(()),
                _ => {
                    *hole = Some((mined_count, Instant::now()));
                    return Ok(());
                }
            }
        }
        let pending = ethkms::eth::chain::nonce(self.shared.manager.provider(), key.address())
            .await
            .map_err(|error| redact_urls(&format!("pending nonce: {error}")))?;
        if pending > mined_count {
            return Ok(()); // the node has a transaction there: it may yet be mined
        }
        let nonces = self
            .journal
            .release_nonces(fence, mined_count..lowest)
            .await
            .map_err(|error| format!("{:?}", self.trouble(fence, &error)))?;
        *state.nonces.lock().unwrap_or_else(PoisonError::into_inner) = nonces;
        *state.hole.lock().unwrap_or_else(PoisonError::into_inner) = None;
        tracing::warn!(
            key = %key.name, from = mined_count, to = lowest,
            "nonces held by a transaction sent elsewhere that vanished are free again; they are filled"
        );
        Ok(())
    }
}
