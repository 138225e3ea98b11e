//! Encryption in transit, as routes.toml asks for it: every URL's TLS settings read the way its
//! driver will read them, so that `exhub check` reports a setting that cannot be honoured (or a
//! certificate file that cannot be read) before anything connects, and the MySQL sink's URL is
//! handed to sqlx in sqlx's words. Where TLS is asked for it is required: no connection falls
//! back to clear text because a setting was not understood.
//!
//! - AMQP: `amqps://` with RabbitMQ's URI parameters `cacertfile`, `certfile`, `keyfile`
//!   ([`exhub_connect::amqp::Target`]);
//! - PostgreSQL: `sslmode`, `sslrootcert`, `sslcert`, `sslkey` (sqlx, and the replication
//!   stream: [`exhub_postgres::tls`]);
//! - MySQL/MariaDB: `ssl-mode`, `ssl-ca`, … or mysql_async's `require_ssl` ([`exhub_mysql::tls`]).

use crate::config::{Config, Seg, SourceConfig, SubscriberConfig};
use crate::secret::SecretUrl;

/// One problem: where (a path into routes.toml), a label, what is wrong.
pub type TlsProblem = (Vec<Seg>, String, String);

/// Every TLS problem of `config`'s URLs. A URL that does not parse, or has another scheme than
/// its place wants, is left to the graph check, which reports it once.
pub fn problems(config: &Config) -> Vec<TlsProblem> {
    let mut out = Vec::new();
    let mut report = |at: Vec<Seg>, label: String, result: Result<(), String>| {
        if let Err(message) = result {
            out.push((at, label, message));
        }
    };
    let mysql = |url: &SecretUrl| matches!(url.scheme().as_deref(), Some("mysql"));
    let amqp = |url: &SecretUrl| match url.scheme().as_deref() {
        Some("amqp" | "amqps") => amqp(url),
        _ => Ok(()),
    };
    let hub: Vec<Seg> = vec!["hub".into()];
    report(
        [hub.clone(), vec!["amqp".into()]].concat(),
        "hub.amqp".into(),
        amqp(&config.hub.amqp),
    );
    if is_postgres(&config.hub.archive) {
        report(
            [hub, vec!["archive".into()]].concat(),
            "hub.archive".into(),
            exhub_postgres::tls::check_url(config.hub.archive.expose()),
        );
    }
    for (i, source) in config.sources.iter().enumerate() {
        let s = source.common();
        let at = |k: &str| vec!["source".into(), i.into(), k.into()];
        let label = format!("source {:?}", s.name);
        let url = s.url.expose();
        let result = match source {
            SourceConfig::Mysql(_) if mysql(&s.url) => exhub_mysql::tls::MysqlTls::from_url(url)
                .and_then(|(tls, _)| tls.for_source().and_then(|_| tls.check_files())),
            SourceConfig::Postgres(_) if is_postgres(&s.url) => exhub_postgres::tls::check_url(url),
            _ => Ok(()),
        };
        report(at("url"), format!("{label} → url"), result);
        if let Some(a) = &s.amqp {
            report(at("amqp"), format!("{label} → amqp"), amqp(a));
        }
    }
    for (i, sub) in config.subscribers.iter().enumerate() {
        let Some(db) = sub.database() else { continue };
        let at = |k: &str| vec!["subscriber".into(), i.into(), k.into()];
        let label = format!("subscriber {:?}", db.name);
        let url = db.url.expose();
        let result = match sub {
            SubscriberConfig::Mysql(_) if mysql(&db.url) => {
                exhub_mysql::tls::MysqlTls::from_url(url).and_then(|(tls, _)| tls.check_files())
            }
            SubscriberConfig::Postgres(_) if is_postgres(&db.url) => exhub_postgres::tls::check_url(url),
            _ => Ok(()),
        };
        report(at("url"), format!("{label} → url"), result);
        if let Some(a) = &db.amqp {
            report(at("amqp"), format!("{label} → amqp"), amqp(a));
        }
    }
    out
}

