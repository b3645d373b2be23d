//! Test support for the ethkms workspace (not published; only ever a dev-dependency), used by every
//! crate's tests and by the end-to-end tests in `tests/e2e/`:
//!
//! - [`services`](mod@services): the live services `cargo xtask services up` starts and exports (LocalStack KMS,
//!   anvil, the verifiers), found through environment variables; missing ones skip a test, or fail it
//!   in CI ([`service_from_env`], [`services()`]).
//! - [`kms`]: a KMS backend on LocalStack and keys funded on anvil.
//! - [`pkcs11`]: a backend on the SoftHSM2 token of `cargo xtask services up`.
//! - [`anvil`]: an anvil process of a test's own (mining settings the shared one must not have).
//! - [`chain`]: JSON-RPC calls straight to a node: balances, receipts, blocks, the test ERC-20.
//! - [`verifiers`]: signatures checked by code nobody here wrote: Python eth-account, ethers v6, cast.
//! - [`postgres`]: the machine's PostgreSQL 15, or a server named by `ETHKMS_TEST_POSTGRES_URL`; on it,
//!   a database of a test's own (feature `postgres`) and restarts of the server under a running test.
//! - `server` (feature `server`): the signing service in process and a client of its REST API.
//! - [`rpc_proxy`]: a JSON-RPC proxy on loopback that forwards to a node and injects faults (errors
//!   after the node accepted a transaction, bad gateways, dropped connections, outages) from a seeded
//!   random sequence, for tests that prove withdrawals are paid exactly once.
//! - [`free_port`] and [`unique`]: the small helpers tests across the workspace need.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub mod anvil;
pub mod chain;
pub mod kms;
pub mod pkcs11;
pub mod postgres;
pub mod rpc_proxy;
#[cfg(feature = "server")]
pub mod server;
pub mod services;
pub mod verifiers;

pub use anvil::Anvil;
pub use kms::{funded_key, localstack};
pub use services::{Services, service_from_env, services};

/// A port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
///
/// Another process may take it before the caller binds it; for a server of this crate's own, bind port
/// 0 instead (as [`rpc_proxy::RpcProxy::start`] does). This is for child processes that must be told
/// their port on the command line.
///
/// # Panics
///
/// If no socket can be bound on 127.0.0.1.
#[must_use]
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address of a bound socket").port()
}

/// A string unique to this call: `prefix`, the process id, a per-process counter and the time in
/// nanoseconds, joined by `-` (for example `alias-4242-7-1718000000123456789`).
///
/// Two calls never return the same string within one process, and processes differ in their id; only
/// ASCII digits and `-` are added to `prefix`, so the result is safe in file names and KMS aliases when
/// the prefix is.
#[must_use]
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos());
    format!("{prefix}-{}-{count}-{nanos}", std::process::id())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::{free_port, unique};

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    }

    #[test]
    fn unique_names_differ_and_keep_the_prefix() {
        let names: HashSet<String> = (0..1000).map(|_| unique("alias/test")).collect();
        assert_eq!(names.len(), 1000);
        for name in &names {
            let rest = name.strip_prefix("alias/test-").expect("prefix kept");
            assert!(rest.chars().all(|c| c.is_ascii_digit() || c == '-'), "{name}");
        }
    }
}
