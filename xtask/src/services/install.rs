//! Installing what the services need, into [`cache_dir`], under names that carry a hash of what is
//! installed (so changing a pin installs afresh beside the old copy): the LocalStack and eth-account
//! virtualenvs, and the npm packages (anvil, cast, ethers).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::process::{PROGRESS_INTERVAL, write_file};
use crate::Result;
use crate::command::{self, cache_dir, display, output};

/// The pinned Python packages LocalStack runs from (compiled in, so the cache key follows the
/// file).
const LOCALSTACK_REQUIREMENTS: &str = include_str!("../../services/localstack-requirements.txt");

/// The pinned Python packages of the eth-account verifier.
const VERIFIER_REQUIREMENTS: &str = include_str!("../../services/verifiers-requirements.txt");

/// The npm packages: anvil and cast (foundry 1.7.1, which ship their native binaries in
/// per-platform packages), ethers v6 for verifying signatures independently (it pins its own
/// dependencies exactly), and solc 0.8.28 (the compiler as JavaScript) for the deposit contracts.
const NPM_PACKAGES: &[&str] = &["@foundry-rs/anvil@1.7.1", "@foundry-rs/cast@1.7.1", "ethers@6.17.0", "solc@0.8.28"];

/// localstack-core 2026.3.0 needs Python 3.13 or newer.
const LOCALSTACK_MIN_PYTHON: (u32, u32) = (3, 13);

/// The pinned eth-account set needs Python 3.11 or newer.
const VERIFIER_MIN_PYTHON: (u32, u32) = (3, 11);

/// Everything [`up`](super::up) installs.
#[derive(Debug)]
pub(super) struct Tools {
    /// The LocalStack virtualenv's interpreter.
    pub(super) localstack_python: PathBuf,
    /// The eth-account virtualenv's interpreter.
    pub(super) verifier_python: PathBuf,
    /// anvil, cast and ethers.
    pub(super) node: NodeTools,
}

/// What the npm install provides.
#[derive(Debug)]
pub(super) struct NodeTools {
    /// The `node_modules` directory.
    pub(super) node_modules: PathBuf,
    /// The anvil binary.
    pub(super) anvil: PathBuf,
    /// The cast binary.
    pub(super) cast: PathBuf,
}

/// A Python interpreter that ran.
#[derive(Clone, Debug)]
struct Python {
    /// Its `sys.executable`: the real interpreter, not a pyenv shim.
    executable: PathBuf,
    /// Its `sys.version_info[:3]`.
    version: (u32, u32, u32),
}

impl Python {
    /// `major.minor.micro`.
    fn version_text(&self) -> String {
        let (major, minor, micro) = self.version;
        format!("{major}.{minor}.{micro}")
    }

    /// Whether it is at least `major.minor`.
    fn at_least(&self, (major, minor): (u32, u32)) -> bool {
        (self.version.0, self.version.1) >= (major, minor)
    }
}

/// Installs whatever is missing: the two virtualenvs and the npm packages, at the same time.
pub(super) fn install() -> Result<Tools> {
    let cache =
        std::path::absolute(cache_dir()).map_err(|error| format!("could not resolve the cache directory: {error}"))?;
    let localstack_base = find_localstack_python()?;
    let verifier_base =
        find_python(VERIFIER_MIN_PYTHON, [OsStr::new("python3")]).unwrap_or_else(|| localstack_base.clone());

    thread::scope(|scope| {
        let node = scope.spawn(|| install_node_tools(&cache).map_err(|error| error.to_string()));
        let verifier = scope.spawn(|| {
            install_venv(
                "eth-account",
                &cache.join(format!("verifiers-{}", venv_key(VERIFIER_REQUIREMENTS, &verifier_base))),
                &verifier_base,
                VERIFIER_REQUIREMENTS,
                "import eth_account; print('eth-account', eth_account.__version__)",
            )
            .map_err(|error| error.to_string())
        });
        let localstack = install_venv(
            "LocalStack",
            &cache.join(format!("localstack-{}", venv_key(LOCALSTACK_REQUIREMENTS, &localstack_base))),
            &localstack_base,
            LOCALSTACK_REQUIREMENTS,
            "import importlib.metadata, localstack, boto3; \
             print('localstack-core', importlib.metadata.version('localstack-core'))",
        );
        let node = node.join().map_err(|_| "the npm install thread panicked")??;
        let verifier = verifier.join().map_err(|_| "the eth-account install thread panicked")??;
        Ok(Tools { localstack_python: localstack?, verifier_python: verifier, node })
    })
}

