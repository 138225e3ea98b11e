//! `exhub hub` and `exhub run`: the hub workers until Ctrl-C or SIGTERM.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use exhub_hub::pipeline::Hub;

use super::{Loaded, init_logging, load, shutdown_on_signal};

/// Runs hub workers on the config at `path` until a signal; in-flight batches finish first.
pub async fn hub(path: &Path, workers: Option<usize>) -> Result<()> {
    init_logging();
    let loaded = load(path)?;
    let workers = workers.or(loaded.config.hub.workers).unwrap_or(2);
    let shutdown = shutdown_on_signal();
    let hub = start(&loaded).await?;
    tracing::info!(
        workers,
        archive = %loaded.config.hub.archive,
        amqp = %loaded.config.hub.amqp,
        "hub started"
    );
    Arc::new(hub).run(workers, shutdown).await.context("hub stopped")?;
    tracing::info!("hub stopped cleanly");
    Ok(())
}

/// The hub of a loaded config, with its signing key (for `exhub hub` and `exhub run`).
pub async fn start(loaded: &Loaded) -> Result<Hub> {
    let signer = loaded
        .config
        .hub_signer(&loaded.base)
        .context("the hub's signing key")?;
    Hub::new(&loaded.config, Arc::clone(&loaded.registry), signer)
        .await
        .context("starting the hub")
}
