//! Running commands: echo them, run them, and turn a failure into an error that names the command.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Result;

/// The workspace root (the parent of this crate's directory).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Where cargo puts what it builds: `$CARGO_TARGET_DIR` (relative to the workspace root if it is
/// relative), else `target/` in the workspace root.
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|directory| !directory.is_empty()) {
        Some(directory) => workspace_root().join(directory),
        None => workspace_root().join("target"),
    }
}

/// `cargo` as the one running this task (honours `$CARGO`), started in the workspace root.
pub(crate) fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

/// Prints the command, runs it, and fails unless it exits with status 0.
pub(crate) fn run(command: &mut Command) -> Result {
    let shown = display(command);
    eprintln!("$ {shown}");
    let status = command.status().map_err(|error| format!("could not start `{shown}`: {error}"))?;
    if status.success() { Ok(()) } else { Err(format!("`{shown}` failed ({status})").into()) }
}

/// Runs the command quietly and returns its standard output, or `None` if it cannot start or fails.
pub(crate) fn output(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `program arg arg ...`, for messages.
pub(crate) fn display(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for argument in command.get_args() {
        text.push(' ');
        text.push_str(&argument.to_string_lossy());
    }
    text
}

/// Whether this is a CI run (`CI` set to anything but `false` or `0`), where missing services fail.
pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "false" && value != "0")
}

/// A directory for caches that outlive a checkout (tool installs, the LocalStack virtualenv, npm
/// packages): `$ETHKMS_CACHE_DIR`, else `$XDG_CACHE_HOME/ethkms`, else `~/.cache/ethkms`.
pub(crate) fn cache_dir() -> PathBuf {
    if let Some(directory) = std::env::var_os("ETHKMS_CACHE_DIR") {
        return directory.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME").map_or_else(|| workspace_root().join("target"), |home| Path::new(&home).join(".cache"))
    });
    base.join("ethkms")
}
