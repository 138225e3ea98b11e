//! The commands that talk to the running exchange (RabbitMQ and the archive): one module per
//! command family, sharing here how they load the config, start logging, and stop on a signal.

pub mod adapters;
pub mod archive;
pub mod audit;
pub mod dlq;
pub mod keys;
pub mod provision;
pub mod publish;
pub mod serve;
pub mod stats;
pub mod tail;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use exhub_hub::check::check;
use exhub_hub::config::{Config, ConfigFile, Severity};
use exhub_schemas::{Registry, Timestamp};
use tokio_util::sync::CancellationToken;

/// A checked config and its schemas. A config with errors does not start anything.
pub struct Loaded {
    /// The exchange description, every URL's password read from its file or variable.
    pub config: Config,
    /// The directory of routes.toml (relative paths in it are against this).
    pub base: std::path::PathBuf,
    /// Its schemas.
    pub registry: Arc<Registry>,
}

/// Loads routes.toml, refusing it (with every problem printed) if the check finds errors, and
/// reads every URL's password from its file or environment variable.
pub fn load(path: &Path) -> Result<Loaded> {
    let mut loaded = load_checked(path)?;
    loaded.config.resolve_secrets(&loaded.base)?;
    Ok(loaded)
}

/// As [`load`], but leaves passwords where they are (for `exhub provision`, which may create
/// the files first).
pub fn load_checked(path: &Path) -> Result<Loaded> {
    let file = ConfigFile::load(path).with_context(|| format!("reading {}", path.display()))?;
    let registry = exhub_hub::registry_for(&file).context("loading schemas")?;
    let (problems, _) = check(&file, &registry, &adapters::Kinds);
    let errors: Vec<_> = problems.iter().filter(|p| p.severity == Severity::Error).collect();
    if !errors.is_empty() {
        for p in &errors {
            eprintln!("{}: {p}", path.display());
        }
        bail!(
            "{} has {} error(s); `exhub check` lists them",
            path.display(),
            errors.len()
        );
    }
    let base = file.base_dir();
    let Some(config) = file.config else {
        bail!("{} could not be read", path.display());
    };
    Ok(Loaded {
        config,
        base,
        registry: Arc::new(registry),
    })
}

/// Logging to stderr; `EXHUB_LOG` (or `RUST_LOG`) filters, default `info`.
pub fn init_logging() {
    let filter = std::env::var("EXHUB_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,lapin=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// A token cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    t.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested: finishing in-flight work");
        t.cancel();
    });
    token
}

/// Parses `--since`/`--until`: an RFC 3339 timestamp, or a date (midnight UTC).
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Some(t) = Timestamp::parse(text) {
        return Ok(t.unix_micros());
    }
    if let Some(t) = Timestamp::parse(&format!("{text}T00:00:00Z")) {
        return Ok(t.unix_micros());
    }
    Err(format!(
        "{text:?} is neither a date (2026-11-22) nor a timestamp (2026-11-22T08:00:00+08:00)"
    ))
}

/// Parses `--key FIELD=VALUE`.
pub fn parse_key(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((f, v)) if !f.is_empty() => Ok((f.to_owned(), v.to_owned())),
        _ => Err(format!("{text:?} is not FIELD=VALUE")),
    }
}

/// The archive of a loaded config, signing the audit records it appends with the hub's key
/// when there is one.
pub async fn open_archive(loaded: &Loaded) -> Result<exhub_hub::archive::Archive> {
    let config = &loaded.config;
    let signer = config.hub_signer(&loaded.base).context("the hub's signing key")?;
    let archive = exhub_hub::archive::Archive::open(config.hub.archive.expose())
        .await
        .with_context(|| format!("opening the archive {}", config.hub.archive))?;
    Ok(archive.signing_audit(signer.map(Arc::new)))
}

/// Who runs this command, for the audit log: `os-user@host`.
pub fn operator() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!("{user}@{host}")
}
