//! Local services for the integration tests: LocalStack (a KMS that signs like AWS KMS) and anvil
//! (a local Ethereum node), both on 127.0.0.1, and the independent verifiers the tests check our
//! output against (foundry's `cast`, ethers v6, Python's eth-account).
//!
//! ```text
//! cargo xtask services up      install what is missing, start both or reuse running ones,
//!                              write target/services/env.sh
//! cargo xtask services status  whether each is running, with its pid and URL
//! cargo xtask services down    stop both
//! ```
//!
//! Everything is installed here, into [`cache_dir`], under a name that carries a hash of what is
//! installed (so changing a pin installs afresh beside the old copy). A clean machine needs only a
//! Python >= 3.13 (LocalStack; `ETHKMS_PYTHON` picks one), a Python >= 3.11 (eth-account: the
//! default `python3`, else the same 3.13) and Node.js with npm:
//!
//! - `localstack-<hash>/`: a virtualenv with `xtask/services/localstack-requirements.txt` (the full
//!   pinned set that starts; a bare `localstack-core` does not).
//! - `verifiers-<hash>/`: a virtualenv with `xtask/services/verifiers-requirements.txt`
//!   (eth-account, pinned).
//! - `node-<hash>/node_modules/`: [`NPM_PACKAGES`] (anvil, cast, ethers).
//!
//! Each service runs in a process group of its own, so Ctrl-C in the terminal that ran `up` does
//! not reach it and `down` stops its children too. Its pid, port and log are
//! `target/services/<name>.{pid,port,log}`.
//!
//! LocalStack runs through `xtask/services/run_localstack.py` (its own gateway would listen on
//! every interface), in host mode, with its files and a self-signed TLS certificate in
//! `target/services/localstack-state/` (see [`localstack_command`] for why each setting).
//!
//! Ports: `ETHKMS_LOCALSTACK_PORT` (default 4566) and `ETHKMS_ANVIL_PORT` (default 8545).

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Result;
use crate::command::{self, cache_dir, display, output, workspace_root};

/// The pinned Python packages LocalStack runs from (compiled in, so the cache key follows the
/// file).
const LOCALSTACK_REQUIREMENTS: &str = include_str!("../services/localstack-requirements.txt");

/// The pinned Python packages of the eth-account verifier.
const VERIFIER_REQUIREMENTS: &str = include_str!("../services/verifiers-requirements.txt");

/// The npm packages: anvil and cast (foundry 1.7.1, which ship their native binaries in
/// per-platform packages), and ethers v6 for verifying signatures independently (it pins its own
/// dependencies exactly).
const NPM_PACKAGES: &[&str] = &["@foundry-rs/anvil@1.7.1", "@foundry-rs/cast@1.7.1", "ethers@6.17.0"];

/// The script in `xtask/services/` that runs `localstack.runtime.main` with its gateway listening
/// on 127.0.0.1 only (LocalStack's own listens on every interface, whatever `GATEWAY_LISTEN` says).
const LOCALSTACK_LAUNCHER: &str = "run_localstack.py";

/// localstack-core 2026.3.0 needs Python 3.13 or newer.
const LOCALSTACK_MIN_PYTHON: (u32, u32) = (3, 13);

/// The pinned eth-account set needs Python 3.11 or newer.
const VERIFIER_MIN_PYTHON: (u32, u32) = (3, 11);

/// The hardfork anvil runs: prague has EIP-7702 (set-code transactions) and EIP-4844 (blob
/// transactions).
const ANVIL_HARDFORK: &str = "prague";

/// anvil's default chain id, 31337, as `eth_chainId` returns it.
const ANVIL_CHAIN_ID: &str = "0x7a69";

/// How long LocalStack may take to report KMS running (it is usually 2-20 s).
const LOCALSTACK_TIMEOUT: Duration = Duration::from_secs(180);

/// How long anvil may take to answer `eth_chainId` (it is usually well under a second).
const ANVIL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stopped service gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How often a long install or start-up says it is still going.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(15);

/// How many lines of a service's log an error shows.
const LOG_TAIL_LINES: usize = 40;

/// The largest HTTP response the health checks read.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// `cargo xtask services <action>`.
///
/// # Errors
///
/// If the action is unknown, or [`up`], [`down`] or [`status`] fails.
pub(crate) fn run(action: &str) -> Result {
    match action {
        "up" => {
            let env = up()?;
            eprintln!("xtask: LocalStack KMS at {}, anvil at {}", env.kms_endpoint, env.rpc_url);
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
            ("AWS_ACCESS_KEY_ID", "test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            // The region variable of boto3 and the AWS CLI.
            ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
        .into_iter()
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
        })
    }

    /// Sets [`Self::pairs`] on `command`.
    pub(crate) fn apply(&self, command: &mut Command) {
        command.envs(self.pairs());
    }
}

/// Installs what is missing, starts LocalStack and anvil unless they are already running and
/// healthy, waits until both are healthy and writes `target/services/env.sh`.
///
/// # Errors
///
/// If no suitable Python, npm or registry is available, an install fails, a port is taken by
/// another program, or a service exits or is not healthy in time (the error then shows the end of
/// its log).
pub(crate) fn up() -> Result<ServiceEnv> {
    let localstack_port = Service::LocalStack.port()?;
    let anvil_port = Service::Anvil.port()?;
    let directory = state_dir();
    std::fs::create_dir_all(&directory)
        .map_err(|error| format!("could not create {}: {error}", directory.display()))?;

    let tools = install()?;

    // Start both, then wait for both: LocalStack boots while anvil is checked.
    let localstack = Service::LocalStack
        .launch(localstack_port, || localstack_command(&tools.localstack_python, localstack_port))?;
    let anvil = Service::Anvil.launch(anvil_port, || Ok(anvil_command(&tools.node.anvil, anvil_port)))?;
    Service::Anvil.finish(anvil_port, anvil)?;
    Service::LocalStack.finish(localstack_port, localstack)?;

    let env = ServiceEnv {
        kms_endpoint: Service::LocalStack.url(localstack_port),
        rpc_url: Service::Anvil.url(anvil_port),
        cast: tools.node.cast,
        anvil: tools.node.anvil.clone(),
        node_modules: tools.node.node_modules,
        python: tools.verifier_python,
    };
    write_env_file(&env)?;
    Ok(env)
}

