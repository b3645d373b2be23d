//! The command line, as clap parses it.

// Doc comments here are the `--help` text people read, where backticks would show literally.
#![allow(clippy::doc_markdown)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Ethereum wallets whose keys live in AWS KMS or an HSM and never leave it.
#[derive(Debug, Parser)]
#[command(name = "ethkms", version, about, long_about = None, after_long_help = crate::exit::help())]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Where the keys live: AWS KMS, a PKCS#11 token (an HSM), or this process's memory (keys vanish when it
    /// exits).
    #[arg(long, global = true, value_enum, env = "ETHKMS_BACKEND", default_value = "aws")]
    pub(crate) backend: BackendKind,
    /// With --backend pkcs11: the token's PKCS#11 module (a shared library, e.g.
    /// /usr/lib/softhsm/libsofthsm2.so).
    #[arg(long, global = true, env = "ETHKMS_PKCS11_MODULE", value_name = "PATH")]
    pub(crate) pkcs11_module: Option<PathBuf>,
    /// With --backend pkcs11: the label of the token that holds the keys.
    #[arg(long, global = true, env = "ETHKMS_PKCS11_TOKEN", value_name = "LABEL")]
    pub(crate) pkcs11_token: Option<String>,
    /// With --backend pkcs11: a file holding the user PIN (otherwise the PIN is read from ETHKMS_PKCS11_PIN;
    /// never give it on the command line).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) pkcs11_pin_file: Option<PathBuf>,
    /// AWS region (otherwise AWS_REGION, AWS_DEFAULT_REGION or the profile's).
    #[arg(long, global = true, value_name = "REGION")]
    pub(crate) aws_region: Option<String>,
    /// AWS shared-config profile (otherwise AWS_PROFILE).
    #[arg(long, global = true, value_name = "PROFILE")]
    pub(crate) aws_profile: Option<String>,
    /// KMS endpoint URL, e.g. LocalStack (otherwise AWS_ENDPOINT_URL_KMS or AWS_ENDPOINT_URL).
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) kms_endpoint: Option<String>,
    /// Ethereum JSON-RPC URL.
    #[arg(
        long,
        short = 'r',
        global = true,
        env = "ETH_RPC_URL",
        default_value = "http://localhost:8545",
        value_name = "URL"
    )]
    pub(crate) rpc_url: ethkms::NodeUrl,
    /// Chain id (otherwise asked from the node).
    #[arg(long, global = true, env = "CHAIN_ID", value_name = "ID")]
    pub(crate) chain_id: Option<u64>,
    /// Print JSON (one object per line) instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Log what happens (-v: info, -vv: debug); also shows error sources.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
}

