//! Tidy checks, run as ordinary tests (`cargo test -p xtask`): conventions that no compiler enforces.
//!
//! They cover the main workspace and the three beside it: `fuzz/`, `bench/` and `xtask/no-std-proof/`.

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
    // `xtask` holds the no-std proof too.
    for directory in ["crates", "xtask", "fuzz/fuzz_targets", "bench/src", "tests"] {
        rust_files(&root.join(directory), &mut files);
    }
    assert!(files.len() > 10, "found only {} Rust files", files.len());
    for required in ["bench/src/main.rs", "xtask/no-std-proof/src/lib.rs", "fuzz/fuzz_targets/spki.rs"] {
        assert!(files.contains(&root.join(required)), "tidy does not scan {required}");
    }
    files
}

/// The manifests of the published crates (`crates/*` without `publish = false`), with their directories.
fn published_crates() -> Vec<(PathBuf, String)> {
    let mut crates: Vec<(PathBuf, String)> = fs::read_dir(workspace_root().join("crates"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter_map(|directory| Some((directory.clone(), fs::read_to_string(directory.join("Cargo.toml")).ok()?)))
        .filter(|(_, manifest)| !manifest.contains("publish = false"))
        .collect();
    crates.sort();
    assert!(crates.len() >= 5, "found only {} published crates", crates.len());
    crates
}

/// The lines of one `[section]` of a TOML file (up to the next section header).
fn toml_section<'a>(text: &'a str, header: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|line| line.trim() != header)
        .skip(1)
        .take_while(|line| !line.starts_with('['))
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

/// `name = "1.2"` or `name = { version = "1.2", ... }` as (name, version requirement); `None` for a
/// dependency without a version (a path dependency).
fn dependency_version(line: &str) -> Option<(&str, &str)> {
    let (name, spec) = line.split_once('=')?;
    let spec = spec.trim();
    let version = match spec.strip_prefix('"') {
        Some(plain) => plain,
        None => spec.split_once("version")?.1.trim_start().strip_prefix('=')?.trim_start().strip_prefix('"')?,
    };
    Some((name.trim(), version.split('"').next()?))
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

/// Longer files are split into folders; one that is long on purpose says so with the phrase
/// [`LONG_FILE_REASON`] in its module doc, followed by why.
/// What a file over [`MAX_LINES`] lines says at its top, followed by the reason.
const LONG_FILE_REASON: &str = "Longer than 600 lines because";

/// The most lines a Rust file has before it is split.
const MAX_LINES: usize = 600;

#[test]
fn long_files_are_split_or_say_why() {
    let long: Vec<String> = all_rust_files()
        .into_iter()
        .filter(|path| fs::read_to_string(path).is_ok_and(|text| text.lines().count() > MAX_LINES))
        .filter(|path| {
            let text = fs::read_to_string(path).unwrap_or_default();
            !text.lines().take_while(|line| line.starts_with("//!")).any(|line| line.contains(LONG_FILE_REASON))
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines without `{LONG_FILE_REASON} ...` at the top: {long:#?}");
}

/// `bench/` and `fuzz/` are workspaces of their own and cannot inherit dependencies: each one they share
/// with the main workspace asks for the same version.
#[test]
fn side_workspaces_ask_for_the_workspace_versions() {
    let root = workspace_root();
    let workspace = fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
    let shared: Vec<(&str, &str)> =
        toml_section(&workspace, "[workspace.dependencies]").into_iter().filter_map(dependency_version).collect();
    assert!(shared.iter().any(|(name, _)| *name == "alloy-primitives"), "no [workspace.dependencies] found");
    let mut compared = 0;
    for side in ["bench", "fuzz"] {
        let manifest = fs::read_to_string(root.join(side).join("Cargo.toml")).unwrap_or_default();
        for (name, version) in toml_section(&manifest, "[dependencies]").into_iter().filter_map(dependency_version) {
            if let Some((_, wanted)) = shared.iter().find(|(shared_name, _)| *shared_name == name) {
                assert_eq!(version, *wanted, "{side}/Cargo.toml asks for {name} {version}, the workspace for {wanted}");
                compared += 1;
            }
        }
    }
    assert!(compared >= 8, "only {compared} shared dependencies compared");
}

#[test]
fn dependency_lines_parse() {
    assert_eq!(dependency_version(r#"serde_json = "1.0.140""#), Some(("serde_json", "1.0.140")));
    assert_eq!(
        dependency_version(r#"tokio = { version = "1.48", default-features = false }"#),
        Some(("tokio", "1.48"))
    );
    assert_eq!(dependency_version(r#"ethkms-core = { path = "../crates/ethkms-core" }"#), None);
    assert_eq!(toml_section("[a]\nx = 1\n# c\n\n[b]\ny = 2\n", "[a]"), ["x = 1"]);
}

/// docs.rs builds every feature of a crate that has features, and the nightly attribute is `doc_cfg`
/// (`doc_auto_cfg` was removed from nightly and fails the build).
#[test]
fn docs_rs_builds_every_feature() {
    for (directory, manifest) in published_crates() {
        if manifest.contains("\n[features]") {
            let metadata = toml_section(&manifest, "[package.metadata.docs.rs]");
            assert!(
                metadata.contains(&"all-features = true"),
                "{}/Cargo.toml has features but no `[package.metadata.docs.rs] all-features = true`",
                directory.display()
            );
        }
    }
    for path in all_rust_files() {
        let text = fs::read_to_string(&path).unwrap_or_default();
        assert!(
            !text.contains(concat!("feature(doc_auto", "_cfg)")),
            "{} uses the removed doc_auto_cfg",
            path.display()
        );
    }
}

/// Every published crate keeps a changelog with an `Unreleased` section.
#[test]
fn published_crates_have_changelogs() {
    for (directory, _) in published_crates() {
        let changelog = fs::read_to_string(directory.join("CHANGELOG.md")).unwrap_or_default();
        assert!(
            changelog.contains("## [Unreleased]"),
            "{}/CHANGELOG.md is missing or has no Unreleased section",
            directory.display()
        );
    }
}

/// ethkms-core's README states the minimum Rust version its manifest declares.
#[test]
fn core_readme_states_the_msrv() {
    let directory = workspace_root().join("crates/ethkms-core");
    let manifest = fs::read_to_string(directory.join("Cargo.toml")).unwrap_or_default();
    let version = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = \""))
        .and_then(|rest| rest.split('"').next())
        .expect("ethkms-core sets its own rust-version");
    let readme = fs::read_to_string(directory.join("README.md")).unwrap_or_default();
    assert!(readme.contains("## Minimum supported Rust version"), "no MSRV section in ethkms-core's README");
    assert!(readme.contains(&format!("Rust {version} ")), "ethkms-core's README does not state Rust {version}");
}