/// Stops both services (SIGTERM to the process group, SIGKILL after [`STOP_GRACE`]) and removes
/// their pid files and `env.sh`. Nothing running is not an error.
///
/// # Errors
///
/// If a process group is still alive after SIGKILL, or a pid file cannot be removed.
pub(crate) fn down() -> Result {
    let mut failures = Vec::new();
    for service in Service::ALL {
        match service.recorded() {
            Some(recorded) if process_matches(recorded.pid, service.signature()) => match stop(service, recorded.pid) {
                Ok(()) => {
                    eprintln!("xtask: stopped {} (pid {})", service.title(), recorded.pid);
                }
                Err(error) => failures.push(error.to_string()),
            },
            Some(recorded) => eprintln!("xtask: {} was not running (stale pid {})", service.title(), recorded.pid),
            None => eprintln!("xtask: {} was not running", service.title()),
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
        .filter_map(|service| service.recorded().map(|recorded| format!("{}={}", service.name(), recorded.pid)))
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
            Some(recorded) if process_matches(recorded.pid, service.signature()) => {
                let url = service.url(recorded.port);
                if service.healthy(recorded.port) {
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
        println!("{:<15} {line}", service.title());
    }
    Ok(())
}

// -------------------------------------------------------------------------------------------------
// The two services.

/// One of the local services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    /// LocalStack with only KMS.
    LocalStack,
    /// foundry's anvil.
    Anvil,
}

/// A service's pid and port as its files in `target/services/` record them.
#[derive(Clone, Copy, Debug)]
struct Recorded {
    /// The process id, which is also its process group id.
    pid: u32,
    /// The port it listens on.
    port: u16,
}

/// A service that [`Service::launch`] found running or started, to be waited for by
/// [`Service::finish`].
#[derive(Debug)]
enum Launch {
    /// Already running, from an earlier `up`.
    Running {
        /// Its pid.
        pid: u32,
    },
    /// Started now.
    Started {
        /// The process.
        child: Child,
        /// When it was started.
        at: Instant,
    },
}

impl Service {
    /// Both services.
    const ALL: [Self; 2] = [Self::LocalStack, Self::Anvil];

    /// The name of its files in `target/services/`.
    fn name(self) -> &'static str {
        match self {
            Self::LocalStack => "localstack",
            Self::Anvil => "anvil",
        }
    }

    /// The name for messages.
    fn title(self) -> &'static str {
        match self {
            Self::LocalStack => "LocalStack KMS",
            Self::Anvil => "anvil",
        }
    }

    /// Part of its command line: checked before signalling a recorded pid, which may have been
    /// reused.
    fn signature(self) -> &'static str {
        match self {
            Self::LocalStack => LOCALSTACK_LAUNCHER,
            Self::Anvil => "anvil",
        }
    }

    /// The variable that sets its port.
    fn port_variable(self) -> &'static str {
        match self {
            Self::LocalStack => "ETHKMS_LOCALSTACK_PORT",
            Self::Anvil => "ETHKMS_ANVIL_PORT",
        }
    }

    /// The port when the variable is not set.
    fn default_port(self) -> u16 {
        match self {
            Self::LocalStack => 4566,
            Self::Anvil => 8545,
        }
    }

    /// How long it may take to become healthy.
    fn timeout(self) -> Duration {
        match self {
            Self::LocalStack => LOCALSTACK_TIMEOUT,
            Self::Anvil => ANVIL_TIMEOUT,
        }
    }

    /// The port to use: the variable, else the default.
    fn port(self) -> Result<u16> {
        let variable = self.port_variable();
        match std::env::var(variable) {
            Err(std::env::VarError::NotPresent) => Ok(self.default_port()),
            Ok(text) if text.trim().is_empty() => Ok(self.default_port()),
            Ok(text) => match text.trim().parse::<u16>() {
                Ok(port) if port != 0 => Ok(port),
                _ => Err(format!("{variable}={text} is not a port number (1-65535)").into()),
            },
            Err(error) => Err(format!("{variable} is not usable: {error}").into()),
        }
    }

    /// `http://127.0.0.1:PORT`.
    fn url(self, port: u16) -> String {
        format!("http://127.0.0.1:{port}")
    }

    /// `target/services/<name>.pid`: the process id.
    fn pid_file(self) -> PathBuf {
        state_dir().join(format!("{}.pid", self.name()))
    }

    /// `target/services/<name>.port`: the port it was started on.
    fn port_file(self) -> PathBuf {
        state_dir().join(format!("{}.port", self.name()))
    }

    /// `target/services/<name>.log`: its standard output and error.
    fn log_file(self) -> PathBuf {
        state_dir().join(format!("{}.log", self.name()))
    }

    /// The pid and port recorded by the last start, if both files are there and valid.
    fn recorded(self) -> Option<Recorded> {
        let pid = std::fs::read_to_string(self.pid_file()).ok()?.trim().parse().ok().filter(|pid| *pid > 1)?;
        let port = std::fs::read_to_string(self.port_file()).ok()?.trim().parse().ok()?;
        Some(Recorded { pid, port })
    }

    /// Removes the pid and port files.
    fn forget(self) -> Result {
        remove_if_present(&self.pid_file())?;
        remove_if_present(&self.port_file())
    }

    /// Whether it answers on `port` as a healthy instance of this service does.
    fn healthy(self, port: u16) -> bool {
        match self {
            Self::LocalStack => http_request(port, "GET", "/_localstack/health", None)
                .is_ok_and(|response| response.status == 200 && localstack_kms_ready(&response.body)),
            Self::Anvil => {
                let request = r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#;
                http_request(port, "POST", "/", Some(request)).is_ok_and(|response| anvil_ready(&response.body))
            }
        }
    }

    /// Reuses the running instance if it is on `port`, else starts one with the command `command`
    /// builds.
    fn launch(self, port: u16, command: impl FnOnce() -> Result<Command>) -> Result<Launch> {
        match self.recorded() {
            Some(recorded) if process_matches(recorded.pid, self.signature()) => {
                if recorded.port == port {
                    return Ok(Launch::Running { pid: recorded.pid });
                }
                eprintln!(
                    "xtask: {} is running on port {}, but {} asks for {port}: restarting it",
                    self.title(),
                    recorded.port,
                    self.port_variable()
                );
                stop(self, recorded.pid)?;
            }
            _ => {}
        }
        self.forget()?;
        if port_in_use(port) {
            return Err(format!(
                "port {port} on 127.0.0.1, wanted for {}, is taken by a program this task did not \
                 start (or whose pid file was deleted); stop that program, or use another port \
                 with {}=PORT",
                self.title(),
                self.port_variable()
            )
            .into());
        }

        let mut command = command()?;
        let log_path = self.log_file();
        let log = std::fs::File::create(&log_path)
            .map_err(|error| format!("could not create {}: {error}", log_path.display()))?;
        let log_for_errors =
            log.try_clone().map_err(|error| format!("could not reuse {}: {error}", log_path.display()))?;
        command.stdin(Stdio::null()).stdout(log).stderr(log_for_errors).process_group(0);
        eprintln!("$ {}{} > {}", shown_env(&command), display(&command), log_path.display());
        let child = command.spawn().map_err(|error| format!("could not start `{}`: {error}", display(&command)))?;
        let at = Instant::now();
        write_file(&self.pid_file(), &format!("{}\n", child.id()))?;
        write_file(&self.port_file(), &format!("{port}\n"))?;
        Ok(Launch::Started { child, at })
    }

    /// Waits until the launched service is healthy; stops one started now if it is not healthy in
    /// time.
    fn finish(self, port: u16, launch: Launch) -> Result {
        let url = self.url(port);
        match launch {
            Launch::Running { pid } => {
                if self.healthy(port) {
                    eprintln!("xtask: {} already running at {url} (pid {pid}): reusing it", self.title());
                    return Ok(());
                }
                eprintln!("xtask: {} is running (pid {pid}) but not healthy yet: waiting for it", self.title());
                let signature = self.signature();
                let waited = self.wait_healthy(port, Instant::now(), || {
                    Ok((!process_matches(pid, signature)).then(|| "stopped".to_owned()))
                });
                match waited {
                    Ok(elapsed) => {
                        eprintln!(
                            "xtask: {} healthy at {url} after {:.1} s more (pid {pid})",
                            self.title(),
                            elapsed.as_secs_f64()
                        );
                        Ok(())
                    }
                    Err(error) => {
                        Err(format!("{error}\n(`cargo xtask services down` stops it; `up` then starts afresh)").into())
                    }
                }
            }
            Launch::Started { mut child, at } => {
                let pid = child.id();
                let waited =
                    self.wait_healthy(port, at, || Ok(child.try_wait()?.map(|status| format!("exited ({status})"))));
                match waited {
                    Ok(elapsed) => {
                        eprintln!(
                            "xtask: {} healthy at {url} after {:.1} s (pid {pid})",
                            self.title(),
                            elapsed.as_secs_f64()
                        );
                        Ok(())
                    }
                    Err(error) => {
                        if matches!(child.try_wait(), Ok(None)) {
                            stop(self, pid).map_err(|stop_error| format!("{error}\nand then: {stop_error}"))?;
                        }
                        // Reaps it (it is gone by now), so it does not stay a zombie.
                        child.wait().ok();
                        self.forget()?;
                        Err(error)
                    }
                }
            }
        }
    }

    /// Polls the health check every 250 ms until it passes (the time since `started`), `exited`
    /// reports the process gone (an error with the log's tail), or [`Self::timeout`] has passed
    /// since `started`.
    fn wait_healthy(
        self,
        port: u16,
        started: Instant,
        mut exited: impl FnMut() -> Result<Option<String>>,
    ) -> Result<Duration> {
        let mut next_note = PROGRESS_INTERVAL;
        loop {
            if self.healthy(port) {
                return Ok(started.elapsed());
            }
            if let Some(how) = exited()? {
                return Err(format!(
                    "{} {how} while starting; the last lines of {}:\n{}",
                    self.title(),
                    self.log_file().display(),
                    log_tail(&self.log_file())
                )
                .into());
            }
            let elapsed = started.elapsed();
            if elapsed >= self.timeout() {
                return Err(format!(
                    "{} is not healthy on {} after {} s; the last lines of {}:\n{}",
                    self.title(),
                    self.url(port),
                    self.timeout().as_secs(),
                    self.log_file().display(),
                    log_tail(&self.log_file())
                )
                .into());
            }
            if elapsed >= next_note {
                eprintln!("xtask: still waiting for {} ({} s)", self.title(), elapsed.as_secs());
                next_note += PROGRESS_INTERVAL;
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}

/// LocalStack with only KMS, on 127.0.0.1:`port`, its files under
/// `target/services/localstack-state/`.
fn localstack_command(python: &Path, port: u16) -> Result<Command> {
    let state = state_dir().join("localstack-state");
    std::fs::create_dir_all(&state).map_err(|error| format!("could not create {}: {error}", state.display()))?;
    let certificate = state.join("server.test.pem");
    if !certificate.is_file() {
        make_certificate(python, &certificate)?;
    }
    let launcher = workspace_root().join("xtask").join("services").join(LOCALSTACK_LAUNCHER);
    if !launcher.is_file() {
        return Err(format!("{} is missing from this checkout", launcher.display()).into());
    }
    let mut command = Command::new(python);
    command
        .arg(&launcher)
        .current_dir(&state)
        .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("SERVICES", "kms")
        .env("EAGER_SERVICE_LOADING", "1")
        // LocalStack takes any machine with /.dockerenv (CI runners, dev containers) for its own
        // Docker image and then writes to /var/lib/localstack, /usr/lib/localstack, /etc/localstack
        // and /tmp/localstack. Told it runs on the host, it keeps its files under FILESYSTEM_ROOT
        // (by default inside the virtualenv, which checkouts share, and it empties its tmp there on
        // every start): this checkout's own directory. (TMPDIR is left alone: LocalStack reads it
        // as a deprecated setting.)
        .env("OVERRIDE_IN_DOCKER", "0")
        .env("FILESYSTEM_ROOT", &state)
        // Its gateway also speaks TLS, with a certificate it downloads from localstack.cloud (two
        // 5-second timeouts when offline) or else generates with an API pyOpenSSL 26 removed, which
        // makes the start fail: it gets the one `make_certificate` made instead.
        .env("SKIP_SSL_CERT_DOWNLOAD", "1")
        .env("CUSTOM_SSL_CERT_PATH", &certificate)
        // Not needed for KMS, and reaching beyond 127.0.0.1:PORT: a DNS server on port 53 of every
        // interface, and analytics events sent to localstack.cloud.
        .env("DNS_ADDRESS", "0")
        .env("DISABLE_EVENTS", "1");
    Ok(command)
}

/// Writes a self-signed certificate for localhost and its private key, PEM, to `path`, with the
/// `cryptography` package of LocalStack's virtualenv.
fn make_certificate(python: &Path, path: &Path) -> Result {
    let script = r#"
import datetime, ipaddress, os, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
now = datetime.datetime.now(datetime.timezone.utc)
names = [x509.DNSName("localhost"), x509.DNSName("localhost.localstack.cloud"),
         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
certificate = (
    x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(days=1))
    .not_valid_after(now + datetime.timedelta(days=3650))
    .add_extension(x509.SubjectAlternativeName(names), critical=False)
    .sign(key, hashes.SHA256())
)
pem = key.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
) + certificate.public_bytes(serialization.Encoding.PEM)
with open(sys.argv[1] + ".partial", "wb") as file:
    file.write(pem)
os.replace(sys.argv[1] + ".partial", sys.argv[1])
"#;
    let made = Command::new(python)
        .args(["-c", script])
        .arg(path)
        .output()
        .map_err(|error| format!("could not run {}: {error}", python.display()))?;
    if made.status.success() {
        Ok(())
    } else {
        Err(format!(
            "could not make LocalStack's TLS certificate {} ({}): {}",
            path.display(),
            made.status,
            String::from_utf8_lossy(&made.stderr).trim()
        )
        .into())
    }
}

/// anvil on 127.0.0.1:`port` with the [`ANVIL_HARDFORK`] rules.
fn anvil_command(anvil: &Path, port: u16) -> Command {
    let mut command = Command::new(anvil);
    command.args(["--host", "127.0.0.1", "--port", &port.to_string(), "--silent", "--hardfork", ANVIL_HARDFORK]);
    command
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

/// The environment a command sets, as `NAME=value ` for echoing it.
fn shown_env(command: &Command) -> String {
    let mut text = String::new();
    for (name, value) in command.get_envs() {
        if let Some(value) = value {
            text.push_str(&name.to_string_lossy());
            text.push('=');
            text.push_str(&value.to_string_lossy());
            text.push(' ');
        }
    }
    text
}

// -------------------------------------------------------------------------------------------------
// Processes.

/// Whether `pid` is a live process (not a zombie) whose command line contains `signature`.
fn process_matches(pid: u32, signature: &str) -> bool {
    if pid <= 1 {
        return false;
    }
    if has_procfs() {
        let directory = Path::new("/proc").join(pid.to_string());
        let live = std::fs::read_to_string(directory.join("stat"))
            .ok()
            .and_then(|stat| stat_fields(&stat))
            .is_some_and(|(state, _)| state != 'Z');
        live && std::fs::read(directory.join("cmdline"))
            .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(signature))
    } else {
        output(Command::new("ps").args(["-o", "stat=", "-o", "args=", "-p", &pid.to_string()]))
            .is_some_and(|line| !line.trim_start().starts_with('Z') && line.contains(signature))
    }
}

/// Whether `/proc` is there (Linux).
fn has_procfs() -> bool {
    Path::new("/proc/self/stat").exists()
}

/// The state letter and the process group from a `/proc/PID/stat` line (the command name, in
/// parentheses, may itself contain spaces and parentheses).
fn stat_fields(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _parent = fields.next()?;
    let group = fields.next()?.parse().ok()?;
    Some((state, group))
}

/// Whether any live (not zombie) process is in process group `group`.
fn group_alive(group: u32) -> bool {
    if !has_procfs() {
        return signal_group(group, "0");
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return signal_group(group, "0");
    };
    entries.flatten().any(|entry| {
        entry.file_name().to_str().is_some_and(|name| name.bytes().all(|byte| byte.is_ascii_digit()))
            && std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|stat| stat_fields(&stat))
                .is_some_and(|(state, member_of)| member_of == group && state != 'Z')
    })
}

