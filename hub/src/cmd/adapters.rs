//! `exhub source NAME`, `exhub sink NAME` and `exhub run`: the adapters configured in
//! routes.toml, alone or together with the hub in one process. This module turns a config entry
//! into each adapter's settings (the adapters do not know routes.toml).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use exhub_connect::source::SourceCommon;
use exhub_hub::config::{DbSink, DbSource, SourceConfig, SubscriberConfig, parse_offset};
use exhub_hub::pipeline::amqp_user;
use exhub_hub::secret::SecretUrl;
use exhub_mssql::MssqlSource;
use exhub_mysql::{MysqlSource, SourceSettings};
use exhub_postgres::PostgresSource;
use exhub_sink::{DbSink as Sink, SinkSettings, TableTarget};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Loaded, init_logging, load, shutdown_on_signal};

/// Runs one source until a signal.
pub async fn source(path: &Path, name: &str, reset: bool, drop_slot: bool) -> Result<()> {
    init_logging();
    let loaded = load(path)?;
    let Some(source) = loaded.config.sources.iter().find(|s| s.common().name == name) else {
        bail!("no source {name:?} in {}", path.display());
    };
    let shutdown = shutdown_on_signal();
    let source = build_source(&loaded, source)?;
    if drop_slot {
        return source.drop_slot().await;
    }
    if reset {
        source.reset().context("resetting the checkpoint")?;
    }
    source.run(&shutdown).await
}

/// Runs one database sink until a signal.
pub async fn sink(path: &Path, name: &str) -> Result<()> {
    init_logging();
    let loaded = load(path)?;
    let Some(db) = loaded
        .config
        .subscribers
        .iter()
        .find(|s| s.name() == name)
        .and_then(SubscriberConfig::database)
    else {
        bail!("no database subscriber {name:?} in {}", path.display());
    };
    let shutdown = shutdown_on_signal();
    let sink = build_sink(&loaded, db).await?;
    sink.run(&shutdown).await?;
    tracing::info!(sink = name, "sink stopped cleanly");
    Ok(())
}

/// Runs the hub, every source and every database sink in this process until a signal. A part
/// that fails stops the others.
pub async fn run(path: &Path) -> Result<()> {
    init_logging();
    let loaded = load(path)?;
    let shutdown = shutdown_on_signal();
    let tracker = TaskTracker::new();
    let mut parts: Vec<(String, tokio::task::JoinHandle<Result<()>>)> = Vec::new();
    let hub = Arc::new(super::serve::start(&loaded).await?);
    let workers = loaded.config.hub.workers.unwrap_or(2);
    let token = shutdown.clone();
    parts.push((
        "hub".into(),
        tracker.spawn(async move { hub.run(workers, token).await.context("hub stopped") }),
    ));
    for sub in &loaded.config.subscribers {
        let Some(db) = sub.database() else { continue };
        let sink = build_sink(&loaded, db).await?;
        let token = shutdown.clone();
        parts.push((
            format!("sink {}", db.name),
            tracker.spawn(async move { sink.run(&token).await.map_err(anyhow::Error::from) }),
        ));
    }
    for source in &loaded.config.sources {
        let source = build_source(&loaded, source)?;
        let token = shutdown.clone();
        parts.push((
            format!("source {}", source.name()),
            tracker.spawn(async move { source.run(&token).await }),
        ));
    }
    tracker.close();
    tracing::info!(parts = parts.len(), "exchange running");
    let mut failed = None;
    for (name, handle) in parts {
        let outcome = handle.await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(part = %name, error = format!("{e:#}"), "stopped with an error; stopping the exchange");
                shutdown.cancel();
                failed.get_or_insert(e.context(name));
            }
            Err(e) => {
                shutdown.cancel();
                failed.get_or_insert(anyhow::anyhow!("{name} panicked: {e}"));
            }
        }
    }
    tracker.wait().await;
    match failed {
        Some(e) => Err(e),
        None => {
            tracing::info!("exchange stopped cleanly");
            Ok(())
        }
    }
}

/// A source of any kind built so far.
enum Source {
    Mysql(Box<MysqlSource>, String),
    Postgres(Box<PostgresSource>, String),
    Mssql(Box<MssqlSource>, String),
}

impl Source {
    fn name(&self) -> &str {
        match self {
            Source::Mysql(_, name) | Source::Postgres(_, name) | Source::Mssql(_, name) => name,
        }
    }

    fn reset(&self) -> Result<()> {
        match self {
            Source::Mysql(s, _) => Ok(s.reset()?),
            Source::Postgres(s, _) => Ok(s.reset()?),
            Source::Mssql(s, _) => Ok(s.reset()?),
        }
    }

    async fn drop_slot(&self) -> Result<()> {
        match self {
            Source::Mysql(_, name) | Source::Mssql(_, name) => {
                bail!("source {name:?}: --drop-slot is for PostgreSQL sources (this kind holds no slot)")
            }
            Source::Postgres(s, _) => Ok(s.drop_slot().await?),
        }
    }

