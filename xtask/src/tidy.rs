//! Tidy checks, run as ordinary tests (`cargo test -p xtask`): conventions that no compiler enforces.

use std::fs;
use std::path::{Path, PathBuf};

use crate::command::workspace_root;

fn rust_files(directory: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(directory) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() && name != "target" && name != "corpus" && name != "artifacts" {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            out.push(path);
        }
    }
}

fn all_rust_files() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files = Vec::new();
    for directory in ["crates", "xtask", "fuzz/fuzz_targets", "tests"] {
        rust_files(&root.join(directory), &mut files);
    }
    assert!(files.len() > 10, "found only {} Rust files", files.len());
    files
}

/// Every Rust file opens with a module doc (`//!`), or is a crate root whose doc is its README.
#[test]
fn every_file_has_a_module_doc() {
    let missing: Vec<String> = all_rust_files()
        .into_iter()
        .filter(|path| {
            let text = fs::read_to_string(path).unwrap_or_default();
            let first = text.lines().find(|line| !line.trim().is_empty() && !line.starts_with("#![no_main]"));
            !first.is_some_and(|line| line.starts_with("//!") || line.starts_with("#![doc = include_str!"))
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a `//!` module doc: {missing:#?}");
}

/// Library code does not leave work for later.
#[test]
fn no_placeholders() {
    let needles = ["todo!(", "unimplemented!(", "dbg!(", "XXX"];
    for path in all_rust_files() {
        if path.ends_with("tidy.rs") {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap_or_default();
        for needle in needles {
            assert!(!text.contains(needle), "{} contains `{needle}`", path.display());
        }
    }
}

/// Every published crate carries the metadata crates.io users expect and opts into the workspace lints.
#[test]
fn crates_have_complete_metadata() {
    let crates = workspace_root().join("crates");
    let mut checked = 0;
    for entry in fs::read_dir(&crates).into_iter().flatten().flatten() {
        let directory = entry.path();
        let manifest = fs::read_to_string(directory.join("Cargo.toml")).unwrap_or_default();
        let name = directory.display();
        for field in ["description", "readme", "keywords", "categories", "license.workspace = true"] {
            assert!(manifest.contains(field), "{name}/Cargo.toml lacks `{field}`");
        }
        assert!(
            manifest.contains("[lints]\nworkspace = true"),
            "{name}/Cargo.toml does not opt into the workspace lints"
        );
        assert!(directory.join("README.md").is_file(), "{name} has no README.md");
        // The crate root: the library's, or the binary's for a crate that is only a binary (ethkms-cli).
        let root = ["src/lib.rs", "src/main.rs"].into_iter().find(|root| directory.join(root).is_file());
        let text = root.and_then(|root| fs::read_to_string(directory.join(root)).ok()).unwrap_or_default();
        assert!(
            text.starts_with("#![doc = include_str!(\"../README.md\")]"),
            "{name}/{} does not use its README as crate doc",
            root.unwrap_or("src/lib.rs")
        );
        checked += 1;
    }
    assert!(checked >= 1);
    let workspace = fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap_or_default();
    assert!(workspace.contains("license = \"MIT OR Apache-2.0\""));
    assert!(workspace.contains("unsafe_code = \"forbid\""));
}

/// `.ci/run` runs exactly the test command the README gives.
#[test]
fn ci_runs_the_readme_test_command() {
    let root = workspace_root();
    let readme = fs::read_to_string(root.join("README.md")).unwrap_or_default();
    let script = fs::read_to_string(root.join(".ci/run")).unwrap_or_default();
    assert!(readme.contains("cargo xtask ci"), "the README does not give `cargo xtask ci` as the test command");
    let commands: Vec<&str> = script
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with("set "))
        .collect();
    assert_eq!(commands.last(), Some(&"exec cargo xtask ci"), ".ci/run must end by running the README's command");
}