/// Sends `signal` (`TERM`, `KILL`, or `0` to test) to process group `group` with
/// `kill -SIGNAL -- -GROUP`; whether `kill` succeeded.
fn signal_group(group: u32, signal: &str) -> bool {
    if group <= 1 {
        return false; // -1 would be every process, -0 our own group.
    }
    let flag = format!("-{signal}");
    let target = format!("-{group}");
    let quiet = |command: &mut Command| command.stdout(Stdio::null()).stderr(Stdio::null()).status();
    match quiet(Command::new("kill").args([flag.as_str(), "--", target.as_str()])) {
        Ok(status) => status.success(),
        // No `kill` program (minimal images): the shell's builtin does the same.
        Err(_) => quiet(Command::new("sh").args(["-c", &format!("kill {flag} -- {target}")]))
            .is_ok_and(|status| status.success()),
    }
}

/// Stops the process group a service leads: SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL.
fn stop(service: Service, pid: u32) -> Result {
    eprintln!("xtask: stopping {} (process group {pid})", service.title());
    signal_group(pid, "TERM");
    if wait_group_gone(pid, STOP_GRACE) {
        return Ok(());
    }
    eprintln!("xtask: {} did not stop within {} s of SIGTERM: sending SIGKILL", service.title(), STOP_GRACE.as_secs());
    signal_group(pid, "KILL");
    if wait_group_gone(pid, Duration::from_secs(5)) {
        Ok(())
    } else {
        Err(format!("{} (process group {pid}) is still running after SIGKILL", service.title()).into())
    }
}

