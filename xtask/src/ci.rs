//! `cargo xtask ci`: everything CI checks, in order, each step timed, stopping at the first failure.
//!
//! 1. formatting (`cargo fmt --check`: the main workspace, `fuzz/`, `bench/`, the no-std proof)
//! 2. clippy on all targets with warnings denied, in the same four places; the deposit contracts
//!    recompiled with the pinned solc, which must give the committed artifacts (`cargo xtask contracts --check`)
//! 3. the tests (cargo-nextest when installed, else `cargo test`), then the doctests, with LocalStack
//!    KMS and anvil running (`cargo xtask services up`)
//! 4. schemathesis against the signing service's OpenAPI document (`cargo xtask schemathesis`), with the
//!    same services; in CI they are stopped afterwards
//! 5. rustdoc with warnings denied; then as docs.rs builds it: nightly, `--cfg docsrs`, all features
//! 6. the `no_std` proof (`cargo xtask nostd`)
//! 7. cargo-deny: licences, bans and sources; advisories when the advisory database can be fetched
//! 8. `cargo package` for every publishable crate
//! 9. a short run of every fuzz target

use std::process::Command;
use std::time::{Duration, Instant};

use crate::Result;
use crate::command::{cargo, in_ci, output, run, target_dir, workspace_root};
use crate::services::{self, ServiceEnv};
use crate::{contracts, fuzz, nostd, schemathesis, tools};

/// Seconds each fuzz target runs in CI.
const CI_FUZZ_SECONDS: u64 = 20;

/// The workspaces besides the main one, each with a manifest of its own: fmt and clippy cover them
/// too. The no-std proof has no lock file (it must resolve like a user's build) and no test target (a
/// test harness links std).
const OTHER_WORKSPACES: [&str; 3] = ["fuzz/Cargo.toml", "bench/Cargo.toml", "xtask/no-std-proof/Cargo.toml"];

pub(crate) fn run_all() -> Result {
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let mut step = |name: &'static str, action: &mut dyn FnMut() -> Result| -> Result {
        eprintln!("\n==== xtask ci: {name}");
        let started = Instant::now();
        action().map_err(|error| format!("ci step `{name}` failed: {error}"))?;
        timings.push((name, started.elapsed()));
        Ok(())
    };

    step("fmt", &mut || {
        run(cargo().args(["fmt", "--all", "--check"]))?;
        for manifest in OTHER_WORKSPACES {
            run(cargo().args(["fmt", "--check", "--manifest-path", manifest]))?;
        }
        Ok(())
    })?;
    step("clippy", &mut || {
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]))?;
        for manifest in OTHER_WORKSPACES {
            run(&mut clippy_other(manifest))?;
        }
        Ok(())
    })?;
    step("contracts", &mut contracts::check)?;
    {
        // The services stay up for schemathesis; in CI they are stopped after it (or after a failure).
        let mut started: Option<ServiceEnv> = None;
        let _stop = StopServicesAfter { in_ci: in_ci() };
        step("test", &mut || {
            let services = services::up()?;
            test(&services)?;
            started = Some(services);
            Ok(())
        })?;
        step("schemathesis", &mut || {
            schemathesis::check(
                started.as_ref().ok_or("the services did not start")?,
                &schemathesis::Settings::default(),
            )
        })?;
    }
    step("doc", &mut || {
        run(cargo().env("RUSTDOCFLAGS", "-D warnings").args(["doc", "--workspace", "--no-deps", "--locked"]))
    })?;
    step("doc-nightly", &mut doc_nightly)?;
    step("nostd", &mut nostd::run)?;
    step("deny", &mut deny)?;
    step("package", &mut || {
        let mut command = cargo();
        command.args(["package", "--workspace", "--exclude", "xtask", "--no-verify", "--locked"]);
        if !in_ci() {
            command.arg("--allow-dirty");
        }
        run(&mut command)
    })?;
    step("fuzz", &mut || fuzz::fuzz(&fuzz::targets()?, CI_FUZZ_SECONDS))?;

    eprintln!("\n==== xtask ci: all steps passed");
    for (name, elapsed) in &timings {
        eprintln!("  {name:<10} {:>7.1} s", elapsed.as_secs_f64());
    }
    Ok(())
}

/// `cargo clippy` over one of [`OTHER_WORKSPACES`], warnings denied.
fn clippy_other(manifest: &str) -> Command {
    let mut command = cargo();
    command.args(["clippy", "--manifest-path", manifest]);
    if manifest.starts_with("xtask/no-std-proof/") {
        // Its own target directory, as `cargo xtask nostd` builds it.
        command.arg("--target-dir").arg(target_dir().join("no-std-proof"));
    } else {
        command.args(["--all-targets", "--locked"]);
    }
    command.args(["--", "-D", "warnings"]);
    command
}