/// The URL a database sink's driver gets: a MySQL URL's TLS settings in sqlx's words (see
/// [`exhub_mysql::tls::sqlx_url`]); any other as it is.
pub fn sink_url(url: &SecretUrl) -> Result<String, String> {
    if url.scheme().as_deref() == Some("mysql") {
        exhub_mysql::tls::sqlx_url(url.expose())
    } else {
        Ok(url.expose().to_owned())
    }
}

fn amqp(url: &SecretUrl) -> Result<(), String> {
    let target = exhub_connect::amqp::Target::parse(url.expose()).map_err(|e| e.to_string())?;
    target.tls_config().map(drop).map_err(|e| e.to_string())
}

fn is_postgres(url: &SecretUrl) -> bool {
    matches!(url.scheme().as_deref(), Some("postgres" | "postgresql"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::ConfigFile;

    fn problems_of(hub_amqp: &str, extra: &str) -> Vec<String> {
        let text = format!(
            "[hub]\namqp = \"{hub_amqp}\"\narchive = \"sqlite://a.db\"\n\n[[org]]\nid = \"a\"\nname = \"A\"\n{extra}"
        );
        let file = ConfigFile::parse(Path::new("routes.toml"), text);
        let config = file.config.expect("config parses");
        problems(&config)
            .into_iter()
            .map(|(_, l, m)| format!("{l}: {m}"))
            .collect()
    }

    #[test]
    fn tls_that_cannot_be_honoured_is_reported_by_check() {
        assert!(problems_of("amqps://u@127.0.0.1:5671/%2f", "").is_empty());
        let p = problems_of(
            "amqp://u@127.0.0.1:5672/%2f?cacertfile=/etc/ssl/certs/ca-certificates.crt",
            "",
        );
        assert!(p[0].contains("hub.amqp") && p[0].contains("use amqps://"), "{p:?}");
        let p = problems_of("amqps://u@127.0.0.1:5671/%2f?cacertfile=/nonexistent/ca.pem", "");
        assert!(p[0].contains("cannot read cacertfile /nonexistent/ca.pem"), "{p:?}");
        let p = problems_of("amqps://u@127.0.0.1:5671/%2f?verify=verify_none", "");
        assert!(p[0].contains("always verifies"), "{p:?}");
        let sources = "[[source]]\nname = \"m\"\norg = \"a\"\nkind = \"mysql\"\nurl = \"mysql://u@h/db?ssl-mode=PREFERRED\"\n\n\
                       [[source]]\nname = \"p\"\norg = \"a\"\nkind = \"postgres\"\nurl = \"postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem\"\n\n\
                       [[subscriber]]\nname = \"s\"\norg = \"a\"\nkind = \"mysql\"\nurl = \"mysql://u@h/db?ssl-mode=PREFERRED\"\n";
        let p = problems_of("amqps://u@127.0.0.1:5671/%2f", sources);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("source \"m\" → url") && p[0].contains("cannot be honoured"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("source \"p\" → url") && p[1].contains("sslrootcert"),
            "{p:?}"
        );
    }

    #[test]
    fn a_url_the_graph_check_refuses_is_not_reported_twice() {
        assert!(problems_of("amqps://u@[bad/%2f?verify=verify_none", "").is_empty());
        assert!(problems_of("http://u@h/%2f?verify=verify_none", "").is_empty());
        let sink =
            "[[subscriber]]\nname = \"s\"\norg = \"a\"\nkind = \"mysql\"\nurl = \"postgres://u@h/db?sslmode=bad\"\n";
        assert!(problems_of("amqps://u@127.0.0.1:5671/%2f", sink).is_empty());
    }

    #[test]
    fn the_mysql_sink_gets_tls_in_sqlx_words() {
        let url = SecretUrl::new("mysql://root@127.0.0.1:3306/m?require_ssl=true&verify_identity=false");
        assert_eq!(
            sink_url(&url).unwrap(),
            "mysql://root@127.0.0.1:3306/m?ssl-mode=VERIFY_CA"
        );
        let pg = SecretUrl::new("postgres://u@h/db?sslmode=require");
        assert_eq!(sink_url(&pg).unwrap(), pg.expose());
    }
}