/// Waits up to `limit` for process group `group` to have no live process left; whether it has none.
fn wait_group_gone(group: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while group_alive(group) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
    true
}

/// Whether something accepts connections on 127.0.0.1:`port`.
fn port_in_use(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_millis(500)).is_ok()
}

/// The last [`LOG_TAIL_LINES`] lines of a log file, or why it cannot be read.
fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => tail_lines(&String::from_utf8_lossy(&bytes), LOG_TAIL_LINES),
        Err(error) => format!("(could not read {}: {error})", path.display()),
    }
}

/// The last `count` lines of `text`.
fn tail_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// Writes a file, saying which one on failure.
fn write_file(path: &Path, contents: &str) -> Result {
    std::fs::write(path, contents).map_err(|error| format!("could not write {}: {error}", path.display()).into())
}

/// Removes a file; a missing file is fine.
fn remove_if_present(path: &Path) -> Result {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(format!("could not remove {}: {error}", path.display()).into())
        }
        _ => Ok(()),
    }
}

// -------------------------------------------------------------------------------------------------
// Installing.

/// Everything [`up`] installs.
#[derive(Debug)]
struct Tools {
    /// The LocalStack virtualenv's interpreter.
    localstack_python: PathBuf,
    /// The eth-account virtualenv's interpreter.
    verifier_python: PathBuf,
    /// anvil, cast and ethers.
    node: NodeTools,
}

