//! `exhub source NAME`, `exhub sink NAME` and `exhub run`: the adapters configured in
//! routes.toml, alone or together with the hub in one process. This is the one place that
//! knows every database kind: [`source_kind`] and [`sink_kind`] are the one `match` per role
//! (a new database is one crate and one arm in each). The rest turns a config entry into what
//! every adapter is told; the adapters do not know routes.toml.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, bail};
use exhub_connect::adapter::{Catalog, Kind, Role, SourceAdapter, parse_offset};
use exhub_connect::runner::AnySource;
use exhub_connect::source::SourceCommon;
use exhub_hub::config::{SourceConfig, SubscriberConfig};
use exhub_hub::pipeline::amqp_user;
use exhub_hub::secret::SecretUrl;
use exhub_sink::{DbSink, SinkAdapter, SinkSettings, TableTarget};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Loaded, init_logging, load, shutdown_on_signal};

/// Every source kind, by its name in routes.toml.
pub fn source_kind(kind: &str) -> Option<&'static dyn SourceAdapter> {
    match kind {
        "mysql" => Some(&exhub_mysql::config::Mysql),
        "postgres" => Some(&exhub_postgres::config::Postgres),
        "mssql" => Some(&exhub_mssql::config::Mssql),
        _ => None,
    }
}

/// Every database sink kind, by its name in routes.toml.
pub fn sink_kind(kind: &str) -> Option<&'static dyn SinkAdapter> {
    match kind {
        "mysql" => Some(&exhub_mysql::config::Mysql),
        "postgres" => Some(&exhub_postgres::config::Postgres),
        "mssql" => Some(&exhub_mssql::config::Mssql),
        _ => None,
    }
}

/// The kinds above, as the config check sees them.
pub struct Kinds;

/// Kind names the check lists in its messages.
const KNOWN: [&str; 3] = ["mysql", "postgres", "mssql"];

impl Catalog for Kinds {
    fn kind(&self, role: Role, kind: &str) -> Option<&dyn Kind> {
        match role {
            Role::Source => source_kind(kind).map(|k| k as &dyn Kind),
            Role::Sink => sink_kind(kind).map(|k| k as &dyn Kind),
        }
    }

    fn kinds(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        let sources = KNOWN.into_iter().filter(|k| source_kind(k).is_some()).collect();
        let sinks = KNOWN.into_iter().filter(|k| sink_kind(k).is_some()).collect();
        (sources, sinks)
    }
}

/// Runs one source until a signal (`reset`: forget its checkpoint first; `retire`: release
/// what it holds on the server instead, e.g. a PostgreSQL slot).
pub async fn source(path: &Path, name: &str, reset: bool, retire: bool) -> Result<()> {
    init_logging();
    let loaded = load(path)?;
    let Some(entry) = loaded.config.sources.iter().find(|s| s.name == name) else {
        bail!("no source {name:?} in {}", path.display());
    };
    let shutdown = shutdown_on_signal();
    let source = build_source(&loaded, entry)?;
    if retire {
        return source.retire().await.map_err(|e| anyhow!(e));
    }
    if reset {
        source.reset().context("resetting the checkpoint")?;
    }
    source.run(&shutdown).await.map_err(|e| anyhow!(e))
}

/// Runs one database sink until a signal.
pub async fn sink(path: &Path, name: &str) -> Result<()> {
    init_logging();
    let loaded = load(path)?;
    let Some(entry) = loaded
        .config
        .subscribers
        .iter()
        .find(|s| s.name == name && s.is_database())
    else {
        bail!("no database subscriber {name:?} in {}", path.display());
    };
    let shutdown = shutdown_on_signal();
    let sink = build_sink(&loaded, entry).await?;
    sink.run(&shutdown).await?;
    tracing::info!(sink = name, "sink stopped cleanly");
    Ok(())
}