/// The Python >= 3.13 LocalStack runs on: `$ETHKMS_PYTHON` if set, else the first that runs of
/// pyenv's 3.13+ versions (oldest first: the pins were made on 3.13), `python3.13`, `python3.14`,
/// `python3`.
fn find_localstack_python() -> Result<Python> {
    if let Some(chosen) = std::env::var_os("ETHKMS_PYTHON").filter(|value| !value.is_empty()) {
        let shown = chosen.to_string_lossy();
        return match probe_python(&chosen) {
            Some(python) if python.at_least(LOCALSTACK_MIN_PYTHON) => Ok(python),
            Some(python) => Err(format!(
                "ETHKMS_PYTHON={shown} is Python {}, but LocalStack needs Python >= 3.13: point \
                 ETHKMS_PYTHON at a Python 3.13 interpreter",
                python.version_text()
            )
            .into()),
            None => Err(format!("ETHKMS_PYTHON={shown} does not run as a Python interpreter").into()),
        };
    }
    let mut candidates: Vec<PathBuf> = pyenv_pythons(LOCALSTACK_MIN_PYTHON);
    candidates.extend(["python3.13", "python3.14", "python3"].map(PathBuf::from));
    find_python(LOCALSTACK_MIN_PYTHON, candidates.iter().map(|candidate| candidate.as_os_str())).ok_or_else(|| {
        let tried: Vec<String> = candidates.iter().map(|candidate| candidate.display().to_string()).collect();
        format!(
            "LocalStack (localstack-core 2026.3.0) needs Python >= 3.13, and none was found \
             (tried {}). Install one (e.g. `pyenv install 3.13`, or your system's python3.13 with \
             its venv module) and point to it: \
             ETHKMS_PYTHON=/path/to/python3.13 cargo xtask services up",
            tried.join(", ")
        )
        .into()
    })
}

/// A cached virtualenv named `name-<hash>` of the default `python3` (>= 3.11) with `requirements` (a
/// pinned requirements file's text), made unless an earlier run completed it; returns its interpreter.
/// `check` is a Python script run after installing, whose output is shown.
///
/// # Errors
///
/// If there is no Python >= 3.11 or the install fails.
pub(crate) fn python_venv(name: &str, requirements: &str, check: &str) -> Result<PathBuf> {
    let cache =
        std::path::absolute(cache_dir()).map_err(|error| format!("could not resolve the cache directory: {error}"))?;
    let python = find_python(VERIFIER_MIN_PYTHON, [OsStr::new("python3")])
        .ok_or_else(|| format!("{name} needs Python >= 3.11 as `python3`"))?;
    install_venv(name, &cache.join(format!("{name}-{}", venv_key(requirements, &python))), &python, requirements, check)
}

/// The first of `candidates` that runs and is at least `minimum`.
fn find_python<'a>(minimum: (u32, u32), candidates: impl IntoIterator<Item = &'a OsStr>) -> Option<Python> {
    candidates.into_iter().filter_map(probe_python).find(|python| python.at_least(minimum))
}

/// Runs `program` as Python to learn its version and real path (pyenv's shims fail unless their
/// version is selected, so being on `PATH` proves nothing).
fn probe_python(program: &OsStr) -> Option<Python> {
    let script = "import sys; print('%d.%d.%d' % sys.version_info[:3]); print(sys.executable)";
    let text = output(Command::new(program).args(["-c", script]).stdin(Stdio::null()))?;
    let mut lines = text.lines();
    let version = parse_version(lines.next()?)?;
    let executable =
        lines.next().map(str::trim).filter(|path| !path.is_empty()).map_or_else(|| program.into(), PathBuf::from);
    Some(Python { executable, version })
}

/// The interpreters of pyenv's versions that are at least `minimum`, oldest first (none without
/// pyenv).
fn pyenv_pythons(minimum: (u32, u32)) -> Vec<PathBuf> {
    let Some(listing) = output(Command::new("pyenv").args(["versions", "--bare"])) else {
        return Vec::new();
    };
    let mut versions: Vec<((u32, u32, u32), &str)> = listing
        .lines()
        .map(str::trim)
        .filter(|name| !name.contains('/')) // virtualenvs made with pyenv-virtualenv
        .filter_map(|name| Some((parse_version(name)?, name)))
        .filter(|((major, minor, _), _)| (*major, *minor) >= minimum)
        .collect();
    versions.sort_unstable();
    versions
        .into_iter()
        .filter_map(|(_, name)| output(Command::new("pyenv").args(["prefix", name])))
        .map(|prefix| Path::new(prefix.trim()).join("bin").join("python"))
        .collect()
}

