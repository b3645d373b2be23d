//! `ethkms policy iam`: the least-privilege IAM policies of [`ethkms::iam`], as JSON.

use crate::cli::IamArgs;
use crate::exit::CliError;

pub(super) fn iam(args: &IamArgs) -> Result<(), CliError> {
    let tag = args
        .principal_tag
        .as_deref()
        .map(|tag| {
            tag.split_once('=')
                .filter(|(key, _)| !key.is_empty())
                .ok_or_else(|| CliError::usage(format!("--principal-tag `{tag}`: expected KEY=VALUE")))
        })
        .transpose()?;
    let document = ethkms::iam::policy(&args.key_arn, args.role.into(), tag)?;
    println!("{}", serde_json::to_string_pretty(&document).unwrap_or_else(|_| document.to_string()));
    Ok(())
}
