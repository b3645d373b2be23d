//! Local services for the integration tests: LocalStack (a KMS that signs like AWS KMS), anvil (a local
//! Ethereum node) and PostgreSQL (a private cluster of the machine's PostgreSQL 15, for the replicated
//! journal; see [`postgres`]), all on 127.0.0.1, the independent verifiers the tests check our
//! output against (foundry's `cast`, ethers v6, Python's eth-account), and SoftHSM2 test tokens (files,
//! no process: see [`softhsm`]) for the PKCS#11 backend.
//!
//! ```text
//! cargo xtask services up      install what is missing, start both or reuse running ones,
//!                              write target/services/env.sh
//! cargo xtask services status  whether each is running, with its pid and URL
//! cargo xtask services down    stop both
//! ```
//!
//! Everything is installed here ([`install`]), into [`cache_dir`](crate::command::cache_dir), under a
//! name that carries a hash of what is installed (so changing a pin installs afresh beside the old
//! copy). A clean machine needs only a
//! Python >= 3.13 (LocalStack; `ETHKMS_PYTHON` picks one), a Python >= 3.11 (eth-account: the
//! default `python3`, else the same 3.13) and Node.js with npm:
//!
//! - `localstack-<hash>/`: a virtualenv with `xtask/services/localstack-requirements.txt` (the full
//!   pinned set that starts; a bare `localstack-core` does not).
//! - `verifiers-<hash>/`: a virtualenv with `xtask/services/verifiers-requirements.txt`
//!   (eth-account, pinned).
//! - `node-<hash>/node_modules/`: the npm packages (anvil, cast, ethers).
//!
//! Each service runs in a process group of its own, so Ctrl-C in the terminal that ran `up` does
//! not reach it and `down` stops its children too. Its pid, port and log are
//! `target/services/<name>.{pid,port,log}`.
//!
//! LocalStack runs through `xtask/services/run_localstack.py` (its own gateway would listen on
//! every interface), in host mode, with its files and a self-signed TLS certificate in
//! `target/services/localstack-state/` (see [`localstack::command`] for why each setting).
//!
//! Ports: `ETHKMS_LOCALSTACK_PORT` (default 4566), `ETHKMS_ANVIL_PORT` (default 8545) and
//! `ETHKMS_POSTGRES_PORT` (default 55432, away from a system server's 5432).
//!
//! A task that needs the services for itself (the benchmarks) holds a [`Session`]: it stops again
//! what it started and leaves alone what was already running.
//!
//! The parts: [`install`] (virtualenvs and npm packages), [`process`] (starting, health-waiting and
//! stopping a process group), [`localstack`] and [`anvil`] (each one's command line and health check),
//! [`http`] (the health checks' requests). Each service's constants are in one table, [`Service::ALL`].

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::Result;
use crate::command::workspace_root;
use process::{process_matches, remove_if_present, stop, write_file};

mod anvil;
mod http;
mod install;
mod localstack;
pub(crate) mod postgres;
mod process;
pub(crate) mod softhsm;

pub(crate) use http::http_request;
pub(crate) use install::{node_modules, python_venv};

/// `cargo xtask services <action>`.
///
/// # Errors
///
/// If the action is unknown, or [`up`], [`down`] or [`status`] fails.
pub(crate) fn run(action: &str) -> Result {
    match action {
        "up" => {
            let env = up()?;
            eprintln!(
                "xtask: LocalStack KMS at {}, anvil at {}, PostgreSQL at {}, SoftHSM2 token `{}` ({})",
                env.kms_endpoint,
                env.rpc_url,
                env.postgres_url,
                softhsm::TOKEN,
                env.softhsm.conf.display()
            );
            eprintln!("xtask: for a shell: source {}", env_file().display());
            Ok(())
        }
        "down" => down(),
        "status" => status(),
        other => Err(format!(
            "unknown action `services {other}`: expected `services up`, `services down` or \
             `services status`"
        )
        .into()),
    }
}

