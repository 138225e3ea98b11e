//! The MySQL/MariaDB kind as routes.toml names it (`kind = "mysql"`): the options of its
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

use crate::tls::MysqlTls;
use crate::{MysqlSource, SourceSettings};

/// A MySQL source's own options (a sink has none).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceOptions {
    /// The replica server id it registers with, unique among the server's replicas (default:
    /// derived from the source's name and URL).
    pub server_id: Option<u32>,
}

/// The MySQL/MariaDB kind.
pub struct Mysql;

impl Kind for Mysql {
    fn kind(&self) -> &'static str {
        "mysql"
    }

    /// The URL's scheme and TLS settings (a source's as mysql_async reads them, a sink's as
    /// sqlx does), and the options.
    fn check(&self, role: Role, url: &str, opts: &Options) -> Vec<String> {
        let read_url = |url: &str| {
            let (tls, _) = MysqlTls::from_url(url)?;
            match role {
                Role::Source => tls.for_source().and_then(|_| tls.check_files()),
                Role::Sink => tls.check_files(),
            }
        };
        entry_problems::<SourceOptions, NoOptions>(role, url, &["mysql", "mariadb"], read_url, opts)
    }
}

impl SourceAdapter for Mysql {
    fn build(
        &self,
        common: SourceCommon,
        opts: &Options,
        registry: Arc<Registry>,
    ) -> Result<Box<dyn AnySource>, String> {
        let o: SourceOptions = options(opts)?;
        let server_id = o
            .server_id
            .unwrap_or_else(|| server_id(&format!("{}\n{}", common.name, common.url.expose())));
        let source = MysqlSource::new(SourceSettings { common, server_id }, registry).map_err(|e| e.to_string())?;
        Ok(Box::new(source))
    }
}

impl SinkAdapter for Mysql {
    fn connect<'a>(
        &'a self,
        url: &'a str,
        tables: &'a [TableTarget],
    ) -> BoxFuture<'a, Result<Box<dyn Target>, String>> {
        Box::pin(async move {
            // The URL's TLS settings in sqlx's words.
            let url = crate::tls::sqlx_url(url)?;
            let target = SqlTarget::connect(&url, Dialect::Mysql, tables).await?;
            Ok(Box::new(target) as Box<dyn Target>)
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_of_other_kinds_and_bad_urls_are_refused() {
        let opts: Options = toml::from_str("slot = \"exhub_x\"").unwrap();
        let problems = Mysql.check(Role::Source, "mysql://u@localhost/db", &opts);
        assert!(
            problems.iter().any(|p| p.contains("unknown field `slot`")),
            "{problems:?}"
        );
        let opts: Options = toml::from_str("server_id = 7").unwrap();
        assert!(Mysql.check(Role::Source, "mysql://u@localhost/db", &opts).is_empty());
        assert!(
            !Mysql.check(Role::Sink, "mysql://u@localhost/db", &opts).is_empty(),
            "a sink has no server_id"
        );
        let none = Options::new();
        assert!(!Mysql.check(Role::Source, "postgres://u@localhost/db", &none).is_empty());
        assert!(
            !Mysql
                .check(Role::Sink, "mysql://u@localhost/db?ssl-mode=bogus", &none)
                .is_empty()
        );
        assert_ne!(server_id("a\nmysql://h/db"), server_id("b\nmysql://h/db"));
    }
}