/// What the npm install provides.
#[derive(Debug)]
struct NodeTools {
    /// The `node_modules` directory.
    node_modules: PathBuf,
    /// The anvil binary.
    anvil: PathBuf,
    /// The cast binary.
    cast: PathBuf,
}

/// A Python interpreter that ran.
#[derive(Clone, Debug)]
struct Python {
    /// Its `sys.executable`: the real interpreter, not a pyenv shim.
    executable: PathBuf,
    /// Its `sys.version_info[:3]`.
    version: (u32, u32, u32),
}

impl Python {
    /// `major.minor.micro`.
    fn version_text(&self) -> String {
        let (major, minor, micro) = self.version;
        format!("{major}.{minor}.{micro}")
    }

    /// Whether it is at least `major.minor`.
    fn at_least(&self, (major, minor): (u32, u32)) -> bool {
        (self.version.0, self.version.1) >= (major, minor)
    }
}

/// Installs whatever is missing: the two virtualenvs and the npm packages, at the same time.
fn install() -> Result<Tools> {
    let cache =
        std::path::absolute(cache_dir()).map_err(|error| format!("could not resolve the cache directory: {error}"))?;
    let localstack_base = find_localstack_python()?;
    let verifier_base =
        find_python(VERIFIER_MIN_PYTHON, [OsStr::new("python3")]).unwrap_or_else(|| localstack_base.clone());

    thread::scope(|scope| {
        let node = scope.spawn(|| install_node_tools(&cache).map_err(|error| error.to_string()));
        let verifier = scope.spawn(|| {
            install_venv(
                "eth-account",
                &cache.join(format!("verifiers-{}", venv_key(VERIFIER_REQUIREMENTS, &verifier_base))),
                &verifier_base,
                VERIFIER_REQUIREMENTS,
                "import eth_account; print('eth-account', eth_account.__version__)",
            )
            .map_err(|error| error.to_string())
        });
        let localstack = install_venv(
            "LocalStack",
            &cache.join(format!("localstack-{}", venv_key(LOCALSTACK_REQUIREMENTS, &localstack_base))),
            &localstack_base,
            LOCALSTACK_REQUIREMENTS,
            "import importlib.metadata, localstack, boto3; \
             print('localstack-core', importlib.metadata.version('localstack-core'))",
        );
        let node = node.join().map_err(|_| "the npm install thread panicked")??;
        let verifier = verifier.join().map_err(|_| "the eth-account install thread panicked")??;
        Ok(Tools { localstack_python: localstack?, verifier_python: verifier, node })
    })
}

/// The Python >= 3.13 LocalStack runs on: `$ETHKMS_PYTHON` if set, else the first that runs of
/// pyenv's 3.13+ versions (oldest first: the pins were made on 3.13), `python3.13`, `python3.14`,
/// `python3`.
fn find_localstack_python() -> Result<Python> {
    if let Some(chosen) = std::env::var_os("ETHKMS_PYTHON").filter(|value| !value.is_empty()) {
        let shown = chosen.to_string_lossy();
        return match probe_python(&chosen) {
            Some(python) if python.at_least(LOCALSTACK_MIN_PYTHON) => Ok(python),
            Some(python) => Err(format!(
                "ETHKMS_PYTHON={shown} is Python {}, but LocalStack needs Python >= 3.13: point \
                 ETHKMS_PYTHON at a Python 3.13 interpreter",
                python.version_text()
            )
            .into()),
            None => Err(format!("ETHKMS_PYTHON={shown} does not run as a Python interpreter").into()),
        };
    }
    let mut candidates: Vec<PathBuf> = pyenv_pythons(LOCALSTACK_MIN_PYTHON);
    candidates.extend(["python3.13", "python3.14", "python3"].map(PathBuf::from));
    find_python(LOCALSTACK_MIN_PYTHON, candidates.iter().map(|candidate| candidate.as_os_str())).ok_or_else(|| {
        let tried: Vec<String> = candidates.iter().map(|candidate| candidate.display().to_string()).collect();
        format!(
            "LocalStack (localstack-core 2026.3.0) needs Python >= 3.13, and none was found \
             (tried {}). Install one (e.g. `pyenv install 3.13`, or your system's python3.13 with \
             its venv module) and point to it: \
             ETHKMS_PYTHON=/path/to/python3.13 cargo xtask services up",
            tried.join(", ")
        )
        .into()
    })
}

