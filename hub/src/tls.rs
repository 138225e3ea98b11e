//! Encryption in transit on the AMQP side, as routes.toml asks for it: every AMQP URL's TLS
//! settings read the way lapin will read them (`amqps://` with RabbitMQ's URI parameters
//! `cacertfile`, `certfile`, `keyfile`: [`exhub_connect::amqp::Target`]), so that `exhub check`
//! reports a setting that cannot be honoured (or a certificate file that cannot be read)
//! before anything connects. Database URLs are checked by their kind's adapter
//! (`exhub_connect::adapter::Kind::check`). Where TLS is asked for it is required: no
//! connection falls back to clear text because a setting was not understood.

use crate::config::{Config, Seg};
use crate::secret::SecretUrl;

/// One problem: where (a path into routes.toml), a label, what is wrong.
pub type TlsProblem = (Vec<Seg>, String, String);

/// Every TLS problem of `config`'s AMQP URLs. A URL that does not parse, or has another scheme
/// than its place wants, is left to the graph check, which reports it once.
pub fn problems(config: &Config) -> Vec<TlsProblem> {
    let mut out = Vec::new();
    let mut report = |at: Vec<Seg>, label: String, url: &SecretUrl| {
        if matches!(url.scheme().as_deref(), Some("amqp" | "amqps"))
            && let Err(message) = amqp(url)
        {
            out.push((at, label, message));
        }
    };
    report(vec!["hub".into(), "amqp".into()], "hub.amqp".into(), &config.hub.amqp);
    for (i, s) in config.sources.iter().enumerate() {
        if let Some(a) = &s.amqp {
            report(
                vec!["source".into(), i.into(), "amqp".into()],
                format!("source {:?} → amqp", s.name),
                a,
            );
        }
    }
    for (i, sub) in config.subscribers.iter().enumerate() {
        if let Some(a) = &sub.amqp {
            report(
                vec!["subscriber".into(), i.into(), "amqp".into()],
                format!("subscriber {:?} → amqp", sub.name),
                a,
            );
        }
    }
    out
}

fn amqp(url: &SecretUrl) -> Result<(), String> {
    let target = exhub_connect::amqp::Target::parse(url.expose()).map_err(|e| e.to_string())?;
    target.tls_config().map(drop).map_err(|e| e.to_string())
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
    }

    #[test]
    fn a_url_the_graph_check_refuses_is_not_reported_twice() {
        assert!(problems_of("amqps://u@[bad/%2f?verify=verify_none", "").is_empty());
        assert!(problems_of("http://u@h/%2f?verify=verify_none", "").is_empty());
    }
}
