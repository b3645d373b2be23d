//! LocalStack with only KMS: its command line (through `xtask/services/run_localstack.py`, in host
//! mode, with its files and a self-signed TLS certificate in `target/services/localstack-state/`; see
//! [`command`] for why each setting) and its health check.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::http_request;
use super::state_dir;
use crate::Result;
use crate::command::workspace_root;

/// The script in `xtask/services/` that runs `localstack.runtime.main` with its gateway listening
/// on 127.0.0.1 only (LocalStack's own listens on every interface, whatever `GATEWAY_LISTEN` says).
pub(super) const LAUNCHER: &str = "run_localstack.py";

/// How long LocalStack may take to report KMS running (it is usually 2-20 s).
pub(super) const TIMEOUT: Duration = Duration::from_secs(180);

/// Whether LocalStack answers on `port` with KMS ready.
pub(super) fn healthy(port: u16) -> bool {
    http_request(port, "GET", "/_localstack/health", None)
        .is_ok_and(|response| response.status == 200 && kms_ready(&response.body))
}

/// LocalStack with only KMS, on 127.0.0.1:`port`, its files under
/// `target/services/localstack-state/`.
pub(super) fn command(python: &Path, port: u16) -> Result<Command> {
    let state = state_dir().join("localstack-state");
    std::fs::create_dir_all(&state).map_err(|error| format!("could not create {}: {error}", state.display()))?;
    let certificate = state.join("server.test.pem");
    if !certificate.is_file() {
        make_certificate(python, &certificate)?;
    }
    let launcher = workspace_root().join("xtask").join("services").join(LAUNCHER);
    if !launcher.is_file() {
        return Err(format!("{} is missing from this checkout", launcher.display()).into());
    }
    let mut command = Command::new(python);
    command
        .arg(&launcher)
        .current_dir(&state)
        .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("SERVICES", "kms")
        .env("EAGER_SERVICE_LOADING", "1")
        // LocalStack takes any machine with /.dockerenv (CI runners, dev containers) for its own
        // Docker image and then writes to /var/lib/localstack, /usr/lib/localstack, /etc/localstack
        // and /tmp/localstack. Told it runs on the host, it keeps its files under FILESYSTEM_ROOT
        // (by default inside the virtualenv, which checkouts share, and it empties its tmp there on
        // every start): this checkout's own directory. (TMPDIR is left alone: LocalStack reads it
        // as a deprecated setting.)
        .env("OVERRIDE_IN_DOCKER", "0")
        .env("FILESYSTEM_ROOT", &state)
        // Its gateway also speaks TLS, with a certificate it downloads from localstack.cloud (two
        // 5-second timeouts when offline) or else generates with an API pyOpenSSL 26 removed, which
        // makes the start fail: it gets the one [`make_certificate`] made instead.
        .env("SKIP_SSL_CERT_DOWNLOAD", "1")
        .env("CUSTOM_SSL_CERT_PATH", &certificate)
        // Not needed for KMS, and reaching beyond 127.0.0.1:PORT: a DNS server on port 53 of every
        // interface, and analytics events sent to localstack.cloud.
        .env("DNS_ADDRESS", "0")
        .env("DISABLE_EVENTS", "1");
    Ok(command)
}

/// Writes a self-signed certificate for localhost and its private key, PEM, to `path`, with the
/// `cryptography` package of LocalStack's virtualenv.
fn make_certificate(python: &Path, path: &Path) -> Result {
    let script = r#"
import datetime, ipaddress, os, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
now = datetime.datetime.now(datetime.timezone.utc)
names = [x509.DNSName("localhost"), x509.DNSName("localhost.localstack.cloud"),
         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
certificate = (
    x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(days=1))
    .not_valid_after(now + datetime.timedelta(days=3650))
    .add_extension(x509.SubjectAlternativeName(names), critical=False)
    .sign(key, hashes.SHA256())
)
pem = key.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
) + certificate.public_bytes(serialization.Encoding.PEM)
with open(sys.argv[1] + ".partial", "wb") as file:
    file.write(pem)
os.replace(sys.argv[1] + ".partial", sys.argv[1])
"#;
    let made = Command::new(python)
        .args(["-c", script])
        .arg(path)
        .output()
        .map_err(|error| format!("could not run {}: {error}", python.display()))?;
    if made.status.success() {
        Ok(())
    } else {
        Err(format!(
            "could not make LocalStack's TLS certificate {} ({}): {}",
            path.display(),
            made.status,
            String::from_utf8_lossy(&made.stderr).trim()
        )
        .into())
    }
}

/// Whether a `/_localstack/health` body shows KMS `running` or `available`.
fn kms_ready(body: &str) -> bool {
    serde_json::from_str::<Value>(body).ok().is_some_and(|health| {
        matches!(health.pointer("/services/kms").and_then(Value::as_str), Some("running" | "available"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localstack_health_is_read() {
        let health =
            |kms: &str| format!(r#"{{"services": {{"kms": "{kms}", "s3": "disabled"}}, "edition": "community"}}"#);
        assert!(kms_ready(&health("running")));
        assert!(kms_ready(&health("available")));
        assert!(!kms_ready(&health("initializing")));
        assert!(!kms_ready(&health("error")));
        assert!(!kms_ready(r#"{"services": {"s3": "running"}}"#));
        assert!(!kms_ready("not json"));
    }
}
