//! `exhub hub` and `exhub run`: the hub workers until Ctrl-C or SIGTERM, and the admin server
//! beside them.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use exhub_hub::pipeline::Hub;
use tokio_util::sync::CancellationToken;

use super::{Loaded, init_logging, load, shutdown_on_signal};

/// Runs hub workers on the config at `path` until a signal; in-flight batches finish first.
pub async fn hub(path: &Path, workers: Option<usize>) -> Result<()> {
    init_logging();
    let loaded = load(path)?;
    let workers = workers.or(loaded.config.hub.workers).unwrap_or(2);
    let shutdown = shutdown_on_signal();
    let hub = start(&loaded).await?;
    // A failed admin server stops the hub, as it stops the exchange in `exhub run`.
    let admin = admin(&loaded, &hub, &shutdown).await?.map(|serve| {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = serve.await;
            if served.is_err() {
                stop.cancel();
            }
            served
        })
    });
    tracing::info!(
        workers,
        archive = %loaded.config.hub.archive,
        amqp = %loaded.config.hub.amqp,
        "hub started"
    );
    Arc::new(hub)
        .run(workers, shutdown.clone())
        .await
        .context("hub stopped")?;
    if let Some(admin) = admin {
        shutdown.cancel();
        admin.await.context("the admin server panicked")??;
    }
    tracing::info!("hub stopped cleanly");
    Ok(())
}

/// The admin server on `[hub] admin`, when one is configured, serving until `shutdown`. The
/// address is bound here, so that one that cannot be bound fails the start with its cause; the
/// address bound is logged (port 0 takes a free one). An address in use is the exception:
/// several hub processes on one machine may share one routes.toml, and the first serves it;
/// the others say so and run without.
pub async fn admin(
    loaded: &Loaded,
    hub: &Hub,
    shutdown: &CancellationToken,
) -> Result<Option<impl Future<Output = Result<()>> + Send + 'static>> {
    let Some(addr) = &loaded.config.hub.admin else {
        return Ok(None);
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(
                address = %addr,
                "the admin address is in use (another hub process on this machine, or another \
                 program); this process serves no metrics"
            );
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("binding the admin address {addr}")),
    };
    let token = loaded
        .config
        .metrics_token(&loaded.base)
        .context("[hub] metrics_token_file")?;
    let bound = listener.local_addr()?;
    tracing::info!(
        address = %bound,
        token = token.is_some(),
        operators = loaded.config.operators.len(),
        "admin server listening: GET /metrics, the console at /console"
    );
    let (metrics, shutdown) = (hub.metrics(), shutdown.clone());
    let console = exhub_hub::console::Console::new(
        &loaded.config,
        Arc::clone(&loaded.registry),
        hub.parts(),
        hub.readings(),
        hub.archive().clone(),
    );
    Ok(Some(async move {
        exhub_hub::admin::serve(listener, metrics, token, Some(Arc::new(console)), shutdown)
            .await
            .context("admin server")
    }))
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