/// A cached virtualenv named `name-<hash>` of the default `python3` (>= 3.11) with `requirements` (a
/// pinned requirements file's text), made unless an earlier run completed it; returns its interpreter.
/// `check` is a Python script run after installing, whose output is shown.
///
/// # Errors
///
/// If there is no Python >= 3.11 or the install fails.
pub(crate) fn python_venv(name: &str, requirements: &str, check: &str) -> Result<PathBuf> {
    let cache =
        std::path::absolute(cache_dir()).map_err(|error| format!("could not resolve the cache directory: {error}"))?;
    let python = find_python(VERIFIER_MIN_PYTHON, [OsStr::new("python3")])
        .ok_or_else(|| format!("{name} needs Python >= 3.11 as `python3`"))?;
    install_venv(name, &cache.join(format!("{name}-{}", venv_key(requirements, &python))), &python, requirements, check)
}

/// The first of `candidates` that runs and is at least `minimum`.
fn find_python<'a>(minimum: (u32, u32), candidates: impl IntoIterator<Item = &'a OsStr>) -> Option<Python> {
    candidates.into_iter().filter_map(probe_python).find(|python| python.at_least(minimum))
}

/// Runs `program` as Python to learn its version and real path (pyenv's shims fail unless their
/// version is selected, so being on `PATH` proves nothing).
fn probe_python(program: &OsStr) -> Option<Python> {
    let script = "import sys; print('%d.%d.%d' % sys.version_info[:3]); print(sys.executable)";
    let text = output(Command::new(program).args(["-c", script]).stdin(Stdio::null()))?;
    let mut lines = text.lines();
    let version = parse_version(lines.next()?)?;
    let executable =
        lines.next().map(str::trim).filter(|path| !path.is_empty()).map_or_else(|| program.into(), PathBuf::from);
    Some(Python { executable, version })
}

/// The interpreters of pyenv's versions that are at least `minimum`, oldest first (none without
/// pyenv).
fn pyenv_pythons(minimum: (u32, u32)) -> Vec<PathBuf> {
    let Some(listing) = output(Command::new("pyenv").args(["versions", "--bare"])) else {
        return Vec::new();
    };
    let mut versions: Vec<((u32, u32, u32), &str)> = listing
        .lines()
        .map(str::trim)
        .filter(|name| !name.contains('/')) // virtualenvs made with pyenv-virtualenv
        .filter_map(|name| Some((parse_version(name)?, name)))
        .filter(|((major, minor, _), _)| (*major, *minor) >= minimum)
        .collect();
    versions.sort_unstable();
    versions
        .into_iter()
        .filter_map(|(_, name)| output(Command::new("pyenv").args(["prefix", name])))
        .map(|prefix| Path::new(prefix.trim()).join("bin").join("python"))
        .collect()
}

/// `major.minor[.micro]` at the start of each dot-separated part, as in `3.13.0`, `3.14.0rc1` or
/// `3.13-dev`.
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    fn leading_number(part: &str) -> Option<u32> {
        let digits = part.find(|character: char| !character.is_ascii_digit()).unwrap_or(part.len());
        part[..digits].parse().ok()
    }
    let mut parts = text.trim().split('.');
    let major = leading_number(parts.next()?)?;
    let minor = leading_number(parts.next()?)?;
    let micro = parts.next().and_then(leading_number).unwrap_or(0);
    Some((major, minor, micro))
}

/// The cache key of a virtualenv: the requirements, the interpreter's version and its path (a
/// virtualenv is tied to the interpreter it was made with).
fn venv_key(requirements: &str, python: &Python) -> String {
    let key = format!("{requirements}\0{}\0{}", python.version_text(), python.executable.display());
    short_hash(key.as_bytes())
}

/// Makes `directory` a virtualenv of `python` with `requirements`, unless an earlier run completed
/// it (it then holds a marker file); returns its interpreter. `check` is a Python script run after
/// installing, whose output is shown.
fn install_venv(what: &str, directory: &Path, python: &Python, requirements: &str, check: &str) -> Result<PathBuf> {
    let interpreter = directory.join("bin").join("python");
    let marker = directory.join(".ethkms-complete");
    if marker.is_file() && interpreter.exists() {
        return Ok(interpreter);
    }
    if directory.exists() {
        eprintln!("xtask: removing the incomplete {what} virtualenv {}", directory.display());
        std::fs::remove_dir_all(directory)
            .map_err(|error| format!("could not remove {}: {error}", directory.display()))?;
    }
    if let Some(parent) = directory.parent() {
        std::fs::create_dir_all(parent).map_err(|error| format!("could not create {}: {error}", parent.display()))?;
    }
    eprintln!(
        "xtask: installing {what} into {} with Python {} ({}); the first time takes a while",
        directory.display(),
        python.version_text(),
        python.executable.display()
    );
    let started = Instant::now();
    command::run(Command::new(&python.executable).arg("-m").arg("venv").arg(directory)).map_err(|error| {
        format!(
            "{error}: could not create a virtualenv (on Debian and Ubuntu the venv module is the \
             python3.X-venv package)"
        )
    })?;
    let requirements_path = directory.join("requirements.txt");
    write_file(&requirements_path, requirements)?;
    let mut pip = Command::new(&interpreter);
    pip.args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q", "-r"]).arg(&requirements_path);
    run_with_progress(what, &mut pip)
        .map_err(|error| format!("{error}: installing {what} from PyPI failed (is PyPI reachable?)"))?;
    let checked = Command::new(&interpreter)
        .args(["-c", check])
        .output()
        .map_err(|error| format!("could not run {}: {error}", interpreter.display()))?;
    if !checked.status.success() {
        return Err(format!(
            "{what} installed but does not import ({}): {}",
            checked.status,
            String::from_utf8_lossy(&checked.stderr).trim()
        )
        .into());
    }
    let installed = String::from_utf8_lossy(&checked.stdout).trim().to_owned();
    write_file(&marker, &format!("{installed}\n"))?;
    eprintln!("xtask: installed {installed} in {:.1} s", started.elapsed().as_secs_f64());
    Ok(interpreter)
}

