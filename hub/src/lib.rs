//! # exhub-hub — the exchange center
//!
//! The configuration of the whole exchange (routes.toml: [`config`]), its whole-graph check
//! ([`check`]), route filters ([`filter`]), secrets that cannot leak ([`secret`]) and TLS settings
//! that cannot be quietly dropped ([`tls`]); the hub
//! itself: the [`gate`] every document passes, the [`router`], the [`archive`] (转储) and the
//! [`pipeline`] that runs them over RabbitMQ, counting what it does in [`metrics`], which the
//! [`admin`] server serves, with the broker's queue depths ([`queues`]); supervision: the parts'
//! heartbeats ([`parts`]), the early warning's rules and levels ([`alerts`]) and the one
//! process that watches them ([`supervise`]). The `exhub` binary (src/main.rs and src/cmd/) is
//! the one place that dispatches commands.

pub mod admin;
pub mod alerts;
pub mod archive;
pub mod check;
pub mod config;
pub mod console;
pub mod deliveries;
pub mod dlq;
pub mod filter;
pub mod gate;
pub mod metrics;
pub mod parts;
pub mod pipeline;
pub mod process;
pub mod provision;
pub mod queues;
pub mod router;
pub mod stats;
pub mod supervise;
pub use exhub_connect::secret;
pub mod tls;

use std::path::Path;

use exhub_schemas::{Registry, SchemaError};

/// The built-in schemas plus the config's extra schema directory, if any.
pub fn registry_for(file: &config::ConfigFile) -> Result<Registry, SchemaError> {
    let dir = file
        .config
        .as_ref()
        .and_then(|c| c.hub.schemas.as_deref())
        .map(|d| file.base_dir().join(d));
    registry_with(dir.as_deref())
}

/// The built-in schemas plus an optional directory.
pub fn registry_with(dir: Option<&Path>) -> Result<Registry, SchemaError> {
    let mut registry = Registry::builtin()?;
    if let Some(dir) = dir {
        registry.load_dir(dir)?;
    }
    Ok(registry)
}