/// Where the local services can be reached, and the tools the integration tests use with them.
#[derive(Clone, Debug)]
pub(crate) struct ServiceEnv {
    /// LocalStack's endpoint, `http://127.0.0.1:PORT` (`ETHKMS_TEST_KMS_ENDPOINT`).
    pub(crate) kms_endpoint: String,
    /// anvil's JSON-RPC URL, `http://127.0.0.1:PORT` (`ETHKMS_TEST_RPC_URL`).
    pub(crate) rpc_url: String,
    /// The native `cast` binary (`ETHKMS_TEST_CAST`).
    pub(crate) cast: PathBuf,
    /// The native `anvil` binary (`ETHKMS_TEST_ANVIL`), for tests that need a node of their own
    /// (mining switched off, or a block time).
    pub(crate) anvil: PathBuf,
    /// The `node_modules` directory holding ethers (`ETHKMS_TEST_NODE_MODULES`).
    pub(crate) node_modules: PathBuf,
    /// A Python interpreter with eth-account installed (`ETHKMS_TEST_PYTHON`).
    pub(crate) python: PathBuf,
    /// PostgreSQL, `postgres://postgres@127.0.0.1:PORT/postgres` (`ETHKMS_TEST_POSTGRES_URL`).
    pub(crate) postgres_url: String,
    /// How tests stop, start and restart that PostgreSQL (`ETHKMS_TEST_POSTGRES_DATA`, `_BIN`, `_RUN_AS`,
    /// `_LOG`).
    pub(crate) postgres_control: postgres::Control,
    /// The SoftHSM2 module and configuration (`ETHKMS_TEST_PKCS11_MODULE`, `SOFTHSM2_CONF`; the tokens'
    /// labels and PIN are constants of [`softhsm`]).
    pub(crate) softhsm: softhsm::SoftHsm,
}

