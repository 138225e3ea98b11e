//! Connecting to SQL Server: the URL a routes.toml gives, with its TLS settings, → a tiberius
//! client over a tokio TCP stream.
//!
//! `mssql://user:password@host:1433/database?encrypt=required&trust_server_certificate=false`
//! (`sqlserver://` too). `encrypt`: `required` (default: everything encrypted, fail
//! otherwise), `on` (encrypt if the server can), `off` (only the login), `strict` (TDS 8.0);
//! `trust_server_certificate=true` accepts any certificate (test servers only),
//! `ca=/path/ca.pem` trusts that CA. TLS is rustls; the binary installs its crypto provider.

use tiberius::{AuthMethod, Client, Config, EncryptionLevel};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt as _};

/// A connected client.
pub type MssqlClient = Client<Compat<TcpStream>>;

/// A URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad SQL Server URL: {0}")]
pub struct UrlError(String);

/// The tiberius configuration of `url`, and the database it names.
pub fn config(url: &str) -> Result<(Config, String), UrlError> {
    let u = url::Url::parse(url).map_err(|e| UrlError(e.to_string()))?;
    if !matches!(u.scheme(), "mssql" | "sqlserver") {
        return Err(UrlError(format!("scheme {:?} (expected mssql://)", u.scheme())));
    }
    let database = u.path().trim_start_matches('/').to_owned();
    if database.is_empty() {
        return Err(UrlError("no database (mssql://user@host:port/DATABASE)".into()));
    }
    let (user, password) = exhub_connect::secret::url_credentials(&u);
    let mut c = Config::new();
    c.host(u.host_str().unwrap_or("localhost"));
    c.port(u.port().unwrap_or(1433));
    c.database(&database);
    c.application_name("exhub");
    c.authentication(AuthMethod::sql_server(user, password));
    c.encryption(EncryptionLevel::Required);
    for (key, value) in u.query_pairs() {
        match (key.as_ref(), value.as_ref()) {
            ("encrypt", "required" | "true") => c.encryption(EncryptionLevel::Required),
            ("encrypt", "on") => c.encryption(EncryptionLevel::On),
            ("encrypt", "off" | "false") => c.encryption(EncryptionLevel::Off),
            ("encrypt", "strict") => c.encryption(EncryptionLevel::Strict),
            ("trust_server_certificate", "true") => c.trust_cert(),
            ("trust_server_certificate", "false") => {}
            ("ca", path) => c.trust_cert_ca(path),
            (k, v) => {
                return Err(UrlError(format!(
                    "unknown setting {k}={v} (known: encrypt, trust_server_certificate, ca)"
                )));
            }
        }
    }
    Ok((c, database))
}

/// Connects with `config`.
pub async fn connect(config: Config) -> Result<MssqlClient, tiberius::error::Error> {
    let tcp = TcpStream::connect(config.get_addr()).await?;
    tcp.set_nodelay(true)?;
    Client::connect(config, tcp.compat_write()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_their_tls_settings() {
        let (c, db) =
            config("mssql://exhub:p%40ss@db.example:14330/yibao?encrypt=required&trust_server_certificate=true")
                .unwrap();
        assert_eq!(db, "yibao");
        assert_eq!(c.get_addr(), "db.example:14330");
        let (c, _) = config("sqlserver://sa@10.0.0.5/si").unwrap();
        assert_eq!(c.get_addr(), "10.0.0.5:1433");
        for bad in [
            "mssql://sa@host",
            "postgres://sa@host/db",
            "mssql://sa@host/db?encrypt=maybe",
            "mssql://sa@host/db?tls=1",
        ] {
            assert!(config(bad).is_err(), "{bad}");
        }
    }
}
