//! The SQL Server kind as routes.toml names it (`kind = "mssql"`): the options of its sources
//! and sinks, their check, and how each is built.

use std::sync::Arc;
use std::time::Duration;

use exhub_connect::adapter::{Kind, NoOptions, Options, Role, SourceAdapter, entry_problems, options};
use exhub_connect::runner::AnySource;
use exhub_connect::source::SourceCommon;
use exhub_schemas::Registry;
use exhub_sink::{SinkAdapter, TableTarget, Target};
use futures_util::future::BoxFuture;
use serde::Deserialize;

use crate::{MssqlSource, SourceSettings};

/// A SQL Server source's own options (a sink has none).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceOptions {
    /// How often to poll the change tables, in milliseconds (default 1000; idle polls back off
    /// up to 8 times this).
    pub poll_ms: Option<u64>,
}

/// The SQL Server kind.
pub struct Mssql;

impl Kind for Mssql {
    fn kind(&self) -> &'static str {
        "mssql"
    }

    /// The URL's scheme and settings (as tiberius gets them), and the options.
    fn check(&self, role: Role, url: &str, opts: &Options) -> Vec<String> {
        let read_url = |url: &str| crate::connect::config(url).map(drop).map_err(|e| e.to_string());
        entry_problems::<SourceOptions, NoOptions>(role, url, &["mssql", "sqlserver"], read_url, opts)
    }
}

impl SourceAdapter for Mssql {
    fn build(
        &self,
        common: SourceCommon,
        opts: &Options,
        registry: Arc<Registry>,
    ) -> Result<Box<dyn AnySource>, String> {
        let o: SourceOptions = options(opts)?;
        let settings = SourceSettings {
            common,
            poll: Duration::from_millis(o.poll_ms.unwrap_or(1000).max(10)),
        };
        let source = MssqlSource::new(settings, registry).map_err(|e| e.to_string())?;
        Ok(Box::new(source))
    }
}

impl SinkAdapter for Mssql {
    fn connect<'a>(
        &'a self,
        url: &'a str,
        tables: &'a [TableTarget],
    ) -> BoxFuture<'a, Result<Box<dyn Target>, String>> {
        Box::pin(async move {
            let conn = crate::sink::Connection::open(url).await?;
            for t in tables {
                conn.probe(&t.table)
                    .await
                    .map_err(|e| format!("target table {} is not usable: {e}", t.table))?;
            }
            Ok(Box::new(conn) as Box<dyn Target>)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_of_other_kinds_and_bad_urls_are_refused() {
        let opts: Options = toml::from_str("slot = \"s\"").unwrap();
        let problems = Mssql.check(Role::Source, "mssql://sa@h/db", &opts);
        assert!(
            problems.iter().any(|p| p.contains("unknown field `slot`")),
            "{problems:?}"
        );
        assert!(Mssql.check(Role::Source, "mssql://sa@h/db", &Options::new()).is_empty());
        assert!(
            !Mssql
                .check(Role::Sink, "mssql://sa@h/db?encrypt=maybe", &Options::new())
                .is_empty()
        );
    }
}
