//! `cargo xtask`: every piece of automation in the ethkms workspace, in Rust, with few dependencies.
//!
//! ```text
//! cargo xtask ci                      the whole check CI runs (the README's test command)
//! cargo xtask nostd                   prove ethkms-core builds without std
//! cargo xtask fuzz [--seconds N] [TARGET...]   run the fuzz targets
//! cargo xtask fuzz-seeds              rewrite the committed seed corpus from the test vectors
//! cargo xtask bench [core|kms|pkcs11|eth|withdrawals|deposits|cli]   run the benchmarks (all but core start the services)
//! cargo xtask services up|down|status start or stop LocalStack KMS, anvil and PostgreSQL on 127.0.0.1; SoftHSM2 tokens
//! cargo xtask tools                   install the helper tools (cargo-deny, cargo-fuzz) if missing
//! cargo xtask demo [--keep]           the whole job end to end on LocalStack and anvil, through the CLI
//! cargo xtask soak [--seeds N] [--first S] [--withdrawals N] [--replica-seeds N]   the long fault campaigns
//! cargo xtask schemathesis [--max-examples N] [--seed S]   the server's REST API against its OpenAPI document
//! cargo xtask contracts [--check]     compile the deposit contracts with the pinned solc (--check: as committed)
//! cargo xtask help                    the tasks, one line each (also `--help`, `-h`)
//! ```

mod bench;
mod ci;
mod command;
mod contracts;
mod demo;
mod fuzz;
mod nostd;
mod schemathesis;
mod server_config;
mod services;
mod soak;
#[cfg(test)]
mod tidy;
mod tools;

use std::process::ExitCode;

/// Errors are reported to the user as text: every failure says what failed and what to do.
pub(crate) type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// Every task: its name, its arguments and what it does, one line each in `cargo xtask help`.
const TASKS: &[(&str, &str, &str)] = &[
    ("ci", "", "the whole check CI runs (the README's test command)"),
    ("nostd", "", "prove ethkms-core builds without std"),
    ("fuzz", "[--seconds N] [TARGET...]", "run the fuzz targets"),
    ("fuzz-seeds", "", "rewrite the committed seed corpus from the test vectors"),
    (
        "bench",
        "[core|kms|pkcs11|eth|withdrawals|deposits|cli] [OPTIONS]",
        "run the benchmarks (all but core start the services)",
    ),
    (
        "services",
        "up|down|status",
        "start or stop LocalStack KMS, anvil and PostgreSQL on 127.0.0.1; create the SoftHSM2 test tokens",
    ),
    ("tools", "", "install the helper tools (cargo-deny, cargo-fuzz) if missing"),
    ("demo", "[--keep]", "the whole job end to end on LocalStack and anvil, through the CLI"),
    ("soak", "[--seeds N] [--first S] [--withdrawals N] [--replica-seeds N]", "the long exactly-once fault campaigns"),
    ("schemathesis", "[--max-examples N] [--seed S]", "the server's REST API against its OpenAPI document"),
    ("contracts", "[--check]", "compile the deposit contracts with the pinned solc (--check: as committed)"),
    ("help", "", "this list (also --help and -h)"),
];

/// `cargo xtask help`: the usage line and one line per task.
fn help() -> String {
    let calls: Vec<String> = TASKS
        .iter()
        .map(
            |(name, arguments, _)| {
                if arguments.is_empty() { (*name).to_owned() } else { format!("{name} {arguments}") }
            },
        )
        .collect();
    let width = calls.iter().map(String::len).max().unwrap_or(0);
    let mut text = String::from("usage: cargo xtask <TASK> [ARGUMENTS]\n\ntasks:\n");
    for (call, (_, _, summary)) in calls.iter().zip(TASKS) {
        text.push_str(&format!("  {call:<width$}  {summary}\n"));
    }
    text
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request<'a> {
    /// The list of tasks, on standard output.
    Help,
    /// No task, or one that does not exist: the list and an error, exit status 2.
    Unknown(Option<&'a str>),
    /// A task with its arguments.
    Task(&'a str, Vec<&'a str>),
}

fn parse(arguments: &[String]) -> Request<'_> {
    match arguments.split_first() {
        None => Request::Unknown(None),
        Some((task, _)) if matches!(task.as_str(), "help" | "--help" | "-h") => Request::Help,
        Some((task, rest)) if TASKS.iter().any(|(name, _, _)| name == task) => {
            Request::Task(task, rest.iter().map(String::as_str).collect())
        }
        Some((task, _)) => Request::Unknown(Some(task)),
    }
}

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    match parse(&arguments) {
        Request::Help => {
            print!("{}", help());
            ExitCode::SUCCESS
        }
        Request::Unknown(task) => {
            eprint!("{}", help());
            match task {
                Some(task) => eprintln!("\nxtask: error: no task `{task}`"),
                None => eprintln!("\nxtask: error: name a task"),
            }
            ExitCode::from(2)
        }
        Request::Task(task, rest) => match run(task, &rest) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("xtask: error: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(task: &str, rest: &[&str]) -> Result {
    match (task, rest) {
        ("ci", []) => ci::run_all(),
        ("nostd", []) => nostd::run(),
        ("fuzz", options) => fuzz::run(options),
        ("fuzz-seeds", []) => fuzz::write_seeds(),
        ("bench", options) => bench::run(options),
        ("services", [action]) => services::run(action),
        ("tools", []) => tools::install_all(),
        ("demo", options) => demo::run(options),
        ("soak", options) => soak::run_soak(options),
        ("schemathesis", options) => schemathesis::run(options),
        ("contracts", options) => contracts::run_task(options),
        _ => Err(usage(task).into()),
    }
}

/// `usage: cargo xtask TASK ARGUMENTS`, for a task given the wrong arguments.
fn usage(task: &str) -> String {
    let arguments = TASKS.iter().find(|(name, _, _)| *name == task).map_or("", |(_, arguments, _)| *arguments);
    format!("usage: cargo xtask {task} {arguments}").trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| (*word).to_owned()).collect()
    }

    #[test]
    fn help_has_one_line_per_task() {
        let text = help();
        let lines: Vec<&str> = text.lines().skip_while(|line| *line != "tasks:").skip(1).collect();
        assert_eq!(lines.len(), TASKS.len(), "{text}");
        for ((name, _, summary), line) in TASKS.iter().zip(&lines) {
            assert!(line.trim_start().starts_with(name) && line.ends_with(summary), "{line}");
        }
    }

    #[test]
    fn help_and_unknown_tasks_are_told_apart() {
        for word in ["help", "--help", "-h"] {
            assert_eq!(parse(&strings(&[word])), Request::Help);
        }
        assert_eq!(parse(&[]), Request::Unknown(None));
        assert_eq!(parse(&strings(&["frobnicate"])), Request::Unknown(Some("frobnicate")));
        assert_eq!(parse(&strings(&["services", "status"])), Request::Task("services", vec!["status"]));
        assert_eq!(usage("services"), "usage: cargo xtask services up|down|status");
        assert_eq!(usage("ci"), "usage: cargo xtask ci");
    }

    #[test]
    fn the_module_doc_names_every_task() {
        let source = include_str!("main.rs");
        let doc: String = source.lines().take_while(|line| line.starts_with("//!")).collect();
        for (name, _, _) in TASKS {
            assert!(doc.contains(&format!("cargo xtask {name}")), "the module doc lacks `cargo xtask {name}`");
        }
    }
}
