//! Least-privilege IAM policies: the application may only sign and read the public key of its key; the
//! administrator manages keys but may never sign. `ethkms policy iam` prints them.
//!
//! ```
//! use ethkms::iam::{Role, policy};
//!
//! let arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
//! let document = policy(arn, Role::App, Some(("Environment", "production")))?;
//! assert_eq!(document["Statement"][0]["Action"][0], "kms:Sign");
//! assert!(policy("arn:aws:kms:eu-west-1:1:key/x", Role::Admin, None).is_err());
//! # Ok::<(), ethkms::iam::IamError>(())
//! ```

use serde_json::{Value, json};

/// Who a policy is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// May only sign with, and read the public key of, the key.
    App,
    /// May create, alias, tag, describe, disable and schedule deletion, but never sign.
    Admin,
}

/// Why no policy can be written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IamError {
    /// The key ARN is not one of a single KMS key.
    #[error("`{arn}` is not a KMS key ARN ({reason}); expected arn:aws:kms:REGION:ACCOUNT:key/ID")]
    InvalidKeyArn {
        /// The ARN given.
        arn: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The parts of a KMS key ARN.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyArn<'a> {
    /// `aws`, `aws-cn`, `aws-us-gov`.
    pub partition: &'a str,
    /// The region.
    pub region: &'a str,
    /// The 12-digit account id.
    pub account: &'a str,
}

/// Checks `arn:PARTITION:kms:REGION:ACCOUNT:key/ID`.
///
/// # Errors
/// [`IamError::InvalidKeyArn`] naming what is wrong.
pub fn parse_key_arn(arn: &str) -> Result<KeyArn<'_>, IamError> {
    let invalid = |reason: &'static str| IamError::InvalidKeyArn { arn: arn.to_owned(), reason };
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts.as_slice() else {
        return Err(invalid("too few parts"));
    };
    if *prefix != "arn" || !partition.starts_with("aws") || *service != "kms" {
        return Err(invalid("not arn:aws…:kms"));
    }
    if region.is_empty() || account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit()) {
        return Err(invalid("the region must be set and the account be 12 digits"));
    }
    if !resource.strip_prefix("key/").is_some_and(|id| !id.is_empty() && !id.contains('*')) {
        return Err(invalid("it must name one key: key/ID"));
    }
    Ok(KeyArn { partition, region, account })
}

