//! The SQL Server kind as routes.toml names it (`kind = "mssql"`): the options of its sources
//! and sinks, their check, and how each is built.

use std::sync::Arc;
use std::time::Duration;

use exhub_connect::adapter::{Kind, Options, SourceAdapter, options, scheme_problem};
use exhub_connect::runner::AnySource;
use exhub_connect::source::SourceCommon;
use exhub_schemas::Registry;
use exhub_sink::{SinkAdapter, TableTarget, Target};
use futures_util::future::BoxFuture;
use serde::Deserialize;

use crate::{MssqlSource, SourceSettings};

/// URL schemes of this kind.
const SCHEMES: [&str; 2] = ["mssql", "sqlserver"];

/// A SQL Server source's own options.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceOptions {
    /// How often to poll the change tables, in milliseconds (default 1000; idle polls back off
    /// up to 8 times this).
    pub poll_ms: Option<u64>,
}

/// A SQL Server sink's own options (none).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkOptions {}

/// The SQL Server source kind.
pub struct SourceKind;

/// The SQL Server sink kind.
pub struct SinkKind;

/// The URL's problems: its scheme and its settings.
fn url_problems(url: &str) -> Vec<String> {
    match scheme_problem(url, &SCHEMES) {
        Some(p) => vec![p],
        None => crate::connect::config(url)
            .err()
            .map(|e| e.to_string())
            .into_iter()
            .collect(),
    }
}

impl Kind for SourceKind {
    fn kind(&self) -> &'static str {
        "mssql"
    }

    fn check(&self, url: &str, opts: &Options) -> Vec<String> {
        let mut problems = url_problems(url);
        problems.extend(options::<SourceOptions>(opts).err());
        problems
    }
}

impl SourceAdapter for SourceKind {
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

impl Kind for SinkKind {
    fn kind(&self) -> &'static str {
        "mssql"
    }

    fn check(&self, url: &str, opts: &Options) -> Vec<String> {
        let mut problems = url_problems(url);
        problems.extend(options::<SinkOptions>(opts).err());
        problems
    }
}

impl SinkAdapter for SinkKind {
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
        assert!(
            SourceKind
                .check("mssql://sa@h/db", &opts)
                .iter()
                .any(|p| p.contains("unknown field `slot`"))
        );
        assert!(SourceKind.check("mssql://sa@h/db", &Options::new()).is_empty());
        assert!(
            !SinkKind
                .check("mssql://sa@h/db?encrypt=maybe", &Options::new())
                .is_empty()
        );
    }
}
