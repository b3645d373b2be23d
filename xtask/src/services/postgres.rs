//! PostgreSQL 15, for the replicated signing service's journal: a private cluster of the machine's own
//! binaries (Debian's `postgresql-15`), `initdb` on first start into a directory of its own, listening on
//! 127.0.0.1 only with trust authentication, its socket in that directory. The server refuses to run as
//! root, so when xtask runs as root it runs as the `postgres` user (`runuser`), in a directory under the
//! temporary directory (which that user can reach, unlike a checkout under `/root`).
//!
//! `fsync` stays on: the cluster is as durable as a real one, so benchmarks against SQLite's
//! `synchronous = FULL` compare like with like.
//!
//! Tests take the server down under running replicas (`pg_ctl restart`, `stop`, `start`): `env.sh` tells
//! them how ([`Control`]). The server `pg_ctl` starts again is no child of xtask's and has a new pid, in a
//! process group of its own; [`restarted_pid`] finds it through the cluster's own `postmaster.pid`, so
//! `status`, `up` and `down` still see the service.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::Result;

/// Part of the server's command line, checked before signalling a recorded pid.
pub(super) const SIGNATURE: &str = "postgres";

/// How long the server may take to accept connections (initdb included: about a second).
pub(super) const TIMEOUT: Duration = Duration::from_secs(60);

/// The major version the project uses.
const MAJOR: u32 = 15;

/// The user the server runs as when xtask runs as root.
const USER: &str = "postgres";

/// `postgres://postgres@127.0.0.1:PORT/postgres`.
pub(super) fn url(port: u16) -> String {
    format!("postgres://{USER}@127.0.0.1:{port}/postgres")
}

/// Whether a server accepts connections on 127.0.0.1:`port` (`pg_isready`).
pub(super) fn healthy(port: u16) -> bool {
    let Ok(binaries) = binaries() else { return false };
    Command::new(binaries.join("pg_isready"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "1"])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// What a test needs to stop, start or restart the cluster itself with `pg_ctl`; `env.sh` exports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Control {
    /// The cluster's data directory (`ETHKMS_TEST_POSTGRES_DATA`).
    pub(crate) data: PathBuf,
    /// The directory of the binaries, `pg_ctl` among them (`ETHKMS_TEST_POSTGRES_BIN`).
    pub(crate) binaries: PathBuf,
    /// The user `pg_ctl` runs as (`runuser -u USER --`), empty for the current user
    /// (`ETHKMS_TEST_POSTGRES_RUN_AS`): the server refuses to run as root.
    pub(crate) run_as: String,
    /// The log a server started by `pg_ctl` writes to: the service's own (`ETHKMS_TEST_POSTGRES_LOG`).
    pub(crate) log: PathBuf,
}

/// How a test controls the cluster on `port` whose log is `log`.
pub(super) fn control(port: u16, log: PathBuf) -> Result<Control> {
    let run_as = if is_root() { USER.to_owned() } else { String::new() };
    Ok(Control { data: data_dir(port), binaries: binaries()?, run_as, log })
}

/// The pid of the server running the cluster of `port`, as the cluster's `postmaster.pid` (first line)
/// records it, if that process is alive: after a test's `pg_ctl restart`, the server is no longer the
/// process xtask started and recorded.
pub(super) fn restarted_pid(port: u16) -> Option<u32> {
    let recorded = std::fs::read_to_string(data_dir(port).join("postmaster.pid")).ok()?;
    let pid = recorded.lines().next()?.trim().parse().ok()?;
    super::process::process_matches(pid, SIGNATURE).then_some(pid)
}

/// The server on 127.0.0.1:`port`, its cluster created first if there is none yet.
pub(super) fn command(port: u16) -> Result<Command> {
    let binaries = binaries()?;
    let data = data_dir(port);
    let as_root = is_root();
    if !data.join("PG_VERSION").is_file() {
        initdb(&binaries, &data, as_root)?;
    }
    let server = binaries.join("postgres");
    let port = port.to_string();
    let socket_dir = data.display().to_string();
    let arguments: [&str; 8] = ["-D", &socket_dir, "-p", &port, "-k", &socket_dir, "-c", "listen_addresses=127.0.0.1"];
    Ok(as_user(as_root, &server, &arguments))
}

/// The cluster's directory: under the temporary directory, one per port.
fn data_dir(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("ethkms-postgres-{port}"))
}

/// Creates the cluster in `data` (trust authentication, superuser `postgres`, UTF-8).
fn initdb(binaries: &Path, data: &Path, as_root: bool) -> Result {
    std::fs::create_dir_all(data).map_err(|error| format!("could not create {}: {error}", data.display()))?;
    if as_root {
        let owned = Command::new("chown").arg(USER).arg(data).status();
        if !owned.is_ok_and(|status| status.success()) {
            return Err(format!("could not give {} to the `{USER}` user (chown)", data.display()).into());
        }
    }
    let directory = data.display().to_string();
    let arguments = ["-D", &directory, "-A", "trust", "-U", USER, "-E", "UTF8", "--no-instructions"];
    let output = as_user(as_root, &binaries.join("initdb"), &arguments)
        .output()
        .map_err(|error| format!("could not run initdb: {error}"))?;
    if !output.status.success() {
        return Err(format!("initdb failed: {}", String::from_utf8_lossy(&output.stderr).trim()).into());
    }
    Ok(())
}

/// `program arguments`, as the `postgres` user when xtask runs as root.
fn as_user(as_root: bool, program: &Path, arguments: &[&str]) -> Command {
    if as_root {
        let mut command = Command::new("runuser");
        command.args(["-u", USER, "--"]).arg(program).args(arguments);
        command
    } else {
        let mut command = Command::new(program);
        command.args(arguments);
        command
    }
}

/// Whether this process runs as root (uid 0).
fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// The directory of the PostgreSQL 15 binaries: `ETHKMS_POSTGRES_BIN`, else Debian's
/// `/usr/lib/postgresql/15/bin`.
pub(crate) fn binaries() -> Result<PathBuf> {
    let directory = std::env::var_os("ETHKMS_POSTGRES_BIN")
        .map_or_else(|| PathBuf::from(format!("/usr/lib/postgresql/{MAJOR}/bin")), PathBuf::from);
    if ["initdb", "postgres", "pg_isready"].iter().all(|name| directory.join(name).is_file()) {
        Ok(directory)
    } else {
        Err(format!(
            "PostgreSQL {MAJOR} is not installed in {}: install it (`apt-get install postgresql-{MAJOR}`) or name \
             the directory of its binaries with ETHKMS_POSTGRES_BIN",
            directory.display()
        )
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_the_superuser_on_loopback() {
        assert_eq!(url(55432), "postgres://postgres@127.0.0.1:55432/postgres");
        assert!(data_dir(55432).ends_with("ethkms-postgres-55432"));
    }

    #[test]
    fn a_cluster_that_is_not_running_has_no_restarted_server() {
        // Port 1 has no cluster directory, hence no postmaster.pid.
        assert_eq!(restarted_pid(1), None);
    }

    #[test]
    fn a_command_runs_as_the_postgres_user_only_as_root() {
        let program = Path::new("/usr/lib/postgresql/15/bin/postgres");
        let root = as_user(true, program, &["-p", "1"]);
        assert_eq!(root.get_program(), "runuser");
        let arguments: Vec<_> = root.get_args().collect();
        assert_eq!(arguments[..4], ["-u", "postgres", "--", "/usr/lib/postgresql/15/bin/postgres"]);
        let plain = as_user(false, program, &["-p", "1"]);
        assert_eq!(plain.get_program(), program.as_os_str());
    }
}