/// The documentation as docs.rs builds it: nightly rustdoc, `--cfg docsrs`, every feature, warnings
/// denied; so a nightly-only attribute that nightly removed (as `doc_auto_cfg` was) fails here and not
/// on docs.rs after publishing. In its own target directory, so it does not displace the stable build.
///
/// Without the nightly toolchain this fails in CI and is skipped, loudly, elsewhere.
fn doc_nightly() -> Result {
    // `+nightly` is understood by rustup's `cargo` proxy, not by the toolchain's own cargo in `$CARGO`;
    // a compiler named in the environment would be the stable one.
    let nightly = || {
        let mut command = Command::new("cargo");
        command.current_dir(workspace_root()).env_remove("RUSTC").env_remove("RUSTDOC").arg("+nightly");
        command
    };
    if output(nightly().arg("--version")).is_none() {
        let message = "the nightly toolchain is not installed (`rustup toolchain install nightly --profile minimal`); \
                       docs.rs builds with it";
        if in_ci() {
            return Err(message.into());
        }
        eprintln!("xtask: WARNING: {message}; the docs.rs build was NOT checked");
        return Ok(());
    }
    run(nightly()
        .env("RUSTDOCFLAGS", "--cfg docsrs -D warnings")
        .args(["doc", "--workspace", "--no-deps", "--all-features", "--locked", "--target-dir"])
        .arg(target_dir().join("docs-rs")))
}

/// The tests: nextest if it is installed (it runs each test in its own process), else `cargo test`;
/// doctests always through `cargo test --doc`, which nextest does not run.
///
/// The integration tests get the services' addresses and `ETHKMS_REQUIRE_SERVICES=1`, so that a
/// missing service fails them instead of skipping them.
fn test(services: &ServiceEnv) -> Result {
    let cargo_with_services = |arguments: &[&str]| {
        let mut command = cargo();
        command.args(arguments).env("ETHKMS_REQUIRE_SERVICES", "1");
        services.apply(&mut command);
        command
    };
    let nextest = output(Command::new("cargo").args(["nextest", "--version"])).is_some();
    if nextest {
        run(&mut cargo_with_services(&["nextest", "run", "--workspace", "--locked", "--no-fail-fast"]))?;
    } else {
        eprintln!(
            "xtask: cargo-nextest is not installed; running `cargo test` (install it with `cargo install cargo-nextest --locked`)"
        );
        run(&mut cargo_with_services(&[
            "test",
            "--workspace",
            "--locked",
            "--no-fail-fast",
            "--lib",
            "--bins",
            "--tests",
        ]))?;
    }
    run(&mut cargo_with_services(&["test", "--workspace", "--locked", "--doc"]))
}

/// Stops the services when dropped, if `in_ci`: a CI run leaves nothing behind, while a developer's
/// services stay up for the next run.
struct StopServicesAfter {
    in_ci: bool,
}

impl Drop for StopServicesAfter {
    fn drop(&mut self) {
        if self.in_ci
            && let Err(error) = services::down()
        {
            eprintln!("xtask: stopping the services failed: {error}");
        }
    }
}

/// cargo-deny. Licences, bans and sources need nothing from the network and must pass. The advisory
/// check needs the RustSec database, a git repository; where it cannot be fetched (a machine that
/// reaches only package registries) that is reported loudly and the rest still counts.
fn deny() -> Result {
    tools::ensure(tools::CARGO_DENY)?;
    run(cargo().args(["deny", "--locked", "check", "bans", "licenses", "sources"]))?;
    let mut advisories = cargo();
    advisories.args(["deny", "--locked", "check", "advisories"]);
    eprintln!("$ cargo deny --locked check advisories");
    let result = advisories.output()?;
    let stderr = String::from_utf8_lossy(&result.stderr);
    if result.status.success() {
        eprint!("{stderr}");
        return Ok(());
    }
    let unreachable = ["failed to fetch", "failed to open advisory database", "Could not resolve host", "network"]
        .iter()
        .any(|symptom| stderr.contains(symptom));
    if unreachable {
        eprintln!(
            "xtask: WARNING: the RustSec advisory database cannot be fetched from this machine; advisories were NOT checked."
        );
        eprintln!(
            "xtask: (bans, licences and sources were.) Run `cargo deny check advisories` where github.com is reachable."
        );
        Ok(())
    } else {
        eprint!("{stderr}");
        Err("cargo deny found advisories".into())
    }
}