/// The policy document for `role` on the key `key_arn`, optionally only for principals carrying the tag
/// `principal_tag` (key, value).
///
/// # Errors
/// [`IamError::InvalidKeyArn`] if `key_arn` does not name one KMS key.
pub fn policy(key_arn: &str, role: Role, principal_tag: Option<(&str, &str)>) -> Result<Value, IamError> {
    let arn = parse_key_arn(key_arn)?;
    let tag_condition = principal_tag.map(|(key, value)| json!({ format!("aws:PrincipalTag/{key}"): value }));
    let with_tag = |mut condition: serde_json::Map<String, Value>| {
        if let Some(Value::Object(tag)) = &tag_condition {
            let equals = condition.entry("StringEquals").or_insert_with(|| json!({}));
            if let Value::Object(equals) = equals {
                equals.extend(tag.clone());
            }
        }
        Value::Object(condition)
    };
    let statement =
        |sid: &str, effect: &str, actions: &[&str], resource: Value, condition: serde_json::Map<String, Value>| {
            let mut statement = json!({ "Sid": sid, "Effect": effect, "Action": actions, "Resource": resource });
            let condition = with_tag(condition);
            if condition.as_object().is_some_and(|condition| !condition.is_empty()) {
                statement["Condition"] = condition;
            }
            statement
        };
    let statements = match role {
        Role::App => {
            let mut sign_conditions = serde_json::Map::new();
            sign_conditions.insert(
                "StringEquals".into(),
                json!({ "kms:SigningAlgorithm": "ECDSA_SHA_256", "kms:MessageType": "DIGEST" }),
            );
            vec![
                statement("EthkmsSignDigestsOnly", "Allow", &["kms:Sign"], json!(key_arn), sign_conditions),
                statement(
                    "EthkmsReadPublicKey",
                    "Allow",
                    &["kms:GetPublicKey"],
                    json!(key_arn),
                    serde_json::Map::new(),
                ),
            ]
        }
        Role::Admin => {
            let keys = format!("arn:{}:kms:{}:{}:key/*", arn.partition, arn.region, arn.account);
            let aliases = format!("arn:{}:kms:{}:{}:alias/*", arn.partition, arn.region, arn.account);
            let mut create_conditions = serde_json::Map::new();
            create_conditions.insert(
                "StringEquals".into(),
                json!({ "kms:KeySpec": "ECC_SECG_P256K1", "kms:KeyUsage": "SIGN_VERIFY" }),
            );
            vec![
                statement("EthkmsCreateSigningKeys", "Allow", &["kms:CreateKey"], json!("*"), create_conditions),
                statement(
                    "EthkmsList",
                    "Allow",
                    &["kms:ListKeys", "kms:ListAliases"],
                    json!("*"),
                    serde_json::Map::new(),
                ),
                statement(
                    "EthkmsManageKeys",
                    "Allow",
                    &[
                        "kms:CreateAlias",
                        "kms:UpdateAlias",
                        "kms:DescribeKey",
                        "kms:GetPublicKey",
                        "kms:ListResourceTags",
                        "kms:TagResource",
                        "kms:UntagResource",
                        "kms:DisableKey",
                        "kms:EnableKey",
                        "kms:ScheduleKeyDeletion",
                        "kms:CancelKeyDeletion",
                    ],
                    json!([keys, aliases]),
                    serde_json::Map::new(),
                ),
                // An explicit deny wins over any allow the administrator gets elsewhere.
                statement("EthkmsAdminNeverSigns", "Deny", &["kms:Sign"], json!("*"), serde_json::Map::new()),
            ]
        }
    };
    Ok(json!({ "Version": "2012-10-17", "Statement": statements }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn actions(policy: &Value, effect: &str) -> Vec<String> {
        policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|statement| statement["Effect"] == effect)
            .flat_map(|statement| {
                statement["Action"].as_array().unwrap().iter().map(|action| action.as_str().unwrap().to_owned())
            })
            .collect()
    }

    #[test]
    fn the_application_may_only_sign_digests_and_read_the_public_key() {
        let policy = policy(ARN, Role::App, Some(("Environment", "production"))).unwrap();
        assert_eq!(actions(&policy, "Allow"), ["kms:Sign", "kms:GetPublicKey"]);
        for statement in policy["Statement"].as_array().unwrap() {
            assert_eq!(statement["Resource"], ARN);
            assert_eq!(statement["Condition"]["StringEquals"]["aws:PrincipalTag/Environment"], "production");
        }
        assert_eq!(policy["Statement"][0]["Condition"]["StringEquals"]["kms:MessageType"], "DIGEST");
    }

    #[test]
    fn the_administrator_manages_but_never_signs() {
        let policy = policy(ARN, Role::Admin, None).unwrap();
        let allowed = actions(&policy, "Allow");
        assert!(!allowed.iter().any(|action| action == "kms:Sign" || action == "kms:*"), "{allowed:?}");
        for needed in [
            "kms:CreateKey",
            "kms:CreateAlias",
            "kms:TagResource",
            "kms:DescribeKey",
            "kms:DisableKey",
            "kms:ScheduleKeyDeletion",
        ] {
            assert!(allowed.iter().any(|action| action == needed), "{needed} missing");
        }
        assert_eq!(actions(&policy, "Deny"), ["kms:Sign"]);
        assert!(policy.to_string().contains("arn:aws:kms:eu-west-1:111122223333:alias/*"));
    }

    #[test]
    fn arns_are_checked() {
        for bad in [
            "",
            "arn:aws:kms:eu-west-1:111122223333:alias/x",
            "arn:aws:s3:::b",
            "arn:aws:kms:eu-west-1:12:key/x",
            "arn:aws:kms:eu-west-1:111122223333:key/*",
        ] {
            assert!(parse_key_arn(bad).is_err(), "{bad}");
        }
        assert!(parse_key_arn("arn:aws-cn:kms:cn-north-1:111122223333:key/abc").is_ok());
    }
}