impl ServiceEnv {
    /// The environment variables the integration tests read, with the dummy AWS credentials
    /// LocalStack accepts.
    pub(crate) fn pairs(&self) -> Vec<(String, String)> {
        [
            ("ETHKMS_TEST_KMS_ENDPOINT", self.kms_endpoint.clone()),
            ("ETHKMS_TEST_RPC_URL", self.rpc_url.clone()),
            ("ETHKMS_TEST_CAST", self.cast.display().to_string()),
            ("ETHKMS_TEST_ANVIL", self.anvil.display().to_string()),
            ("ETHKMS_TEST_NODE_MODULES", self.node_modules.display().to_string()),
            ("ETHKMS_TEST_PYTHON", self.python.display().to_string()),
            ("ETHKMS_TEST_POSTGRES_URL", self.postgres_url.clone()),
            ("ETHKMS_TEST_POSTGRES_DATA", self.postgres_control.data.display().to_string()),
            ("ETHKMS_TEST_POSTGRES_BIN", self.postgres_control.binaries.display().to_string()),
            ("ETHKMS_TEST_POSTGRES_RUN_AS", self.postgres_control.run_as.clone()),
            ("ETHKMS_TEST_POSTGRES_LOG", self.postgres_control.log.display().to_string()),
            ("AWS_ACCESS_KEY_ID", "test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            // The region variable of boto3 and the AWS CLI.
            ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
        .into_iter()
        .chain(self.softhsm.pairs())
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }

    /// The services `target/services/env.sh` describes, when a shell that sourced it runs this task (all
    /// of its `ETHKMS_TEST_*` variables set); `None` otherwise.
    pub(crate) fn from_environment() -> Option<Self> {
        let variable = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        Some(Self {
            kms_endpoint: variable("ETHKMS_TEST_KMS_ENDPOINT")?.into_string().ok()?,
            rpc_url: variable("ETHKMS_TEST_RPC_URL")?.into_string().ok()?,
            cast: variable("ETHKMS_TEST_CAST")?.into(),
            anvil: variable("ETHKMS_TEST_ANVIL")?.into(),
            node_modules: variable("ETHKMS_TEST_NODE_MODULES")?.into(),
            python: variable("ETHKMS_TEST_PYTHON")?.into(),
            postgres_url: variable("ETHKMS_TEST_POSTGRES_URL")?.into_string().ok()?,
            postgres_control: postgres::Control {
                data: variable("ETHKMS_TEST_POSTGRES_DATA")?.into(),
                binaries: variable("ETHKMS_TEST_POSTGRES_BIN")?.into(),
                // Empty when xtask is not root: set, but to nothing.
                run_as: std::env::var("ETHKMS_TEST_POSTGRES_RUN_AS").ok()?,
                log: variable("ETHKMS_TEST_POSTGRES_LOG")?.into(),
            },
            softhsm: softhsm::SoftHsm {
                module: variable("ETHKMS_TEST_PKCS11_MODULE")?.into(),
                conf: variable("SOFTHSM2_CONF")?.into(),
            },
        })
    }

    /// Sets [`Self::pairs`] on `command`.
    pub(crate) fn apply(&self, command: &mut Command) {
        command.envs(self.pairs());
    }
}

/// Installs what is missing, starts LocalStack and anvil unless they are already running and
/// healthy, waits until both are healthy and writes `target/services/env.sh`. They stay running (a
/// [`Session`] stops what it started).
///
/// # Errors
///
/// If no suitable Python, npm or registry is available, an install fails, a port is taken by
/// another program, or a service exits or is not healthy in time (the error then shows the end of
/// its log).
pub(crate) fn up() -> Result<ServiceEnv> {
    Ok(Session::start()?.keep())
}

/// The services one task uses. [`Session::start`] is [`up`] that remembers which services it
/// started (rather than found running); dropping the session stops those again and leaves alone the
/// ones that were already running.
#[derive(Debug)]
pub(crate) struct Session {
    /// Where they are.
    env: ServiceEnv,
    /// The services this session started, to be stopped when it ends.
    started: Vec<Service>,
}

impl Session {
    /// Like [`up`], remembering what it started.
    ///
    /// # Errors
    ///
    /// As [`up`].
    pub(crate) fn start() -> Result<Self> {
        let localstack_port = Service::LOCALSTACK.port()?;
        let anvil_port = Service::ANVIL.port()?;
        let postgres_port = Service::POSTGRES.port()?;
        let directory = state_dir();
        std::fs::create_dir_all(&directory)
            .map_err(|error| format!("could not create {}: {error}", directory.display()))?;

        let tools = install::install()?;
        let softhsm = softhsm::prepare(&directory.join("softhsm"))?;

        // Start both, then wait for both: LocalStack boots while anvil is checked.
        let localstack = Service::LOCALSTACK
            .launch(localstack_port, || localstack::command(&tools.localstack_python, localstack_port))?;
        let anvil = Service::ANVIL.launch(anvil_port, || Ok(anvil::command(&tools.node.anvil, anvil_port)))?;
        let postgres = Service::POSTGRES.launch(postgres_port, || postgres::command(postgres_port))?;
        let mut started = Vec::new();
        if postgres.started() {
            started.push(Service::POSTGRES);
        }
        if anvil.started() {
            started.push(Service::ANVIL);
        }
        if localstack.started() {
            started.push(Service::LOCALSTACK);
        }
        Service::ANVIL.finish(anvil_port, anvil)?;
        Service::POSTGRES.finish(postgres_port, postgres)?;
        Service::LOCALSTACK.finish(localstack_port, localstack)?;

        let env = ServiceEnv {
            kms_endpoint: Service::LOCALSTACK.url(localstack_port),
            rpc_url: Service::ANVIL.url(anvil_port),
            cast: tools.node.cast,
            anvil: tools.node.anvil.clone(),
            node_modules: tools.node.node_modules,
            python: tools.verifier_python,
            postgres_url: Service::POSTGRES.url(postgres_port),
            postgres_control: postgres::control(postgres_port, Service::POSTGRES.log_file())?,
            softhsm,
        };
        write_env_file(&env)?;
        Ok(Self { env, started })
    }

    /// Where the services are.
    pub(crate) fn env(&self) -> &ServiceEnv {
        &self.env
    }

    /// The services this session started and stops when it ends, by title (`LocalStack KMS`, `anvil`).
    pub(crate) fn started(&self) -> Vec<&'static str> {
        self.started.iter().map(|service| service.title).collect()
    }

    /// Ends the session leaving every service running, as [`up`] does.
    pub(crate) fn keep(mut self) -> ServiceEnv {
        self.started.clear();
        self.env.clone()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.started.is_empty() {
            return;
        }
        eprintln!("xtask: stopping the services this task started");
        if let Err(error) = stop_services(&self.started) {
            eprintln!("xtask: stopping the services this task started failed: {error}");
        }
    }
}

/// Stops both services (SIGTERM to the process group, SIGKILL after a grace period) and removes
/// their pid files and `env.sh`. Nothing running is not an error.
///
/// # Errors
///
/// If a process group is still alive after SIGKILL, or a pid file cannot be removed.
pub(crate) fn down() -> Result {
    stop_services(&Service::ALL)
}

/// Stops `services` as [`down`] does, and removes `env.sh`, which names them.
fn stop_services(services: &[Service]) -> Result {
    let mut failures = Vec::new();
    for &service in services {
        match service.recorded() {
            Some(recorded) if process_matches(recorded.pid, service.signature) => match stop(service, recorded.pid) {
                Ok(()) => {
                    eprintln!("xtask: stopped {} (pid {})", service.title, recorded.pid);
                }
                Err(error) => failures.push(error.to_string()),
            },
            Some(recorded) => eprintln!("xtask: {} was not running (stale pid {})", service.title, recorded.pid),
            None => eprintln!("xtask: {} was not running", service.title),
        }
        if let Err(error) = service.forget() {
            failures.push(error.to_string());
        }
    }
    if let Err(error) = remove_if_present(&env_file()) {
        failures.push(error.to_string());
    }
    if failures.is_empty() { Ok(()) } else { Err(failures.join("; ").into()) }
}

/// `name=pid,…` of the services running, as their pid files record them.
pub(crate) fn recorded_pids() -> String {
    Service::ALL
        .iter()
        .filter_map(|service| service.recorded().map(|recorded| format!("{}={}", service.name, recorded.pid)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Prints whether each service is running, with its pid and URL.
///
/// # Errors
///
/// Never, today; the signature matches the other actions.
pub(crate) fn status() -> Result {
    for service in Service::ALL {
        let line = match service.recorded() {
            Some(recorded) if process_matches(recorded.pid, service.signature) => {
                let url = service.url(recorded.port);
                if (service.healthy)(recorded.port) {
                    format!("running (pid {}, {url})", recorded.pid)
                } else {
                    format!(
                        "running but not healthy (pid {}, {url}); log: {}",
                        recorded.pid,
                        service.log_file().display()
                    )
                }
            }
            Some(recorded) => format!("not running (stale pid file for pid {})", recorded.pid),
            None => "not running".to_owned(),
        };
        println!("{:<15} {line}", service.title);
    }
    let conf = state_dir().join("softhsm").join("softhsm2.conf");
    let tokens = if conf.is_file() {
        format!("tokens `{}` and `{}` ({})", softhsm::TOKEN, softhsm::SPARE_TOKEN, conf.display())
    } else {
        "no tokens yet (`cargo xtask services up` creates them)".to_owned()
    };
    println!("{:<15} {tokens}", "SoftHSM2");
    Ok(())
}

// -------------------------------------------------------------------------------------------------
// The two services.

/// One of the local services: what tells it apart from the other, in one table ([`Self::ALL`]).
#[derive(Clone, Copy, Debug)]
struct Service {
    /// The name of its files in `target/services/`.
    name: &'static str,
    /// The name for messages.
    title: &'static str,
    /// Part of its command line: checked before signalling a recorded pid, which may have been
    /// reused.
    signature: &'static str,
    /// The variable that sets its port.
    port_variable: &'static str,
    /// The port when the variable is not set.
    default_port: u16,
    /// How long it may take to become healthy.
    timeout: Duration,
    /// Whether it answers on a port as a healthy instance of this service does.
    healthy: fn(u16) -> bool,
    /// Its URL on a port.
    url: fn(u16) -> String,
    /// The pid of an instance on a port that was restarted outside xtask (a test's `pg_ctl restart`), so
    /// that it is no longer the process the pid file names.
    restarted_pid: fn(u16) -> Option<u32>,
}

/// A service's pid and port as its files in `target/services/` record them.
#[derive(Clone, Copy, Debug)]
struct Recorded {
    /// The process id, which is also its process group id.
    pid: u32,
    /// The port it listens on.
    port: u16,
}

impl Service {
    /// LocalStack with only KMS.
    const LOCALSTACK: Self = Self {
        name: "localstack",
        title: "LocalStack KMS",
        signature: localstack::LAUNCHER,
        port_variable: "ETHKMS_LOCALSTACK_PORT",
        default_port: 4566,
        timeout: localstack::TIMEOUT,
        healthy: localstack::healthy,
        url: http_url,
        restarted_pid: never_restarted,
    };

    /// foundry's anvil.
    const ANVIL: Self = Self {
        name: "anvil",
        title: "anvil",
        signature: "anvil",
        port_variable: "ETHKMS_ANVIL_PORT",
        default_port: 8545,
        timeout: anvil::TIMEOUT,
        healthy: anvil::healthy,
        url: http_url,
        restarted_pid: never_restarted,
    };

    /// PostgreSQL 15, a private cluster.
    const POSTGRES: Self = Self {
        name: "postgres",
        title: "PostgreSQL",
        signature: postgres::SIGNATURE,
        port_variable: "ETHKMS_POSTGRES_PORT",
        default_port: 55432,
        timeout: postgres::TIMEOUT,
        healthy: postgres::healthy,
        url: postgres::url,
        restarted_pid: postgres::restarted_pid,
    };

    /// Every service.
    const ALL: [Self; 3] = [Self::LOCALSTACK, Self::ANVIL, Self::POSTGRES];

    /// The port to use: the variable, else the default.
    fn port(self) -> Result<u16> {
        let variable = self.port_variable;
        match std::env::var(variable) {
            Err(std::env::VarError::NotPresent) => Ok(self.default_port),
            Ok(text) if text.trim().is_empty() => Ok(self.default_port),
            Ok(text) => match text.trim().parse::<u16>() {
                Ok(port) if port != 0 => Ok(port),
                _ => Err(format!("{variable}={text} is not a port number (1-65535)").into()),
            },
            Err(error) => Err(format!("{variable} is not usable: {error}").into()),
        }
    }

    /// Its URL on `port`.
    fn url(self, port: u16) -> String {
        (self.url)(port)
    }

    /// `target/services/<name>.pid`: the process id.
    fn pid_file(self) -> PathBuf {
        state_dir().join(format!("{}.pid", self.name))
    }

    /// `target/services/<name>.port`: the port it was started on.
    fn port_file(self) -> PathBuf {
        state_dir().join(format!("{}.port", self.name))
    }

    /// `target/services/<name>.log`: its standard output and error.
    fn log_file(self) -> PathBuf {
        state_dir().join(format!("{}.log", self.name))
    }

    /// The pid and port recorded by the last start, if both files are there and valid; the pid of the
    /// instance restarted since, if the recorded process is gone and the service knows a restarted one.
    fn recorded(self) -> Option<Recorded> {
        let pid = std::fs::read_to_string(self.pid_file()).ok()?.trim().parse().ok().filter(|pid| *pid > 1)?;
        let port = std::fs::read_to_string(self.port_file()).ok()?.trim().parse().ok()?;
        let pid = if process_matches(pid, self.signature) { pid } else { (self.restarted_pid)(port).unwrap_or(pid) };
        Some(Recorded { pid, port })
    }

    /// Removes the pid and port files.
    fn forget(self) -> Result {
        remove_if_present(&self.pid_file())?;
        remove_if_present(&self.port_file())
    }
}

/// For the services nothing restarts behind xtask's back.
fn never_restarted(_port: u16) -> Option<u32> {
    None
}

/// `http://127.0.0.1:PORT`.
fn http_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// `target/services/`: pid, port and log files, LocalStack's state and `env.sh`.
fn state_dir() -> PathBuf {
    workspace_root().join("target").join("services")
}

/// `target/services/env.sh`: the [`ServiceEnv`] as `export` lines for a shell.
fn env_file() -> PathBuf {
    state_dir().join("env.sh")
}

/// Writes [`env_file`].
fn write_env_file(env: &ServiceEnv) -> Result {
    let mut text =
        String::from("# Written by `cargo xtask services up`; `source` it to use the services from a shell.\n");
    for (name, value) in env.pairs() {
        writeln!(text, "export {name}={}", shell_quote(&value))?;
    }
    write_file(&env_file(), &text)
}

/// `value` quoted for a POSIX shell.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests;
