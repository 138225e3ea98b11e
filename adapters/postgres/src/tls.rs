//! TLS on a PostgreSQL URL, for the connection sqlx does not make: the replication stream. sqlx
//! reads `sslmode`, `sslrootcert`, `sslcert` and `sslkey` (libpq's names, and the `PGSSL…`
//! environment variables) for the source's queries; [`replication_tls`] gives the replication
//! connection the same settings, so that both are encrypted, verified or neither — never the
//! queries over TLS and the row stream in clear text.

use std::path::PathBuf;
use std::str::FromStr as _;

use pgwire_replication::{SslMode, TlsConfig};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// The certificate files a PostgreSQL URL names (query, else environment, as sqlx reads them).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PgTlsFiles {
    /// `sslrootcert`: the CA to verify the server with.
    pub root_cert: Option<PathBuf>,
    /// `sslcert`: a client certificate.
    pub cert: Option<PathBuf>,
    /// `sslkey`: its key.
    pub key: Option<PathBuf>,
}

impl PgTlsFiles {
    /// The files of `url`, with the `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY` fallbacks sqlx has.
    pub fn from_url(url: &url::Url) -> PgTlsFiles {
        let query = |keys: &[&str], env: &str| {
            url.query_pairs()
                .filter(|(k, _)| keys.contains(&&**k))
                .last()
                .map(|(_, v)| PathBuf::from(v.as_ref()))
                .or_else(|| std::env::var_os(env).map(PathBuf::from))
        };
        PgTlsFiles {
            root_cert: query(&["sslrootcert", "ssl-root-cert", "ssl-ca"], "PGSSLROOTCERT"),
            cert: query(&["sslcert", "ssl-cert"], "PGSSLCERT"),
            key: query(&["sslkey", "ssl-key"], "PGSSLKEY"),
        }
    }
}

/// The replication connection's TLS for a source whose queries use `options` (parsed from
/// `url`). `allow` (libpq: clear text unless the server insists) becomes `prefer`, which tries
/// TLS first: the stream is never less protected than the queries.
pub fn replication_tls(url: &url::Url, options: &PgConnectOptions) -> TlsConfig {
    let files = PgTlsFiles::from_url(url);
    let mode = match options.get_ssl_mode() {
        PgSslMode::Disable => SslMode::Disable,
        PgSslMode::Allow | PgSslMode::Prefer => SslMode::Prefer,
        PgSslMode::Require => SslMode::Require,
        PgSslMode::VerifyCa => SslMode::VerifyCa,
        PgSslMode::VerifyFull => SslMode::VerifyFull,
    };
    let host = options.get_host();
    TlsConfig {
        mode,
        ca_pem_path: files.root_cert,
        // pgwire-replication refuses `verify-full` to an IP address unless a server name is
        // given; the address itself is one (rustls then checks the certificate's IP SANs).
        sni_hostname: host.parse::<std::net::IpAddr>().is_ok().then(|| host.to_owned()),
        client_cert_pem_path: files.cert,
        client_key_pem_path: files.key,
    }
}

/// What `exhub check` can know from a PostgreSQL URL alone: an `sslmode` sqlx takes, certificate
/// files that can be read, a client certificate with its key.
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("URL does not parse: {e}"))?;
    PgConnectOptions::from_str(url).map_err(|e| format!("{e}"))?;
    let files = PgTlsFiles::from_url(&parsed);
    if files.cert.is_some() != files.key.is_some() {
        return Err("sslcert and sslkey go together (a client certificate and its key)".into());
    }
    for (what, path) in [
        ("sslrootcert", &files.root_cert),
        ("sslcert", &files.cert),
        ("sslkey", &files.key),
    ] {
        if let Some(path) = path {
            std::fs::File::open(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(url: &str) -> TlsConfig {
        let options = PgConnectOptions::from_str(url).unwrap();
        replication_tls(&url::Url::parse(url).unwrap(), &options)
    }

    #[test]
    fn the_stream_gets_the_queries_tls() {
        let t = tls("postgres://u:p@127.0.0.1:5432/db?sslmode=verify-full&sslrootcert=/ca.pem");
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert_eq!(t.ca_pem_path, Some(PathBuf::from("/ca.pem")));
        assert_eq!(t.sni_hostname.as_deref(), Some("127.0.0.1"));
        let t = tls("postgres://u@db.example/db?sslmode=require");
        assert_eq!((t.mode, t.sni_hostname), (SslMode::Require, None));
        assert_eq!(tls("postgres://u@h/db?sslmode=disable").mode, SslMode::Disable);
        assert_eq!(tls("postgres://u@h/db?sslmode=allow").mode, SslMode::Prefer);
        assert_eq!(tls("postgres://u@h/db?sslmode=verify-ca").mode, SslMode::VerifyCa);
        let t = tls("postgres://u@h/db?sslmode=verify-full&sslcert=/c.pem&sslkey=/k.pem");
        assert!(t.is_mtls());
    }

    #[test]
    fn check_finds_what_cannot_work() {
        assert!(check_url("postgres://u@h/db?sslmode=verify-full").is_ok());
        assert!(check_url("postgres://u@h/db?sslmode=sometimes").is_err());
        let missing = check_url("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").unwrap_err();
        assert!(missing.contains("sslrootcert /nonexistent/ca.pem"), "{missing}");
        assert!(
            check_url("postgres://u@h/db?sslcert=/c.pem")
                .unwrap_err()
                .contains("go together")
        );
    }
}