/// `major.minor[.micro]` at the start of each dot-separated part, as in `3.13.0`, `3.14.0rc1` or
/// `3.13-dev`.
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    fn leading_number(part: &str) -> Option<u32> {
        let digits = part.find(|character: char| !character.is_ascii_digit()).unwrap_or(part.len());
        part[..digits].parse().ok()
    }
    let mut parts = text.trim().split('.');
    let major = leading_number(parts.next()?)?;
    let minor = leading_number(parts.next()?)?;
    let micro = parts.next().and_then(leading_number).unwrap_or(0);
    Some((major, minor, micro))
}

/// The cache key of a virtualenv: the requirements, the interpreter's version and its path (a
/// virtualenv is tied to the interpreter it was made with).
fn venv_key(requirements: &str, python: &Python) -> String {
    let key = format!("{requirements}\0{}\0{}", python.version_text(), python.executable.display());
    short_hash(key.as_bytes())
}

/// Makes `directory` a virtualenv of `python` with `requirements`, unless an earlier run completed
/// it (it then holds a marker file); returns its interpreter. `check` is a Python script run after
/// installing, whose output is shown.
fn install_venv(what: &str, directory: &Path, python: &Python, requirements: &str, check: &str) -> Result<PathBuf> {
    let interpreter = directory.join("bin").join("python");
    let marker = directory.join(".ethkms-complete");
    if marker.is_file() && interpreter.exists() {
        return Ok(interpreter);
    }
    if directory.exists() {
        eprintln!("xtask: removing the incomplete {what} virtualenv {}", directory.display());
        std::fs::remove_dir_all(directory)
            .map_err(|error| format!("could not remove {}: {error}", directory.display()))?;
    }
    if let Some(parent) = directory.parent() {
        std::fs::create_dir_all(parent).map_err(|error| format!("could not create {}: {error}", parent.display()))?;
    }
    eprintln!(
        "xtask: installing {what} into {} with Python {} ({}); the first time takes a while",
        directory.display(),
        python.version_text(),
        python.executable.display()
    );
    let started = Instant::now();
    command::run(Command::new(&python.executable).arg("-m").arg("venv").arg(directory)).map_err(|error| {
        format!(
            "{error}: could not create a virtualenv (on Debian and Ubuntu the venv module is the \
             python3.X-venv package)"
        )
    })?;
    let requirements_path = directory.join("requirements.txt");
    write_file(&requirements_path, requirements)?;
    let mut pip = Command::new(&interpreter);
    pip.args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q", "-r"]).arg(&requirements_path);
    run_with_progress(what, &mut pip)
        .map_err(|error| format!("{error}: installing {what} from PyPI failed (is PyPI reachable?)"))?;
    let checked = Command::new(&interpreter)
        .args(["-c", check])
        .output()
        .map_err(|error| format!("could not run {}: {error}", interpreter.display()))?;
    if !checked.status.success() {
        return Err(format!(
            "{what} installed but does not import ({}): {}",
            checked.status,
            String::from_utf8_lossy(&checked.stderr).trim()
        )
        .into());
    }
    let installed = String::from_utf8_lossy(&checked.stdout).trim().to_owned();
    write_file(&marker, &format!("{installed}\n"))?;
    eprintln!("xtask: installed {installed} in {:.1} s", started.elapsed().as_secs_f64());
    Ok(interpreter)
}

/// The npm packages alone (for tasks that need node but no service): their `node_modules`.
pub(crate) fn node_modules() -> Result<PathBuf> {
    let cache =
        std::path::absolute(cache_dir()).map_err(|error| format!("could not resolve the cache directory: {error}"))?;
    Ok(install_node_tools(&cache)?.node_modules)
}

