//! A service's process: starting it in a process group of its own, waiting until it is healthy, and
//! stopping the whole group (SIGTERM, then SIGKILL); checking that a recorded pid is still the service.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::Service;
use crate::Result;
use crate::command::{display, output};

/// How long a stopped service gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How often a long install or start-up says it is still going.
pub(super) const PROGRESS_INTERVAL: Duration = Duration::from_secs(15);

/// How many lines of a service's log an error shows.
const LOG_TAIL_LINES: usize = 40;

/// A service that [`Service::launch`] found running or started, to be waited for by
/// [`Service::finish`].
#[derive(Debug)]
pub(super) enum Launch {
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

impl Launch {
    /// Whether the service was started now (rather than found running).
    pub(super) fn started(&self) -> bool {
        matches!(self, Self::Started { .. })
    }
}

impl Service {
    pub(super) fn launch(self, port: u16, command: impl FnOnce() -> Result<Command>) -> Result<Launch> {
        match self.recorded() {
            Some(recorded) if process_matches(recorded.pid, self.signature) => {
                if recorded.port == port {
                    return Ok(Launch::Running { pid: recorded.pid });
                }
                eprintln!(
                    "xtask: {} is running on port {}, but {} asks for {port}: restarting it",
                    self.title, recorded.port, self.port_variable
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
                self.title, self.port_variable
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
    pub(super) fn finish(self, port: u16, launch: Launch) -> Result {
        let url = self.url(port);
        match launch {
            Launch::Running { pid } => {
                if (self.healthy)(port) {
                    eprintln!("xtask: {} already running at {url} (pid {pid}): reusing it", self.title);
                    return Ok(());
                }
                eprintln!("xtask: {} is running (pid {pid}) but not healthy yet: waiting for it", self.title);
                let signature = self.signature;
                let waited = self.wait_healthy(port, Instant::now(), || {
                    Ok((!process_matches(pid, signature)).then(|| "stopped".to_owned()))
                });
                match waited {
                    Ok(elapsed) => {
                        eprintln!(
                            "xtask: {} healthy at {url} after {:.1} s more (pid {pid})",
                            self.title,
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
                            self.title,
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
    /// reports the process gone (an error with the log's tail), or [`Self::timeout`](Service::timeout) has passed
    /// since `started`.
    fn wait_healthy(
        self,
        port: u16,
        started: Instant,
        mut exited: impl FnMut() -> Result<Option<String>>,
    ) -> Result<Duration> {
        let mut next_note = PROGRESS_INTERVAL;
        loop {
            if (self.healthy)(port) {
                return Ok(started.elapsed());
            }
            if let Some(how) = exited()? {
                return Err(format!(
                    "{} {how} while starting; the last lines of {}:\n{}",
                    self.title,
                    self.log_file().display(),
                    log_tail(&self.log_file())
                )
                .into());
            }
            let elapsed = started.elapsed();
            if elapsed >= self.timeout {
                return Err(format!(
                    "{} is not healthy on {} after {} s; the last lines of {}:\n{}",
                    self.title,
                    self.url(port),
                    self.timeout.as_secs(),
                    self.log_file().display(),
                    log_tail(&self.log_file())
                )
                .into());
            }
            if elapsed >= next_note {
                eprintln!("xtask: still waiting for {} ({} s)", self.title, elapsed.as_secs());
                next_note += PROGRESS_INTERVAL;
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
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

/// Whether `pid` is a live process (not a zombie) whose command line contains `signature`.
pub(super) fn process_matches(pid: u32, signature: &str) -> bool {
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
pub(super) fn stop(service: Service, pid: u32) -> Result {
    eprintln!("xtask: stopping {} (process group {pid})", service.title);
    signal_group(pid, "TERM");
    if wait_group_gone(pid, STOP_GRACE) {
        return Ok(());
    }
    eprintln!("xtask: {} did not stop within {} s of SIGTERM: sending SIGKILL", service.title, STOP_GRACE.as_secs());
    signal_group(pid, "KILL");
    if wait_group_gone(pid, Duration::from_secs(5)) {
        Ok(())
    } else {
        Err(format!("{} (process group {pid}) is still running after SIGKILL", service.title).into())
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
pub(super) fn write_file(path: &Path, contents: &str) -> Result {
    std::fs::write(path, contents).map_err(|error| format!("could not write {}: {error}", path.display()).into())
}

/// Removes a file; a missing file is fine.
pub(super) fn remove_if_present(path: &Path) -> Result {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(format!("could not remove {}: {error}", path.display()).into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse() {
        assert_eq!(stat_fields("1234 (anvil) S 1 1234 1234 0 -1"), Some(('S', 1234)));
        assert_eq!(stat_fields("77 (a (b) c) Z 5 70 70 0"), Some(('Z', 70)));
        assert_eq!(stat_fields("garbage"), None);
    }

    #[test]
    fn log_tails_keep_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
        assert_eq!(tail_lines("", 5), "");
    }
}