    async fn run(&self, cancel: &CancellationToken) -> Result<()> {
        match self {
            Source::Mysql(s, _) => s.run(cancel).await?,
            Source::Postgres(s, _) => s.run(cancel).await?,
            Source::Mssql(s, _) => s.run(cancel).await?,
        }
        tracing::info!(source = %self.name(), "source stopped cleanly");
        Ok(())
    }
}

fn build_source(loaded: &Loaded, source: &SourceConfig) -> Result<Source> {
    let config = &loaded.config;
    let s: &DbSource = source.common();
    let amqp = org_login(loaded, &s.org, s.amqp.as_ref(), &format!("source {:?}", s.name))?;
    let base = &loaded.base;
    let checkpoint = match &s.checkpoint {
        Some(p) => base.join(p),
        None => base.join("exhub-state").join(format!("{}.json", s.name)),
    };
    let offset_secs = match &s.time_zone {
        Some(tz) => Some(parse_offset(tz).with_context(|| format!("source {:?}: bad time_zone {tz:?}", s.name))?),
        None => None,
    };
    let registry = Arc::clone(&loaded.registry);
    let common = SourceCommon {
        name: s.name.clone(),
        org: s.org.clone(),
        url: s.url.expose().to_owned(),
        snapshot: s.snapshot,
        tables: s.tables.clone(),
        checkpoint,
        amqp: amqp.expose().to_owned(),
        topology: config.hub.topology(),
        amqp_user: amqp_user(&amqp),
        signer: config
            .org_signer(&s.org, base)
            .with_context(|| format!("source {:?}: the signing key of org {:?}", s.name, s.org))?
            .map(Arc::new),
    };
    match source {
        SourceConfig::Mysql(_) => {
            let settings = SourceSettings {
                common,
                server_id: s
                    .server_id
                    .unwrap_or_else(|| server_id(&format!("{}\n{}", s.name, s.url.expose()))),
                offset_secs,
            };
            let source = MysqlSource::new(settings, registry)?;
            Ok(Source::Mysql(Box::new(source), s.name.clone()))
        }
        SourceConfig::Postgres(_) => {
            // Slot and publication names: lower case letters, digits and underscores.
            let default_name = format!(
                "exhub_{}",
                s.name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    })
                    .collect::<String>()
            );
            let settings = exhub_postgres::SourceSettings {
                common,
                slot: s.slot.clone().unwrap_or_else(|| default_name.clone()),
                publication: s.publication.clone().unwrap_or(default_name),
                offset_secs,
                lag_warn_bytes: i64::try_from(s.lag_warn_mb.unwrap_or(1024).saturating_mul(1 << 20))
                    .unwrap_or(i64::MAX),
            };
            let source = PostgresSource::new(settings, registry)?;
            Ok(Source::Postgres(Box::new(source), s.name.clone()))
        }
        SourceConfig::Mssql(_) => {
            let settings = exhub_mssql::SourceSettings {
                common,
                offset_secs: offset_secs.unwrap_or(0),
                poll: std::time::Duration::from_millis(s.poll_ms.unwrap_or(1000).max(10)),
            };
            let source = MssqlSource::new(settings, registry)?;
            Ok(Source::Mssql(Box::new(source), s.name.clone()))
        }
    }
}

/// The AMQP login of an adapter of `org` (never the hub's: see [`Config::org_login`]).
fn org_login(loaded: &Loaded, org: &str, endpoint: Option<&SecretUrl>, what: &str) -> Result<SecretUrl> {
    loaded
        .config
        .org_login(org, endpoint, &loaded.base)
        .with_context(|| format!("{what}: the AMQP login of org {org:?} (`exhub provision` writes its password file)"))
}

async fn build_sink(loaded: &Loaded, db: &DbSink) -> Result<Sink> {
    let config = &loaded.config;
    let amqp = org_login(loaded, &db.org, db.amqp.as_ref(), &format!("sink {:?}", db.name))?;
    let settings = SinkSettings {
        name: db.name.clone(),
        url: exhub_hub::tls::sink_url(&db.url).map_err(|e| anyhow::anyhow!("sink {:?}: {e}", db.name))?,
        tables: db
            .apply
            .iter()
            .map(|a| TableTarget {
                doc_type: a.doc_type.clone(),
                table: a.table.clone(),
                columns: a.columns.clone(),
            })
            .collect(),
        amqp: amqp.expose().to_owned(),
        topology: config.hub.topology(),
        amqp_user: amqp_user(&amqp),
        hub_user: config.hub.user(),
        hub_keys: exhub_connect::sign::Keyring::from_lines(&config.hub.public_keys).context("[hub] public_keys")?,
        signer: config
            .org_signer(&db.org, &loaded.base)
            .with_context(|| format!("sink {:?}: the signing key of org {:?}", db.name, db.org))?
            .map(Arc::new),
    };
    Ok(Sink::connect(settings, Arc::clone(&loaded.registry)).await?)
}

/// A replica server id from the source's name and URL (FNV-1a), away from the small ids servers
/// use. Two readers with one id would take turns: the server drops the older one.
fn server_id(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    1_000_000 + h % 1_000_000_000
}
