//! The PostgreSQL server of `cargo xtask services up`, taken down under a test: stopped, started and
//! restarted with `pg_ctl`, as `target/services/env.sh` says how:
//!
//! - `ETHKMS_TEST_POSTGRES_DATA`: the cluster's data directory (required: without it a test that
//!   restarts PostgreSQL is skipped, or fails in CI);
//! - `ETHKMS_TEST_POSTGRES_BIN`: the directory of `pg_ctl` (else where [`find_binaries`] finds it);
//! - `ETHKMS_TEST_POSTGRES_RUN_AS`: the user `pg_ctl` runs as through `runuser`, empty for the current
//!   user (if unset: `postgres` when the test runs as root, as the server refuses root);
//! - `ETHKMS_TEST_POSTGRES_LOG`: the file the restarted server logs to (else one in the temporary
//!   directory).
//!
//! Every call blocks until `pg_ctl` is done (`-w`: the server accepts connections, or is gone); call it
//! from `tokio::task::spawn_blocking` in an async test. The restarted server keeps the command line the
//! cluster was started with (`postmaster.opts`: port, socket directory, listen address), so its URL does
//! not change. A stopped server is started again when its [`Stopped`] guard is dropped, also when the
//! test fails, so that one failing test does not leave the next without a database.
//!
//! Restarting the shared server disturbs whatever else uses it: the tests that do so run alone
//! (`.config/nextest.toml`'s `shared-postgres` group; serialised within their test binary).

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::find_binaries;
use crate::services::{required, service_from_env};

/// How long `pg_ctl` waits for the server to start or stop, in seconds.
const PG_CTL_WAIT_SECONDS: &str = "60";

/// Control of the running PostgreSQL cluster; see the [module documentation](self).
#[derive(Clone, Debug)]
pub struct ServerControl {
    /// The data directory.
    pub data: PathBuf,
    /// The directory of `pg_ctl`.
    pub binaries: PathBuf,
    /// The user `pg_ctl` runs as, if not the current one.
    pub run_as: Option<String>,
    /// Where the server started by `pg_ctl` writes its log (appended to).
    pub log: PathBuf,
}

impl ServerControl {
    /// The cluster `target/services/env.sh` describes, or `None` to skip the test when
    /// `ETHKMS_TEST_POSTGRES_DATA` is not set.
    ///
    /// # Panics
    /// When it is not set in CI (`ETHKMS_REQUIRE_SERVICES`), or `pg_ctl` is nowhere to be found.
    #[must_use]
    pub fn from_env() -> Option<Self> {
        let data = service_from_env("ETHKMS_TEST_POSTGRES_DATA", "PostgreSQL (restarted by the test)")?;
        let binaries = match std::env::var_os("ETHKMS_TEST_POSTGRES_BIN").filter(|value| !value.is_empty()) {
            Some(directory) => PathBuf::from(directory),
            None => match find_binaries() {
                Some(found) => found.directory,
                None if required() => panic!("no PostgreSQL binaries (pg_ctl) found: set ETHKMS_TEST_POSTGRES_BIN"),
                None => {
                    eprintln!("SKIPPED: no PostgreSQL binaries (pg_ctl) found; set ETHKMS_TEST_POSTGRES_BIN");
                    return None;
                }
            },
        };
        let run_as = match std::env::var("ETHKMS_TEST_POSTGRES_RUN_AS") {
            Ok(user) => Some(user).filter(|user| !user.is_empty()),
            Err(_) => is_root().then(|| "postgres".to_owned()),
        };
        let log = std::env::var_os("ETHKMS_TEST_POSTGRES_LOG")
            .filter(|value| !value.is_empty())
            .map_or_else(|| std::env::temp_dir().join("ethkms-postgres-pg_ctl.log"), PathBuf::from);
        Some(Self { data: PathBuf::from(data), binaries, run_as, log })
    }

    /// `pg_ctl restart -m fast`: connections are ended at once (no waiting for clients to leave), the
    /// server stops and starts again with the same command line. Returns once it accepts connections.
    ///
    /// # Panics
    /// If `pg_ctl` fails.
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast"]);
    }

    /// `pg_ctl stop -m fast`: the server is down until [`Stopped::start`], or the guard's drop.
    ///
    /// # Panics
    /// If `pg_ctl` fails (the server was not running, say).
    #[must_use = "the server starts again when the guard is dropped"]
    pub fn stop(&self) -> Stopped<'_> {
        self.pg_ctl(&["stop", "-m", "fast"]);
        Stopped { control: self, started: false }
    }

    /// The server's pid, from the cluster's `postmaster.pid` (`None` while it is stopped).
    #[must_use]
    pub fn server_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// `pg_ctl start` with the options the cluster was last started with: what `pg_ctl restart` does,
    /// which `start` alone does not (it would start the server on the default port).
    fn start(&self) {
        let path = self.data.join("postmaster.opts");
        let line = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        // `/usr/lib/postgresql/15/bin/postgres "-D" "/tmp/…" "-p" "55432" …`: the program, then the options
        // as a shell would read them (pg_ctl passes them through `sh -c`).
        let options = line.trim().split_once(" \"").map(|(_, rest)| format!("\"{rest}")).unwrap_or_default();
        self.pg_ctl(&["start", "-o", &options]);
    }

    /// Runs `pg_ctl ACTION… -w -t 60 -D DATA` (as [`Self::run_as`] if set) and checks that it succeeded.
    ///
    /// Its output goes to [`Self::log`], never to a pipe: the server it starts inherits it, and a pipe
    /// would stay open for as long as the server runs (a test waiting for its end would hang).
    fn pg_ctl(&self, action: &[&str]) {
        let pg_ctl = self.binaries.join("pg_ctl");
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&pg_ctl);
                command
            }
            None => Command::new(&pg_ctl),
        };
        command.args(action).args(["-w", "-t", PG_CTL_WAIT_SECONDS, "-D"]).arg(&self.data);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|error| panic!("{}: {error}", self.log.display()));
        let log_too = log.try_clone().unwrap_or_else(|error| panic!("{}: {error}", self.log.display()));
        command.stdin(Stdio::null()).stdout(log).stderr(log_too);
        let status = command.status().unwrap_or_else(|error| panic!("{}: {error}", pg_ctl.display()));
        assert!(status.success(), "`{command:?}` failed ({status}); see {}", self.log.display());
    }
}

/// The server, stopped by [`ServerControl::stop`]: started again by [`Self::start`] or on drop.
#[derive(Debug)]
pub struct Stopped<'control> {
    control: &'control ServerControl,
    started: bool,
}

impl Stopped<'_> {
    /// Starts the server again; returns once it accepts connections.
    ///
    /// # Panics
    /// If `pg_ctl` fails.
    pub fn start(mut self) {
        self.started = true;
        self.control.start();
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if !self.started {
            self.started = true;
            // Also while a test panics: the next test needs the server. A second panic would abort, so a
            // failure here is only reported.
            let control = self.control.clone();
            if std::panic::catch_unwind(move || control.start()).is_err() {
                eprintln!("PostgreSQL could not be started again: see {}", self.control.log.display());
            }
        }
    }
}

/// Whether this process runs as root (uid 0).
fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}
