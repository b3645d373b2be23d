//! `ethkms-server --config FILE`: the signing service. Key backend settings come from the standard AWS
//! environment (region, credentials, `AWS_ENDPOINT_URL`); the rest from the TOML file (see
//! `ethkms_server::config`). Stops gracefully on SIGINT or SIGTERM, finishing requests in flight.

use std::process::ExitCode;
use std::sync::Arc;

use ethkms::BackendSettings;
use ethkms_server::config::Config;
use ethkms_server::service::Service;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ethkms-server: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // The service's own information by default; `RUST_LOG` overrides (e.g. `RUST_LOG=debug`).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,ethkms_server=info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let path = match arguments.as_slice() {
        [flag, path] if flag == "--config" => path.clone(),
        _ => return Err("usage: ethkms-server --config FILE".into()),
    };
    let text = std::fs::read_to_string(&path).map_err(|error| format!("reading {path}: {error}"))?;
    let config = Config::parse(&text)?;
    let listen = config.listen;
    let tls = config.tls.clone();
    let backend = BackendSettings::aws_from_env().connect().await?;
    let service: Arc<Service> = Service::start(config, backend).await?;
    let listener = std::net::TcpListener::bind(listen).map_err(|error| format!("listening on {listen}: {error}"))?;
    eprintln!("ethkms-server listening on {listen} ({})", if tls.is_some() { "https" } else { "http" });
    ethkms_server::service::serve(service, listener, tls.as_ref(), ethkms_server::service::shutdown_signal()).await?;
    eprintln!("ethkms-server stopped");
    Ok(())
}