/// Key backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackendKind {
    /// AWS KMS (or anything speaking its API).
    Aws,
    /// A PKCS#11 token: an HSM (CloudHSM, YubiHSM 2, Luna, nShield, …) or SoftHSM2.
    Pkcs11,
    /// In-process keys, for trying things out.
    Memory,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create, list, inspect and rotate wallets.
    #[command(subcommand)]
    Wallet(WalletCommand),
    /// The ether (or ERC-20 token) balance of a key or address.
    Balance(BalanceArgs),
    /// Sign a message, typed data or a transaction.
    #[command(subcommand)]
    Sign(SignCommand),
    /// Sign and send ether or an ERC-20 token, and wait for the receipt.
    Send(SendArgs),
    /// Check that a signature of a message is by an address.
    Verify(VerifyArgs),
    /// Least-privilege policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Audit logs.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Run the signing service (JSON-RPC, REST withdrawals, policy, audit log) in this process, with the
    /// KMS options given here; stops gracefully on SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Customer deposit addresses: CREATE2 forwarders derived off-chain, found on chain, swept in batches by
    /// one key.
    #[command(subcommand)]
    Deposits(DepositsCommand),
    /// The service's webhooks: check a received request's signature (for receivers' tests).
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Approve (or reject) a withdrawal waiting for approvals: sign the service's EIP-712 message with KEY
    /// and post it (or print it for someone else to post).
    Approve(ApproveArgs),
    /// Withdrawals waiting for approvals, as the service lists them.
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// A key's destination allowlist on the service: list it, or approve (or cancel) an addition with an
    /// approver's key.
    #[command(subcommand)]
    Allowlist(AllowlistCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum AllowlistCommand {
    /// The key's allowlist: the configuration's entries, then the added ones with their state.
    List(AllowlistListArgs),
    /// Approve (or, with --reject, cancel) a proposed addition: sign the service's EIP-712 message with the
    /// approver's --key and post it (or print it for someone else to post).
    Approve(AllowlistApproveArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AllowlistListArgs {
    /// The service's name for the key whose allowlist it is (its `[keys.NAME]`).
    #[arg(value_name = "NAME")]
    pub(crate) allowlist_key: String,
    #[command(flatten)]
    pub(crate) service: ServiceArgs,
}

#[derive(Debug, Args)]
pub(crate) struct AllowlistApproveArgs {
    /// The service's name for the key whose allowlist it is (its `[keys.NAME]`).
    #[arg(value_name = "NAME")]
    pub(crate) allowlist_key: String,
    /// The proposed destination.
    pub(crate) address: String,
    #[command(flatten)]
    pub(crate) decision: DecisionArgs,
}

/// An approver's decision: with which key, which way, and whether to post it.
#[derive(Debug, Args)]
pub(crate) struct DecisionArgs {
    /// The approver's key (an id, ARN or alias): its address must be one of the key's approvers.
    #[arg(long, value_name = "KEY")]
    pub(crate) key: String,
    /// Reject instead: a withdrawal is then final (nothing is signed for it); an allowlist addition is
    /// cancelled (before it takes effect).
    #[arg(long)]
    pub(crate) reject: bool,
    /// Print the signed decision (the body the service takes) instead of posting it.
    #[arg(long)]
    pub(crate) print: bool,
    #[command(flatten)]
    pub(crate) service: ServiceArgs,
}

/// Where the signing service is and how to authenticate to it.
#[derive(Debug, Args)]
pub(crate) struct ServiceArgs {
    /// The service's URL (`http://127.0.0.1:8600`).
    #[arg(long, value_name = "URL")]
    pub(crate) service: String,
    /// The environment variable holding the bearer token of a client with the `approvals` method.
    #[arg(long, value_name = "VAR", default_value = "ETHKMS_SERVICE_TOKEN")]
    pub(crate) token_env: String,
}

#[derive(Debug, Args)]
pub(crate) struct ApproveArgs {
    /// The withdrawal's id.
    pub(crate) id: String,
    #[command(flatten)]
    pub(crate) decision: DecisionArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// The withdrawals waiting for approvals, oldest first, with the approvals they have.
    List(ServiceArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum WebhookCommand {
    /// Check a webhook request: its `Ethkms-Signature` header against its raw body, with the client's secret,
    /// and its timestamp within the window.
    Verify(WebhookVerifyArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("secret").required(true).args(["secret_env", "secret_file"])))]
pub(crate) struct WebhookVerifyArgs {
    /// The environment variable holding the webhook secret.
    #[arg(long, value_name = "VAR")]
    pub(crate) secret_env: Option<String>,
    /// The file holding the webhook secret (a trailing newline is not part of it).
    #[arg(long, value_name = "FILE")]
    pub(crate) secret_file: Option<PathBuf>,
    /// The value of the request's `Ethkms-Signature` header (`t=…,v1=…`).
    #[arg(long, value_name = "HEADER")]
    pub(crate) signature: String,
    /// The raw body as received; standard input if not given.
    #[arg(long, value_name = "FILE")]
    pub(crate) body_file: Option<PathBuf>,
    /// How far, in seconds, the signature's timestamp may be from now.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub(crate) tolerance_seconds: u64,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DepositsCommand {
    /// Deploy a deposit factory owned by KEY: the key that will sweep (or the treasury itself).
    DeployFactory(KeyArgs),
    /// The deposit addresses of customer references, or of a range of indices (no node, no KMS).
    Address(DepositAddressArgs),
    /// Find deposits to the addresses in a range of blocks (ether, and the tokens named).
    Scan(DepositScanArgs),
    /// Deploy and sweep to the treasury, in batches signed by KEY, the addresses holding ether worth more
    /// than its sweep, or a token named.
    Sweep(DepositSweepArgs),
}

/// Which deposit addresses: a factory, a treasury, and references or a range of indices.
#[derive(Debug, Args)]
pub(crate) struct DepositTargetArgs {
    /// The factory's address (from `ethkms deposits deploy-factory`).
    #[arg(long, value_name = "ADDRESS")]
    pub(crate) factory: String,
    /// The treasury every deposit goes to (the parent).
    #[arg(long, value_name = "ADDRESS")]
    pub(crate) parent: String,
    /// Customer references (1 to 200 characters, no control characters).
    pub(crate) references: Vec<String>,
    /// Indices START..END: the references "START" to "END-1", in decimal.
    #[arg(long, value_name = "START..END", conflicts_with = "references")]
    pub(crate) range: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct DepositAddressArgs {
    #[command(flatten)]
    pub(crate) target: DepositTargetArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DepositScanArgs {
    #[command(flatten)]
    pub(crate) target: DepositTargetArgs,
    /// The first block to read.
    #[arg(long, value_name = "BLOCK")]
    pub(crate) from_block: u64,
    /// The last block to read (otherwise the node's latest).
    #[arg(long, value_name = "BLOCK")]
    pub(crate) to_block: Option<u64>,
    /// An ERC-20 token whose transfers to the addresses count as deposits (repeatable).
    #[arg(long = "token", value_name = "ADDRESS")]
    pub(crate) tokens: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct DepositSweepArgs {
    /// The key that sweeps: the factory's owner (or the treasury's own key).
    #[arg(long)]
    pub(crate) key: String,
    #[command(flatten)]
    pub(crate) target: DepositTargetArgs,
    /// An ERC-20 token to sweep (repeatable); tokens not named are never touched.
    #[arg(long = "token", value_name = "ADDRESS")]
    pub(crate) tokens: Vec<String>,
    /// Deposit addresses per transaction.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=200))]
    pub(crate) batch: u16,
    /// Ether is swept only when worth more than this percentage of its share of the sweep's gas.
    #[arg(long, default_value_t = 200)]
    pub(crate) margin_percent: u64,
    /// Show what would be swept, send nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The service's TOML configuration (keys, policies, clients, upstream node, journal).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check an audit log's hash chain and report the first broken record.
    Verify(AuditVerifyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AuditVerifyArgs {
    /// The audit log (JSON lines).
    pub(crate) file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum WalletCommand {
    /// Create wallets (KMS keys, ECC_SECG_P256K1), one or many (deposit addresses).
    Create(CreateArgs),
    /// List wallets, optionally those with a tag.
    List(ListArgs),
    /// The address of a key.
    Address(KeyArgs),
    /// Move an alias to a new key (asymmetric KMS keys cannot rotate in place).
    Rotate(RotateArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// Alias for the key (`alias/` is added if missing); with --count, NAME-0, NAME-1, …
    #[arg(long)]
    pub(crate) alias: Option<String>,
    /// A tag KEY=VALUE (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub(crate) tags: Vec<String>,
    /// How many wallets to create.
    #[arg(long, default_value_t = 1)]
    pub(crate) count: u32,
    /// Batch name for --count: keys are tagged with it, and running again with the same name creates
    /// only those still missing (resume after an interruption).
    #[arg(long)]
    pub(crate) batch: Option<String>,
    /// Key description.
    #[arg(long)]
    pub(crate) description: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only keys with this tag KEY=VALUE (repeatable: all must match).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub(crate) tags: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    /// Key id, key ARN, alias (alias/NAME) or alias ARN.
    pub(crate) key: String,
}

#[derive(Debug, Args)]
pub(crate) struct RotateArgs {
    /// The alias to move (alias/NAME).
    pub(crate) alias: String,
    /// Also send the old key's whole ether balance (less the fee) to the new address.
    #[arg(long)]
    pub(crate) sweep: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BalanceArgs {
    /// A key (id, ARN, alias) or an address.
    pub(crate) target: String,
    /// An ERC-20 token address: show that token's balance instead of ether.
    #[arg(long, value_name = "ADDRESS")]
    pub(crate) token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SignCommand {
    /// Sign an EIP-191 personal message.
    Message(SignMessageArgs),
    /// Sign EIP-712 typed data: a file with the JSON of eth_signTypedData_v4 (`-` for standard input).
    TypedData(SignTypedDataArgs),
    /// Sign a transaction and print the raw signed transaction (missing fields come from the node).
    Tx(SignTxArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SignMessageArgs {
    /// The key.
    pub(crate) key: String,
    /// The message.
    pub(crate) message: String,
    /// The message is hexadecimal bytes (0x…), not text.
    #[arg(long)]
    pub(crate) hex: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SignTypedDataArgs {
    /// The key.
    pub(crate) key: String,
    /// The JSON file (`-` for standard input).
    pub(crate) file: PathBuf,
}

/// Transaction types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum TxType {
    /// Legacy, with EIP-155 replay protection.
    Legacy,
    /// EIP-2930 (access list).
    #[value(name = "2930")]
    Eip2930,
    /// EIP-1559 (the default).
    #[value(name = "1559")]
    Eip1559,
    /// EIP-7702: also signs an authorization delegating the key's account to --delegate.
    #[value(name = "7702")]
    Eip7702,
}

#[derive(Debug, Args)]
pub(crate) struct SignTxArgs {
    /// The key.
    pub(crate) key: String,
    #[command(flatten)]
    pub(crate) transaction: TransactionArgs,
    /// Transaction type.
    #[arg(long = "type", value_enum, default_value = "1559")]
    pub(crate) kind: TxType,
    /// Nonce (otherwise from the node).
    #[arg(long)]
    pub(crate) nonce: Option<u64>,
    /// Gas limit (otherwise estimated by the node).
    #[arg(long)]
    pub(crate) gas: Option<u64>,
    /// Gas price for legacy and 2930 transactions (e.g. 20gwei).
    #[arg(long)]
    pub(crate) gas_price: Option<String>,
    /// Max fee per gas for 1559 and 7702 transactions (e.g. 30gwei).
    #[arg(long)]
    pub(crate) max_fee: Option<String>,
    /// Max priority fee per gas (e.g. 1gwei).
    #[arg(long)]
    pub(crate) priority_fee: Option<String>,
    /// For 7702: the contract to delegate the key's account to.
    #[arg(long, value_name = "ADDRESS")]
    pub(crate) delegate: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct TransactionArgs {
    /// Recipient address.
    #[arg(long)]
    pub(crate) to: String,
    /// Amount: 0.1ether, 20gwei or wei; with --token, in whole tokens (e.g. 1.5).
    #[arg(long, default_value = "0")]
    pub(crate) value: String,
    /// Calldata, hexadecimal.
    #[arg(long)]
    pub(crate) data: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// The key.
    pub(crate) key: String,
    #[command(flatten)]
    pub(crate) transaction: TransactionArgs,
    /// An ERC-20 token address: transfer that token instead of ether.
    #[arg(long, value_name = "ADDRESS")]
    pub(crate) token: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The address that should have signed.
    #[arg(long)]
    pub(crate) address: String,
    /// The message.
    #[arg(long)]
    pub(crate) message: String,
    /// The 65-byte signature, hexadecimal.
    #[arg(long)]
    pub(crate) signature: String,
    /// The message is hexadecimal bytes (0x…), not text.
    #[arg(long)]
    pub(crate) hex: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Print a least-privilege IAM policy for an application or an administrator.
    Iam(IamArgs),
}

/// IAM roles (see `ethkms::iam::Role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Role {
    /// May only sign with, and read the public key of, the key.
    App,
    /// May create, alias, tag, describe, disable and schedule deletion, but never sign.
    Admin,
}

impl From<Role> for ethkms::iam::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::App => Self::App,
            Role::Admin => Self::Admin,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct IamArgs {
    /// The key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID).
    #[arg(long)]
    pub(crate) key_arn: String,
    /// Who the policy is for.
    #[arg(long, value_enum)]
    pub(crate) role: Role,
    /// Require this tag on the calling principal, KEY=VALUE (e.g. Environment=production).
    #[arg(long, value_name = "KEY=VALUE")]
    pub(crate) principal_tag: Option<String>,
}