/// Installs [`NPM_PACKAGES`] into `cache/node-<hash>/` unless anvil, cast, ethers and solc are there.
fn install_node_tools(cache: &Path) -> Result<NodeTools> {
    let directory = cache.join(format!("node-{}", short_hash(NPM_PACKAGES.join("\n").as_bytes())));
    let node_modules = directory.join("node_modules");
    let complete = || {
        ["anvil", "cast"].iter().all(|tool| node_modules.join(".bin").join(tool).exists())
            && ["ethers", "solc"].iter().all(|package| node_modules.join(package).join("package.json").is_file())
    };
    if !complete() {
        std::fs::create_dir_all(&directory)
            .map_err(|error| format!("could not create {}: {error}", directory.display()))?;
        let package_json = directory.join("package.json");
        if !package_json.exists() {
            write_file(&package_json, "{\"private\": true}\n")?;
        }
        eprintln!("xtask: installing {} into {}", NPM_PACKAGES.join(" "), directory.display());
        let started = Instant::now();
        // `--loglevel=error` rather than `--silent`: quiet, but a failure still says why.
        let mut npm = Command::new("npm");
        npm.args(["install", "--no-audit", "--no-fund", "--loglevel=error"]).args(NPM_PACKAGES).current_dir(&directory);
        run_with_progress("the npm packages", &mut npm).map_err(|error| {
            format!(
                "{error}: anvil, cast and ethers come from the npm registry; this needs Node.js 18 \
                 or newer with npm"
            )
        })?;
        if !complete() {
            return Err(format!(
                "npm install finished but anvil, cast, ethers or solc is missing from {}",
                node_modules.display()
            )
            .into());
        }
        eprintln!("xtask: installed the npm packages in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(NodeTools {
        anvil: foundry_binary(&node_modules, "anvil"),
        cast: foundry_binary(&node_modules, "cast"),
        node_modules,
    })
}

/// The native binary of a foundry npm package (e.g. `@foundry-rs/cast-linux-amd64/bin/cast`): what
/// the `.bin/` wrapper script would start, without node in between (so the pid is the tool's own).
/// The wrapper if the platform's package is not where expected.
fn foundry_binary(node_modules: &Path, tool: &str) -> PathBuf {
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        "windows" => "win32",
        other => other,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let native = node_modules.join("@foundry-rs").join(format!("{tool}-{os}-{arch}")).join("bin").join(tool);
    if native.is_file() { native } else { node_modules.join(".bin").join(tool) }
}

/// Like [`command::run`], but says every [`PROGRESS_INTERVAL`] that it is still installing `what`.
fn run_with_progress(what: &str, command: &mut Command) -> Result {
    let shown = display(command);
    eprintln!("$ {shown}");
    let started = Instant::now();
    let mut child =
        command.stdin(Stdio::null()).spawn().map_err(|error| format!("could not start `{shown}`: {error}"))?;
    let mut next_note = PROGRESS_INTERVAL;
    loop {
        if let Some(status) = child.try_wait().map_err(|error| format!("could not wait for `{shown}`: {error}"))? {
            return if status.success() { Ok(()) } else { Err(format!("`{shown}` failed ({status})").into()) };
        }
        if started.elapsed() >= next_note {
            eprintln!("xtask: still installing {what} ({} s so far)", started.elapsed().as_secs());
            next_note += PROGRESS_INTERVAL;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// The first 12 hex digits of the SHA-256 of `bytes`, for directory names: the same on every machine
/// and Rust version.
fn short_hash(bytes: &[u8]) -> String {
    let mut text = format!("{:x}", Sha256::digest(bytes));
    text.truncate(12);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_hash_is_the_start_of_sha256() {
        // SHA-256("") and SHA-256("foobar"), the well-known vectors.
        assert_eq!(short_hash(b""), "e3b0c44298fc");
        assert_eq!(short_hash(b"foobar"), "c3ab8ff13720");
        assert_ne!(short_hash(b"a"), short_hash(b"b"));
    }

    #[test]
    fn venv_key_follows_requirements_and_interpreter() {
        let python = Python { executable: "/usr/bin/python3.13".into(), version: (3, 13, 0) };
        let key = venv_key("a==1\n", &python);
        assert_eq!(key, venv_key("a==1\n", &python));
        assert_ne!(key, venv_key("a==2\n", &python));
        assert_ne!(key, venv_key("a==1\n", &Python { version: (3, 13, 1), ..python.clone() }));
        assert_ne!(key, venv_key("a==1\n", &Python { executable: "/opt/python3.13".into(), ..python }));
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("3.13.0"), Some((3, 13, 0)));
        assert_eq!(parse_version("3.14.0rc1\n"), Some((3, 14, 0)));
        assert_eq!(parse_version("3.13-dev"), Some((3, 13, 0)));
        assert_eq!(parse_version("3.13.0t"), Some((3, 13, 0)));
        assert_eq!(parse_version("system"), None);
        assert_eq!(parse_version("pypy3.10-7.3.17"), None);
        assert_eq!(parse_version("3"), None);
    }
}
