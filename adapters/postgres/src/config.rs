//! The PostgreSQL kind as routes.toml names it (`kind = "postgres"`): the options of its
//! sources and sinks, their check, and how each is built.

use std::sync::Arc;

use exhub_connect::adapter::{Kind, NoOptions, Options, Role, SourceAdapter, entry_problems, options};
use exhub_connect::runner::AnySource;
use exhub_connect::source::SourceCommon;
use exhub_schemas::Registry;
use exhub_sink::dialect::Dialect;
use exhub_sink::{SinkAdapter, SqlTarget, TableTarget, Target};
use futures_util::future::BoxFuture;
use serde::Deserialize;

use crate::{PostgresSource, SourceSettings};

/// A PostgreSQL source's own options (a sink has none).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceOptions {
    /// The logical replication slot (default: `exhub_<name>`), created when missing.
    pub slot: Option<String>,
    /// The publication (default: `exhub_<name>`), created for the mapped tables when missing,
    /// used as is otherwise.
    pub publication: Option<String>,
    /// Warn when the slot retains more WAL than this many MB (default 1024).
    pub lag_warn_mb: Option<u64>,
}

/// The PostgreSQL kind.
pub struct Postgres;

impl Kind for Postgres {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    /// The URL's scheme and TLS settings (the same for queries and the replication stream),
    /// and the options.
    fn check(&self, role: Role, url: &str, opts: &Options) -> Vec<String> {
        entry_problems::<SourceOptions, NoOptions>(role, url, &["postgres", "postgresql"], crate::tls::check_url, opts)
    }
}

impl SourceAdapter for Postgres {
    fn build(
        &self,
        common: SourceCommon,
        opts: &Options,
        registry: Arc<Registry>,
    ) -> Result<Box<dyn AnySource>, String> {
        let o: SourceOptions = options(opts)?;
        let default_name = default_name(&common.name);
        let settings = SourceSettings {
            slot: o.slot.unwrap_or_else(|| default_name.clone()),
            publication: o.publication.unwrap_or(default_name),
            lag_warn_bytes: i64::try_from(o.lag_warn_mb.unwrap_or(1024).saturating_mul(1 << 20)).unwrap_or(i64::MAX),
            common,
        };
        let source = PostgresSource::new(settings, registry).map_err(|e| e.to_string())?;
        Ok(Box::new(source))
    }
}

impl SinkAdapter for Postgres {
    fn connect<'a>(
        &'a self,
        url: &'a str,
        tables: &'a [TableTarget],
    ) -> BoxFuture<'a, Result<Box<dyn Target>, String>> {
        Box::pin(async move {
            let target = SqlTarget::connect(url, Dialect::Postgres, tables).await?;
            Ok(Box::new(target) as Box<dyn Target>)
        })
    }
}

/// The default slot and publication name of source `name`: `exhub_` and the name in lower
/// case letters, digits and underscores.
fn default_name(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("exhub_{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_of_other_kinds_are_refused_and_names_default() {
        let opts: Options = toml::from_str("server_id = 7").unwrap();
        let problems = Postgres.check(Role::Source, "postgres://u@localhost/db", &opts);
        assert!(
            problems.iter().any(|p| p.contains("unknown field `server_id`")),
            "{problems:?}"
        );
        let opts: Options = toml::from_str("slot = \"s\"\nlag_warn_mb = 5").unwrap();
        assert!(
            Postgres
                .check(Role::Source, "postgres://u@localhost/db", &opts)
                .is_empty()
        );
        assert!(
            !Postgres
                .check(Role::Sink, "postgres://u@localhost/db", &opts)
                .is_empty(),
            "a sink has no slot"
        );
        assert!(
            !Postgres
                .check(Role::Sink, "mysql://u@localhost/db", &Options::new())
                .is_empty()
        );
        assert_eq!(default_name("Tax-CTAIS.1"), "exhub_tax_ctais_1");
    }
}