/// Installs [`NPM_PACKAGES`] into `cache/node-<hash>/` unless anvil, cast and ethers are there.
fn install_node_tools(cache: &Path) -> Result<NodeTools> {
    let directory = cache.join(format!("node-{}", short_hash(NPM_PACKAGES.join("\n").as_bytes())));
    let node_modules = directory.join("node_modules");
    let complete = || {
        ["anvil", "cast"].iter().all(|tool| node_modules.join(".bin").join(tool).exists())
            && node_modules.join("ethers").join("package.json").is_file()
    };
    if !complete() {
        std::fs::create_dir_all(&directory)
            .map_err(|error| format!("could not create {}: {error}", directory.display()))?;
        let package_json = directory.join("package.json");
        if !package_json.exists() {
            write_file(&package_json, "{\"private\": true}\n")?;
        }
        eprintln!("xtask: installing {} into {}", NPM_PACKAGES.join(" "), directory.display());
        let started = Instant::now();
        // `--loglevel=error` rather than `--silent`: quiet, but a failure still says why.
        let mut npm = Command::new("npm");
        npm.args(["install", "--no-audit", "--no-fund", "--loglevel=error"]).args(NPM_PACKAGES).current_dir(&directory);
        run_with_progress("the npm packages", &mut npm).map_err(|error| {
            format!(
                "{error}: anvil, cast and ethers come from the npm registry; this needs Node.js 18 \
                 or newer with npm"
            )
        })?;
        if !complete() {
            return Err(format!(
                "npm install finished but anvil, cast or ethers is missing from {}",
                node_modules.display()
            )
            .into());
        }
        eprintln!("xtask: installed the npm packages in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(NodeTools {
        anvil: foundry_binary(&node_modules, "anvil"),
        cast: foundry_binary(&node_modules, "cast"),
        node_modules,
    })
}

/// The native binary of a foundry npm package (e.g. `@foundry-rs/cast-linux-amd64/bin/cast`): what
/// the `.bin/` wrapper script would start, without node in between (so the pid is the tool's own).
/// The wrapper if the platform's package is not where expected.
fn foundry_binary(node_modules: &Path, tool: &str) -> PathBuf {
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        "windows" => "win32",
        other => other,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let native = node_modules.join("@foundry-rs").join(format!("{tool}-{os}-{arch}")).join("bin").join(tool);
    if native.is_file() { native } else { node_modules.join(".bin").join(tool) }
}

/// Like [`command::run`], but says every [`PROGRESS_INTERVAL`] that it is still installing `what`.
fn run_with_progress(what: &str, command: &mut Command) -> Result {
    let shown = display(command);
    eprintln!("$ {shown}");
    let started = Instant::now();
    let mut child =
        command.stdin(Stdio::null()).spawn().map_err(|error| format!("could not start `{shown}`: {error}"))?;
    let mut next_note = PROGRESS_INTERVAL;
    loop {
        if let Some(status) = child.try_wait().map_err(|error| format!("could not wait for `{shown}`: {error}"))? {
            return if status.success() { Ok(()) } else { Err(format!("`{shown}` failed ({status})").into()) };
        }
        if started.elapsed() >= next_note {
            eprintln!("xtask: still installing {what} ({} s so far)", started.elapsed().as_secs());
            next_note += PROGRESS_INTERVAL;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// FNV-1a (64 bits) of `bytes`: a hash that is the same on every machine and Rust version, for
/// cache keys.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The first 12 hex digits of [`fnv1a`], for directory names.
fn short_hash(bytes: &[u8]) -> String {
    let mut text = format!("{:016x}", fnv1a(bytes));
    text.truncate(12);
    text
}

// -------------------------------------------------------------------------------------------------
// HTTP, just enough for the health checks.

/// An HTTP response: status code and body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HttpResponse {
    /// The status code.
    pub(crate) status: u16,
    /// The body, decoded from chunked transfer encoding if it was, as text.
    pub(crate) body: String,
}

/// Sends one HTTP/1.1 request (with a JSON body if `body` is given) to 127.0.0.1:`port` and reads
/// the response, with short timeouts.
pub(crate) fn http_request(port: u16, method: &str, path: &str, body: Option<&str>) -> Result<HttpResponse> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n\
         Connection: close\r\n"
    );
    if let Some(body) = body {
        write!(request, "Content-Type: application/json\r\nContent-Length: {}\r\n", body.len())?;
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or(""));
    stream.write_all(request.as_bytes())?;

    let mut received = Vec::new();
    let mut buffer = [0_u8; 8192];
    loop {
        let read = match stream.read(&mut buffer) {
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error.into()),
        };
        if read == 0 {
            return parse_http_response(&received, true)?.ok_or_else(|| "the connection closed mid-response".into());
        }
        received.extend_from_slice(&buffer[..read]);
        if received.len() > MAX_RESPONSE_BYTES {
            return Err("the response is too large".into());
        }
        if let Some(response) = parse_http_response(&received, false)? {
            return Ok(response);
        }
    }
}

/// Parses an HTTP/1.x response: `None` while it is incomplete (a body delimited by the connection
/// closing is complete only `at_end`), an error if it is malformed.
fn parse_http_response(bytes: &[u8], at_end: bool) -> Result<Option<HttpResponse>, String> {
    let Some(head_end) = find(bytes, b"\r\n\r\n") else {
        return if at_end { Err("the response ended inside its headers".to_owned()) } else { Ok(None) };
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    let rest = &bytes[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.split_whitespace();
    let status = match (words.next(), words.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/1.") => {
            code.parse::<u16>().map_err(|_| format!("not an HTTP status line: {status_line:?}"))?
        }
        _ => return Err(format!("not an HTTP status line: {status_line:?}")),
    };
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.trim().eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| format!("bad Content-Length {value:?}"))?);
        } else if name.trim().eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(length) = length {
        rest.get(..length).map(<[u8]>::to_vec)
    } else {
        at_end.then(|| rest.to_vec())
    };
    match body {
        Some(body) => Ok(Some(HttpResponse { status, body: String::from_utf8_lossy(&body).into_owned() })),
        None if at_end => Err("the response ended inside its body".to_owned()),
        None => Ok(None),
    }
}

