//! `ethkms audit verify`: an audit log's hash chain, and the first record that breaks it.

use serde_json::json;

use super::Output;
use crate::cli::AuditVerifyArgs;
use crate::exit::{CliError, Exit};

pub(super) fn verify(output: Output, args: &AuditVerifyArgs) -> Result<(), CliError> {
    match ethkms::audit::verify(&args.file) {
        Ok(verified) => {
            output.emit(&json!({ "valid": true, "records": verified.records, "head": verified.head }), || {
                format!("valid: {} records, head {}", verified.records, verified.head)
            });
            Ok(())
        }
        Err(ethkms::audit::AuditError::Broken { line, seq, reason, .. }) => {
            output.emit(&json!({ "valid": false, "line": line, "seq": seq, "reason": reason }), || {
                format!("broken at line {line} (record {seq}): {reason}")
            });
            Err(CliError::new(
                Exit::InvalidSignature,
                format!("{} is broken at line {line}: {reason}", args.file.display()),
            ))
        }
        Err(error) => Err(CliError::usage(error.to_string())),
    }
}
