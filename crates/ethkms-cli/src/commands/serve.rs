//! `ethkms serve --config FILE`: the signing service of `ethkms-server`, in this process. Key backend
//! settings come from the global options and the standard AWS environment; the rest from the TOML file
//! (see `ethkms_server::config`). Stops gracefully on SIGINT or SIGTERM, finishing requests in flight.

use ethkms_server::config::Config;
use ethkms_server::service::{Service, StartError};

use super::backend_settings;
use crate::cli::{Global, ServeArgs};
use crate::exit::{CliError, Exit};

pub(super) async fn serve(global: &Global, args: &ServeArgs) -> Result<(), CliError> {
    let path = &args.config;
    let text = std::fs::read_to_string(path)
        .map_err(|error| CliError::usage(format!("reading {}: {error}", path.display())))?;
    let config = Config::parse(&text).map_err(|error| CliError::usage(format!("{}: {error}", path.display())))?;
    let (listen, tls) = (config.listen, config.tls.clone());
    let backend = backend_settings(global)?.connect().await?;
    let service = Service::start(config, backend).await.map_err(|error| match error {
        StartError::Key { name, source } => CliError::from(source).context(&format!("key `{name}`")),
        StartError::Backend { name, source } => CliError::from(source).context(&format!("backend `{name}`")),
        other => CliError::new(Exit::Failure, other.to_string()),
    })?;
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|error| CliError::new(Exit::Failure, format!("listening on {listen}: {error}")))?;
    tracing::info!("listening on {listen} ({})", if tls.is_some() { "https" } else { "http" });
    ethkms_server::service::serve(service, listener, tls.as_ref(), ethkms_server::service::shutdown_signal())
        .await
        .map_err(|error| CliError::new(Exit::Failure, format!("serving on {listen}: {error}")))?;
    tracing::info!("stopped");
    Ok(())
}
