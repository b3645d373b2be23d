//! SoftHSM2, the PKCS#11 token the `ethkms-pkcs11` tests (and the CLI's and the signing service's HSM tests)
//! sign with. It is no process, only files: Debian's `softhsm2` package (installed here with `apt-get` when
//! it is missing and xtask runs as root), a configuration `target/services/softhsm/softhsm2.conf` whose
//! `directories.tokendir` is `target/services/softhsm/tokens/`, and two tokens in it, created once:
//!
//! - [`TOKEN`]: the test token every HSM test uses;
//! - [`SPARE_TOKEN`]: one no test logs in to with the right PIN, for the wrong-PIN test (a PKCS#11 login is
//!   per process, so a wrong PIN is only refused by a token the process is not logged in to).
//!
//! Both have the user PIN [`PIN`]: test tokens, holding test keys. `env.sh` exports `SOFTHSM2_CONF` (the
//! module reads it) and `ETHKMS_TEST_PKCS11_{MODULE,TOKEN,SPARE_TOKEN,PIN}`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Result;
use crate::command::{output, run};

/// The test token's label.
pub(crate) const TOKEN: &str = "ethkms-test";
/// The spare token's label.
pub(crate) const SPARE_TOKEN: &str = "ethkms-test-spare";
/// The user PIN of both (a test token's).
pub(crate) const PIN: &str = "ethkms-test-pin";
/// The security officer's PIN of both.
const SO_PIN: &str = "ethkms-test-so-pin";

/// Where Debian puts the module (the first that exists is used), unless `ETHKMS_SOFTHSM_MODULE` names one.
const MODULES: [&str; 3] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
];

/// What the tests need to find the tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SoftHsm {
    /// The PKCS#11 module.
    pub(crate) module: PathBuf,
    /// `softhsm2.conf` (`SOFTHSM2_CONF`).
    pub(crate) conf: PathBuf,
}

impl SoftHsm {
    /// The environment variables the tests read.
    pub(crate) fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SOFTHSM2_CONF", self.conf.display().to_string()),
            ("ETHKMS_TEST_PKCS11_MODULE", self.module.display().to_string()),
            ("ETHKMS_TEST_PKCS11_TOKEN", TOKEN.to_owned()),
            ("ETHKMS_TEST_PKCS11_SPARE_TOKEN", SPARE_TOKEN.to_owned()),
            ("ETHKMS_TEST_PKCS11_PIN", PIN.to_owned()),
        ]
    }
}

/// Installs SoftHSM2 if it is missing, writes its configuration into `state` (`target/services/softhsm/`)
/// and creates the tokens that are not there yet.
///
/// # Errors
/// If SoftHSM2 is missing and cannot be installed (not root, no `apt-get`), or a token cannot be created.
pub(crate) fn prepare(state: &Path) -> Result<SoftHsm> {
    let module = match module() {
        Some(module) => module,
        None => {
            install()?;
            module().ok_or(
                "softhsm2 was installed, but its module is in none of the usual places; set ETHKMS_SOFTHSM_MODULE",
            )?
        }
    };
    let tokens = state.join("tokens");
    std::fs::create_dir_all(&tokens).map_err(|error| format!("could not create {}: {error}", tokens.display()))?;
    let conf = state.join("softhsm2.conf");
    let text = format!(
        "# Written by `cargo xtask services up`: the test tokens of ethkms.\ndirectories.tokendir = {}\n\
         objectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
        tokens.display()
    );
    std::fs::write(&conf, text).map_err(|error| format!("could not write {}: {error}", conf.display()))?;
    let softhsm = SoftHsm { module, conf };
    let present = output(util(&softhsm).arg("--show-slots")).unwrap_or_default();
    for label in [TOKEN, SPARE_TOKEN] {
        if !has_token(&present, label) {
            run(util(&softhsm).args(["--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin", SO_PIN]))?;
        }
    }
    Ok(softhsm)
}

/// Whether `softhsm2-util --show-slots` lists a token labelled `label`.
fn has_token(slots: &str, label: &str) -> bool {
    slots.lines().any(|line| line.trim().strip_prefix("Label:").is_some_and(|found| found.trim() == label))
}

/// `softhsm2-util` with this configuration.
fn util(softhsm: &SoftHsm) -> Command {
    let mut command = Command::new("softhsm2-util");
    command.env("SOFTHSM2_CONF", &softhsm.conf);
    command
}

/// The module: `ETHKMS_SOFTHSM_MODULE`, else the first of [`MODULES`] that exists, if `softhsm2-util` runs.
fn module() -> Option<PathBuf> {
    output(Command::new("softhsm2-util").arg("--version"))?;
    match std::env::var_os("ETHKMS_SOFTHSM_MODULE").filter(|value| !value.is_empty()) {
        Some(chosen) => Some(PathBuf::from(chosen)).filter(|path| path.is_file()),
        None => MODULES.iter().map(PathBuf::from).find(|path| path.is_file()),
    }
}

/// `apt-get install -y softhsm2` (after `apt-get update`), as root.
fn install() -> Result {
    let root = output(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0");
    let apt = output(Command::new("apt-get").arg("--version")).is_some();
    if !root || !apt {
        return Err("SoftHSM2 is not installed, and xtask can install it only as root with apt-get: install \
                    Debian's `softhsm2` package (`sudo apt-get install softhsm2`), or name its module with \
                    ETHKMS_SOFTHSM_MODULE and put softhsm2-util on PATH"
            .into());
    }
    eprintln!("xtask: installing SoftHSM2 (apt-get install softhsm2)");
    let quiet = |command: &mut Command| {
        command.env("DEBIAN_FRONTEND", "noninteractive");
    };
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    quiet(&mut update);
    run(&mut update)?;
    let mut install = Command::new("apt-get");
    install.args(["install", "-y", "-qq", "--no-install-recommends", "softhsm2"]);
    quiet(&mut install);
    run(&mut install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_by_their_exact_label() {
        let slots = "Slot 1\n    Token info:\n        Label:            ethkms-test                     \n";
        assert!(has_token(slots, TOKEN));
        assert!(!has_token(slots, SPARE_TOKEN));
        assert!(!has_token("", TOKEN));
    }

    #[test]
    fn the_environment_names_the_module_the_tokens_and_the_configuration() {
        let softhsm = SoftHsm { module: "/m.so".into(), conf: "/s/softhsm2.conf".into() };
        let pairs = softhsm.pairs();
        let names: Vec<&str> = pairs.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "SOFTHSM2_CONF",
                "ETHKMS_TEST_PKCS11_MODULE",
                "ETHKMS_TEST_PKCS11_TOKEN",
                "ETHKMS_TEST_PKCS11_SPARE_TOKEN",
                "ETHKMS_TEST_PKCS11_PIN"
            ]
        );
        assert_eq!(pairs[0].1, "/s/softhsm2.conf");
    }
}