/// Runs the hub, every database sink and every source (but those in `except`) in this process
/// until a signal. The parts run side by side; the first that fails is logged with its cause and stops the others
/// (the exchange exits non-zero); a signal drains every part cleanly.
pub async fn run(path: &Path, except: &[String]) -> Result<()> {
    init_logging();
    let loaded = load(path)?;
    let config = &loaded.config;
    for name in except {
        let known = config.sources.iter().any(|s| &s.name == name)
            || config.subscribers.iter().any(|s| s.name() == name && s.is_database());
        if !known {
            bail!("--except {name}: no source or database subscriber of that name in routes.toml");
        }
    }
    let runs = |name: &str| !except.iter().any(|e| e == name);
    let shutdown = shutdown_on_signal();
    let mut parts = Parts::default();
    let hub = Arc::new(super::serve::start(&loaded).await?);
    if let Some(admin) = super::serve::admin(&loaded, &hub, &shutdown).await? {
        parts.spawn("admin server".into(), admin);
    }
    let workers = loaded.config.hub.workers.unwrap_or(2);
    let token = shutdown.clone();
    parts.spawn("hub".into(), async move {
        hub.run(workers, token).await.context("hub stopped")
    });
    for entry in config.subscribers.iter().filter(|s| s.is_database() && runs(s.name())) {
        let sink = build_sink(&loaded, entry).await?;
        let token = shutdown.clone();
        let name = format!("sink {}", entry.name);
        parts.spawn(name, async move { sink.run(&token).await.map_err(anyhow::Error::from) });
    }
    for entry in config.sources.iter().filter(|s| runs(&s.name)) {
        let source = build_source(&loaded, entry)?;
        let token = shutdown.clone();
        let name = format!("source {}", entry.name);
        parts.spawn(name, async move { source.run(&token).await.map_err(|e| anyhow!(e)) });
    }
    tracing::info!(parts = parts.tasks.len(), "exchange running");
    let failed = supervise(parts, &shutdown).await;
    match failed {
        Some(e) => Err(e),
        None => {
            tracing::info!("exchange stopped cleanly");
            Ok(())
        }
    }
}

/// The parts of a running exchange: tasks, and the name of each (by task id, so that a part
/// that panics is named too).
#[derive(Default)]
struct Parts {
    tasks: JoinSet<Result<()>>,
    names: HashMap<tokio::task::Id, String>,
}

impl Parts {
    fn spawn(&mut self, name: String, part: impl std::future::Future<Output = Result<()>> + Send + 'static) {
        let handle = self.tasks.spawn(part);
        self.names.insert(handle.id(), name);
    }
}

