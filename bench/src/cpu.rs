//! Where the CPU goes during a benchmark round: the processor time (user + system, all threads) each
//! process of the run used, read from `/proc/PID/stat` before and after (Linux; elsewhere nothing is
//! shown), children included (PostgreSQL's connections are processes of their own). `ETHKMS_BENCH_PIDS`
//! (`name=pid,…`, set by `cargo xtask bench`) names the services.

/// Clock ticks per second of `/proc/PID/stat` (`USER_HZ`): 100 on every Linux that matters.
const TICKS_PER_SECOND: f64 = 100.0;

/// The processes watched, by name, and whether their children count with them (the services').
pub(crate) struct Processes(Vec<(String, u32, bool)>);

impl Processes {
    /// The services named in `ETHKMS_BENCH_PIDS`, the servers and this process.
    pub(crate) fn new(servers: &[u32]) -> Self {
        let mut named: Vec<(String, u32, bool)> = services().into_iter().map(|(name, pid)| (name, pid, true)).collect();
        for (index, server) in servers.iter().enumerate() {
            let name = if servers.len() == 1 { "ethkms-server".to_owned() } else { format!("ethkms-server r{index}") };
            named.push((name, *server, false));
        }
        named.push(("load generator".into(), std::process::id(), false));
        Self(named)
    }

    /// The names, in the order of [`Self::ticks`].
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(name, _, _)| name.as_str())
    }

    /// Each process's ticks so far, its children's included (PostgreSQL serves each connection from a
    /// process of its own; `None` where it cannot be read).
    pub(crate) fn ticks(&self) -> Vec<Option<u64>> {
        let children = children();
        self.0
            .iter()
            .map(|(_, pid, with_children)| {
                let own = ticks(*pid)?;
                let theirs: u64 = if *with_children {
                    children.get(pid).into_iter().flatten().filter_map(|child| ticks(*child)).sum()
                } else {
                    0
                };
                Some(own + theirs)
            })
            .collect()
    }
}

/// The services named in `ETHKMS_BENCH_PIDS` (`name=pid,…`).
pub(crate) fn services() -> Vec<(String, u32)> {
    std::env::var("ETHKMS_BENCH_PIDS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|entry| {
            let (name, pid) = entry.split_once('=')?;
            Some((name.to_owned(), pid.parse().ok()?))
        })
        .collect()
}

/// Milliseconds of CPU per item between two [`Processes::ticks`] readings.
pub(crate) fn per_item_ms(before: &[Option<u64>], after: &[Option<u64>], items: u64) -> Vec<Option<f64>> {
    before
        .iter()
        .zip(after)
        .map(|(before, after)| {
            let used = after.zip(*before).map(|(after, before)| after.saturating_sub(before))?;
            Some(used as f64 / TICKS_PER_SECOND * 1000.0 / items as f64)
        })
        .collect()
}

/// Every process's children, by parent pid.
pub(crate) fn children() -> std::collections::HashMap<u32, Vec<u32>> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return children };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let parent = stat
            .rfind(')')
            .and_then(|end| stat.get(end + 2..))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|parent| parent.parse::<u32>().ok());
        if let Some(parent) = parent {
            children.entry(parent).or_default().push(pid);
        }
    }
    children
}

/// utime + stime of `pid`.
fn ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: the fields after it follow its closing parenthesis.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}
