//! `cargo xtask contracts [--check]`: compiles the deposit contracts (`crates/ethkms-deposits/contracts`)
//! with the pinned solc of the npm registry (`solc@0.8.28`, installed with the other npm packages) into
//! their committed artifacts; with `--check` (a step of `cargo xtask ci`), compiles them afresh beside
//! and fails unless that gives the committed artifacts byte for byte. The contracts of `alternatives/` (designs
//! that `cargo xtask bench deposits` measures against ours, never deployed by ethkms) are compiled and
//! checked alike, into `artifacts/alternatives/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Result;
use crate::command::{run, target_dir, workspace_root};

/// The contracts' directory: sources, compile script, artifacts.
fn contracts_dir() -> PathBuf {
    workspace_root().join("crates").join("ethkms-deposits").join("contracts")
}

pub(crate) fn run_task(options: &[&str]) -> Result {
    match options {
        [] => {
            let artifacts = contracts_dir().join("artifacts");
            compile(&artifacts)?;
            eprintln!("xtask: compiled the deposit contracts into {}", artifacts.display());
            Ok(())
        }
        ["--check"] => check(),
        _ => Err("usage: cargo xtask contracts [--check]".into()),
    }
}

/// Compiles the contracts into `out` (created afresh).
fn compile(out: &Path) -> Result {
    let node_modules = crate::services::node_modules()?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|error| format!("could not clear {}: {error}", out.display()))?;
    }
    run(Command::new("node")
        .arg(contracts_dir().join("compile.cjs"))
        .arg(out)
        .env("NODE_PATH", &node_modules)
        .current_dir(contracts_dir()))
    .map_err(|error| format!("compiling the deposit contracts: {error} (needs Node.js 18 or newer)").into())
}

/// Fails unless compiling now gives the committed artifacts.
pub(crate) fn check() -> Result {
    let fresh = target_dir().join("contracts-check");
    compile(&fresh)?;
    let committed = contracts_dir().join("artifacts");
    let differences = compare(&committed, &fresh)?;
    if differences.is_empty() {
        eprintln!("xtask: the committed deposit contract artifacts are what solc compiles");
        Ok(())
    } else {
        Err(format!(
            "the committed artifacts in {} are not what the sources compile to ({}); run `cargo xtask contracts` \
             and commit the result",
            committed.display(),
            differences.join(", ")
        )
        .into())
    }
}

/// The files (by path under the directories, `/`-separated) that differ between the two directories, or are
/// in only one; subdirectories (`alternatives/`) included.
fn compare(committed: &Path, fresh: &Path) -> Result<Vec<String>> {
    let (old, new) = (files(committed, "")?, files(fresh, "")?);
    let mut differences: Vec<String> = Vec::new();
    for name in old.iter().chain(&new) {
        if differences.contains(name) {
            continue;
        }
        let read = |directory: &Path| std::fs::read(directory.join(name)).ok();
        if read(committed) != read(fresh) {
            differences.push(name.clone());
        }
    }
    Ok(differences)
}

/// The files under `directory` (recursively), as paths relative to it prefixed with `prefix`, sorted.
fn files(directory: &Path, prefix: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let entries =
        std::fs::read_dir(directory).map_err(|error| format!("could not read {}: {error}", directory.display()))?;
    for entry in entries {
        let entry = entry.map_err(|error| format!("could not read {}: {error}", directory.display()))?;
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            names.extend(files(&entry.path(), &format!("{name}/"))?);
        } else {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_differ_or_are_missing_are_named() {
        let base = std::env::temp_dir().join(format!("xtask-contracts-{}", std::process::id()));
        let (a, b) = (base.join("a"), base.join("b"));
        for (directory, files) in
            [(&a, [("same.json", "1"), ("changed.json", "2")]), (&b, [("same.json", "1"), ("changed.json", "3")])]
        {
            std::fs::create_dir_all(directory).unwrap();
            for (name, text) in files {
                std::fs::write(directory.join(name), text).unwrap();
            }
        }
        std::fs::write(b.join("new.json"), "4").unwrap();
        for (directory, text) in [(&a, "5"), (&b, "6")] {
            std::fs::create_dir_all(directory.join("alternatives")).unwrap();
            std::fs::write(directory.join("alternatives").join("Other.json"), text).unwrap();
        }
        std::fs::write(a.join("alternatives").join("Gone.json"), "7").unwrap();
        assert_eq!(
            compare(&a, &b).unwrap(),
            ["alternatives/Gone.json", "alternatives/Other.json", "changed.json", "new.json"]
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