/// Waits for every part, in the order they end. The first that fails (or panics, or ends
/// while the others run) is logged with its cause and cancels the rest; its error is returned.
async fn supervise(mut parts: Parts, shutdown: &CancellationToken) -> Option<anyhow::Error> {
    let mut failed = None;
    while let Some(joined) = parts.tasks.join_next_with_id().await {
        let id = match &joined {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        let name = parts.names.remove(&id).unwrap_or_else(|| "a part".into());
        let error = match joined {
            Ok((_, Ok(()))) if shutdown.is_cancelled() => continue,
            Ok((_, Ok(()))) => anyhow!("{name} ended on its own"),
            Ok((_, Err(e))) => e.context(name),
            Err(e) => anyhow!("{name} panicked: {e}"),
        };
        if failed.is_none() {
            tracing::error!(
                error = format!("{error:#}"),
                "a part of the exchange stopped; stopping the exchange"
            );
            shutdown.cancel();
            failed = Some(error);
        } else {
            tracing::warn!(error = format!("{error:#}"), "stopping");
        }
    }
    failed
}

fn build_source(loaded: &Loaded, entry: &SourceConfig) -> Result<Box<dyn AnySource>> {
    let config = &loaded.config;
    let what = format!("source {:?}", entry.name);
    let kind = source_kind(&entry.kind).ok_or_else(|| anyhow!("{what}: unknown kind {:?}", entry.kind))?;
    let amqp = org_login(loaded, &entry.org, entry.amqp.as_ref(), &what)?;
    let base = &loaded.base;
    let checkpoint = match &entry.checkpoint {
        Some(p) => base.join(p),
        None => base.join("exhub-state").join(format!("{}.json", entry.name)),
    };
    let offset_secs = match &entry.time_zone {
        Some(tz) => Some(parse_offset(tz).ok_or_else(|| anyhow!("{what}: bad time_zone {tz:?}"))?),
        None => None,
    };
    let common = SourceCommon {
        name: entry.name.clone(),
        org: entry.org.clone(),
        url: entry.url.clone(),
        snapshot: entry.snapshot,
        tables: entry.tables.clone(),
        checkpoint,
        amqp_user: amqp_user(&amqp),
        amqp,
        topology: config.hub.topology(),
        signer: config
            .org_signer(&entry.org, base)
            .with_context(|| format!("{what}: the signing key of org {:?}", entry.org))?
            .map(Arc::new),
        offset_secs,
        heartbeat: config.hub.heartbeat(),
    };
    kind.build(common, &entry.options, Arc::clone(&loaded.registry))
        .map_err(|e| anyhow!("{what}: {e}"))
}

/// The AMQP login of an adapter of `org` (never the hub's: see `Config::org_login`).
fn org_login(loaded: &Loaded, org: &str, endpoint: Option<&SecretUrl>, what: &str) -> Result<SecretUrl> {
    loaded
        .config
        .org_login(org, endpoint, &loaded.base)
        .with_context(|| format!("{what}: the AMQP login of org {org:?} (`exhub provision` writes its password file)"))
}

async fn build_sink(loaded: &Loaded, entry: &SubscriberConfig) -> Result<DbSink> {
    let config = &loaded.config;
    let what = format!("sink {:?}", entry.name);
    let kind = sink_kind(&entry.kind).ok_or_else(|| anyhow!("{what}: unknown kind {:?}", entry.kind))?;
    let url = entry.url.as_ref().ok_or_else(|| anyhow!("{what}: no url"))?;
    let amqp = org_login(loaded, &entry.org, entry.amqp.as_ref(), &what)?;
    let tables: Vec<TableTarget> = entry
        .apply
        .iter()
        .map(|a| TableTarget {
            doc_type: a.doc_type.clone(),
            table: a.table.clone(),
            columns: a.columns.clone(),
        })
        .collect();
    let target = kind
        .connect(url.expose(), &tables)
        .await
        .map_err(|e| anyhow!("{what}: {e}"))?;
    let settings = SinkSettings {
        name: entry.name.clone(),
        tables,
        amqp_user: amqp_user(&amqp),
        amqp,
        topology: config.hub.topology(),
        hub_user: config.hub.user(),
        hub_keys: exhub_connect::sign::Keyring::from_lines(&config.hub.public_keys).context("[hub] public_keys")?,
        signer: config
            .org_signer(&entry.org, &loaded.base)
            .with_context(|| format!("{what}: the signing key of org {:?}", entry.org))?
            .map(Arc::new),
        kind: entry.kind.clone(),
        heartbeat: config.hub.heartbeat(),
    };
    Ok(DbSink::new(settings, target, Arc::clone(&loaded.registry)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_known_in_both_roles_and_named_as_matched() {
        let (sources, sinks) = Kinds.kinds();
        assert_eq!(sources, KNOWN);
        assert_eq!(sinks, KNOWN);
        for kind in KNOWN {
            assert_eq!(source_kind(kind).map(|k| k.kind()), Some(kind));
            assert_eq!(sink_kind(kind).map(|k| k.kind()), Some(kind));
        }
        assert!(source_kind("oracle").is_none());
    }

    #[tokio::test]
    async fn the_first_part_that_fails_stops_the_others() {
        let shutdown = CancellationToken::new();
        let mut parts = Parts::default();
        let token = shutdown.clone();
        // A part that runs until told to stop, like the hub.
        parts.spawn("hub".into(), async move {
            token.cancelled().await;
            Ok(())
        });
        parts.spawn("source legacy".into(), async { Err(anyhow!("binlog purged")) });
        let failed = supervise(parts, &shutdown).await.expect("a failure");
        assert!(shutdown.is_cancelled());
        assert_eq!(format!("{failed:#}"), "source legacy: binlog purged");
    }

    #[tokio::test]
    async fn a_part_that_panics_is_named() {
        let shutdown = CancellationToken::new();
        let mut parts = Parts::default();
        parts.spawn("sink mirror".into(), async { panic!("boom") });
        let failed = supervise(parts, &shutdown).await.expect("a failure");
        assert!(format!("{failed:#}").starts_with("sink mirror panicked"), "{failed:#}");
        assert!(shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn a_signal_drains_every_part_cleanly() {
        let shutdown = CancellationToken::new();
        let mut parts = Parts::default();
        for name in ["hub", "sink s"] {
            let token = shutdown.clone();
            parts.spawn(name.into(), async move {
                token.cancelled().await;
                Ok(())
            });
        }
        shutdown.cancel();
        assert!(supervise(parts, &shutdown).await.is_none());
    }
}
