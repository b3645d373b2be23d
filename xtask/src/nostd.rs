//! `cargo xtask nostd`: proves that ethkms-core builds without `std`.
//!
//! `xtask/no-std-proof` is a `#![no_std]` static library with its own `#[panic_handler]` that calls
//! ethkms-core. If `std` entered the dependency tree, std's own `panic_impl` would collide with it and
//! the build would fail. To show the check is not vacuous, the same crate is built once more with the
//! `std-canary` feature, which links `std` on purpose: that build must fail, and with that error.

use std::process::Command;

use crate::Result;
use crate::command::{cargo, display, target_dir, workspace_root};

pub(crate) fn run() -> Result {
    let build = |canary: bool| -> Command {
        let root = workspace_root();
        let mut command = cargo();
        command
            .args(["build", "--quiet", "--manifest-path"])
            .arg(root.join("xtask/no-std-proof/Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir().join("no-std-proof"));
        if canary {
            command.args(["--features", "std-canary"]);
        }
        command
    };

    crate::command::run(&mut build(false)).map_err(|error| format!("ethkms-core does not build as no_std: {error}"))?;
    eprintln!("xtask: ethkms-core builds into a #![no_std] crate with its own panic handler");

    let mut canary = build(true);
    eprintln!("$ {} (must fail)", display(&canary));
    let result = canary.output()?;
    let stderr = String::from_utf8_lossy(&result.stderr);
    if result.status.success() {
        return Err("the std canary built: the no_std proof would not notice std (check the panic handler)".into());
    }
    if !stderr.contains("duplicate lang item") {
        return Err(format!("the std canary failed for another reason than std's panic handler:\n{stderr}").into());
    }
    eprintln!("xtask: and the std canary fails as it must (duplicate `panic_impl` lang item)");
    Ok(())
}
