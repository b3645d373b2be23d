//! Where the withdrawal benchmark's processes run, set before each round with util-linux `taskset` on
//! every thread of every process (children included):
//!
//! - **shared**: every process on every CPU this benchmark may use — LocalStack's KMS competes for the
//!   same cores as the service, anvil and the load generator, which is how the services happen to sit on
//!   one machine here;
//! - **KMS apart**: LocalStack alone on the first of those CPUs, everything else on the others. In
//!   production the KMS runs on the provider's machines and takes none of the service's CPU; LocalStack's
//!   Python interpreter uses about one core (its lock), so one core of its own is what it can use.
//!
//! Both are measured in the same run, round by round, each against the bare `Sign` loop in the same
//! placement.

use std::process::Command;

/// Where the processes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Every process on every CPU.
    Shared,
    /// LocalStack on a CPU of its own, everything else on the others.
    KmsApart,
}

impl Placement {
    /// `shared` or `apart`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "shared" => Some(Self::Shared),
            "apart" => Some(Self::KmsApart),
            _ => None,
        }
    }

    /// How the tables name it.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Shared => "all on shared CPUs",
            Self::KmsApart => "KMS on a CPU of its own",
        }
    }

    /// Moves the processes: LocalStack (`localstack` in `ETHKMS_BENCH_PIDS`), the other services, `servers`
    /// and this process, each with its threads and children.
    ///
    /// # Errors
    /// Fewer than two CPUs for KMS apart, no LocalStack pid, or `taskset` failing on one of the named
    /// processes (children that ended meanwhile are skipped).
    pub(crate) fn apply(self, cpus: &[u32], servers: &[u32]) -> Result<(), String> {
        let all = list(cpus);
        let services = crate::cpu::services();
        let localstack = services
            .iter()
            .find(|(name, _)| name == "localstack")
            .map(|(_, pid)| *pid)
            .ok_or("ETHKMS_BENCH_PIDS names no localstack process (run the benchmark through cargo xtask bench)")?;
        let (kms, others) = match self {
            Self::Shared => (all.clone(), all),
            Self::KmsApart => match cpus {
                [first, rest @ ..] if !rest.is_empty() => (first.to_string(), list(rest)),
                _ => return Err(format!("KMS apart needs two CPUs; this process may use {all}")),
            },
        };
        let children = crate::cpu::children();
        set(localstack, &kms, &children)?;
        let others_pids = services
            .iter()
            .filter(|(name, _)| name != "localstack")
            .map(|(_, pid)| *pid)
            .chain(servers.iter().copied())
            .chain([std::process::id()]);
        for pid in others_pids {
            set(pid, &others, &children)?;
        }
        Ok(())
    }
}

/// The CPUs this process may use now (`Cpus_allowed_list` of `/proc/self/status`), read before any
/// placement narrows them.
///
/// # Errors
/// If the list cannot be read or parsed.
pub(crate) fn allowed_cpus() -> Result<Vec<u32>, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|error| format!("/proc/self/status: {error}"))?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .ok_or("/proc/self/status has no Cpus_allowed_list")?;
    parse_list(line.trim()).ok_or_else(|| format!("Cpus_allowed_list `{}` is not a CPU list", line.trim()))
}

/// `0-3,6` → `[0, 1, 2, 3, 6]`.
fn parse_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((low, high)) => cpus.extend(low.parse::<u32>().ok()?..=high.parse::<u32>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// `[0, 1, 2]` → `0,1,2`.
fn list(cpus: &[u32]) -> String {
    cpus.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// Puts every thread of `pid` and of its descendants on `cpus`.
fn set(pid: u32, cpus: &str, children: &std::collections::HashMap<u32, Vec<u32>>) -> Result<(), String> {
    taskset(pid, cpus).map_err(|error| format!("taskset -a -p -c {cpus} {pid}: {error}"))?;
    let mut pending: Vec<u32> = children.get(&pid).cloned().unwrap_or_default();
    while let Some(child) = pending.pop() {
        // A child may have ended since the process table was read (PostgreSQL's connections come and go).
        let _ = taskset(child, cpus);
        pending.extend(children.get(&child).into_iter().flatten());
    }
    Ok(())
}

fn taskset(pid: u32, cpus: &str) -> Result<(), String> {
    let output = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .map_err(|error| format!("running taskset (util-linux): {error}"))?;
    if output.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&output.stderr).trim().to_owned()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_print() {
        assert_eq!(parse_list("0-1"), Some(vec![0, 1]));
        assert_eq!(parse_list("0-2,5"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_list("3"), Some(vec![3]));
        assert_eq!(parse_list(""), None);
        assert_eq!(parse_list("a-b"), None);
        assert_eq!(list(&[0, 1, 5]), "0,1,5");
    }

    #[test]
    fn placements_parse_and_name() {
        assert_eq!(Placement::parse("shared"), Some(Placement::Shared));
        assert_eq!(Placement::parse("apart"), Some(Placement::KmsApart));
        assert_eq!(Placement::parse("pinned"), None);
        assert_ne!(Placement::Shared.name(), Placement::KmsApart.name());
    }
}