/// Decodes a chunked body: `None` while the last (empty) chunk has not arrived.
fn decode_chunked(mut data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(data, b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&data[..line_end]);
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        let Some(chunk) = data.get(..size + 2) else {
            return Ok(None);
        };
        if !chunk.ends_with(b"\r\n") {
            return Err("a chunk does not end with CRLF".to_owned());
        }
        body.extend_from_slice(&chunk[..size]);
        data = &data[size + 2..];
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// Whether a `/_localstack/health` body shows KMS `running` or `available`.
fn localstack_kms_ready(body: &str) -> bool {
    serde_json::from_str::<Value>(body).ok().is_some_and(|health| {
        matches!(health.pointer("/services/kms").and_then(Value::as_str), Some("running" | "available"))
    })
}

/// Whether a JSON-RPC `eth_chainId` response shows anvil's chain id.
fn anvil_ready(body: &str) -> bool {
    serde_json::from_str::<Value>(body)
        .ok()
        .is_some_and(|response| response.get("result").and_then(Value::as_str) == Some(ANVIL_CHAIN_ID))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(short_hash(b"foobar"), "85944171f739");
    }

    #[test]
    fn venv_key_follows_requirements_and_interpreter() {
        let python = Python { executable: "/usr/bin/python3.13".into(), version: (3, 13, 0) };
        let key = venv_key("a==1\n", &python);
        assert_eq!(key, venv_key("a==1\n", &python));
        assert_ne!(key, venv_key("a==2\n", &python));
        assert_ne!(key, venv_key("a==1\n", &Python { version: (3, 13, 1), ..python.clone() }));
        assert_ne!(key, venv_key("a==1\n", &Python { executable: "/opt/python3.13".into(), ..python }));
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("3.13.0"), Some((3, 13, 0)));
        assert_eq!(parse_version("3.14.0rc1\n"), Some((3, 14, 0)));
        assert_eq!(parse_version("3.13-dev"), Some((3, 13, 0)));
        assert_eq!(parse_version("3.13.0t"), Some((3, 13, 0)));
        assert_eq!(parse_version("system"), None);
        assert_eq!(parse_version("pypy3.10-7.3.17"), None);
        assert_eq!(parse_version("3"), None);
    }

    #[test]
    fn content_length_responses_parse() {
        let response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_http_response(response, false), Ok(Some(HttpResponse { status: 200, body: "{}".to_owned() })));
        assert_eq!(parse_http_response(&response[..response.len() - 1], false), Ok(None));
        assert!(parse_http_response(&response[..response.len() - 1], true).is_err());
        assert_eq!(parse_http_response(b"HTTP/1.1 200 OK\r\nContent-", false), Ok(None));
    }

    #[test]
    fn chunked_responses_parse() {
        let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                         4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_http_response(response, false),
            Ok(Some(HttpResponse { status: 200, body: "{\"a\":1}".to_owned() }))
        );
        assert_eq!(parse_http_response(&response[..response.len() - 5], false), Ok(None));
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false).is_err());
    }

    #[test]
    fn close_delimited_responses_need_the_end() {
        let response = b"HTTP/1.0 503 Service Unavailable\r\n\r\nbusy";
        assert_eq!(parse_http_response(response, false), Ok(None));
        assert_eq!(
            parse_http_response(response, true),
            Ok(Some(HttpResponse { status: 503, body: "busy".to_owned() }))
        );
    }

    #[test]
    fn garbage_is_not_http() {
        assert!(parse_http_response(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
        assert!(parse_http_response(b"HTTP/1.1 abc OK\r\n\r\n", false).is_err());
        assert!(parse_http_response(b"", true).is_err());
    }

    #[test]
    fn localstack_health_is_read() {
        let health =
            |kms: &str| format!(r#"{{"services": {{"kms": "{kms}", "s3": "disabled"}}, "edition": "community"}}"#);
        assert!(localstack_kms_ready(&health("running")));
        assert!(localstack_kms_ready(&health("available")));
        assert!(!localstack_kms_ready(&health("initializing")));
        assert!(!localstack_kms_ready(&health("error")));
        assert!(!localstack_kms_ready(r#"{"services": {"s3": "running"}}"#));
        assert!(!localstack_kms_ready("not json"));
    }

    #[test]
    fn anvil_chain_id_is_read() {
        assert!(anvil_ready(r#"{"jsonrpc":"2.0","id":1,"result":"0x7a69"}"#));
        assert!(!anvil_ready(r#"{"jsonrpc":"2.0","id":1,"result":"0x1"}"#));
        assert!(!anvil_ready(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}"#));
        assert!(!anvil_ready(""));
    }

    #[test]
    fn stat_lines_parse() {
        assert_eq!(stat_fields("1234 (anvil) S 1 1234 1234 0 -1"), Some(('S', 1234)));
        assert_eq!(stat_fields("77 (a (b) c) Z 5 70 70 0"), Some(('Z', 70)));
        assert_eq!(stat_fields("garbage"), None);
    }

    #[test]
    fn env_file_values_are_quoted() {
        assert_eq!(shell_quote("http://127.0.0.1:4566"), "'http://127.0.0.1:4566'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn log_tails_keep_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
        assert_eq!(tail_lines("", 5), "");
    }

    #[test]
    fn env_pairs_name_every_variable() {
        let env = ServiceEnv {
            kms_endpoint: "http://127.0.0.1:4566".to_owned(),
            rpc_url: "http://127.0.0.1:8545".to_owned(),
            cast: "/c/cast".into(),
            anvil: "/c/anvil".into(),
            node_modules: "/c/node_modules".into(),
            python: "/c/python".into(),
        };
        let names: Vec<String> = env.pairs().into_iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                "ETHKMS_TEST_KMS_ENDPOINT",
                "ETHKMS_TEST_RPC_URL",
                "ETHKMS_TEST_CAST",
                "ETHKMS_TEST_ANVIL",
                "ETHKMS_TEST_NODE_MODULES",
                "ETHKMS_TEST_PYTHON",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_REGION",
                "AWS_DEFAULT_REGION",
                "AWS_EC2_METADATA_DISABLED",
            ]
        );
        let mut command = Command::new("true");
        env.apply(&mut command);
        let region = Some(OsStr::new("us-east-1"));
        assert!(command.get_envs().any(|(name, value)| name == "AWS_REGION" && value == region));
    }
}
