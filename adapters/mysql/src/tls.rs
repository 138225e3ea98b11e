//! TLS on a MySQL/MariaDB URL, read one way for both drivers exhub uses on it: mysql_async (this
//! source) and sqlx (the MySQL sink). Each driver spells TLS its own way and ignores, or refuses,
//! the other's; [`MysqlTls::from_url`] accepts both spellings, and [`source_opts`] and
//! [`sqlx_url`] hand each driver the same meaning in its own words.
//!
//! - MySQL's own (and sqlx's): `ssl-mode=DISABLED|PREFERRED|REQUIRED|VERIFY_CA|VERIFY_IDENTITY`,
//!   `ssl-ca=/path/ca.pem`, `ssl-cert=…&ssl-key=…` (a client certificate);
//! - mysql_async's: `require_ssl=true` (with the certificate and the host name verified, unless
//!   `verify_ca=false` or `verify_identity=false`).
//!
//! Without either, the source connects in clear text and the sink as sqlx does by default
//! (`PREFERRED`: TLS when the server offers it). A setting a driver cannot honour is an error —
//! `PREFERRED` on the source (mysql_async cannot fall back), two spellings that disagree — never
//! a quiet clear-text connection.

use std::path::PathBuf;

/// MySQL's `ssl-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Clear text.
    Disabled,
    /// TLS when the server offers it, unverified; clear text otherwise.
    Preferred,
    /// TLS, the certificate not verified.
    Required,
    /// TLS, the certificate chain verified (not the host name).
    VerifyCa,
    /// TLS, the chain and the host name verified.
    VerifyIdentity,
}

impl SslMode {
    fn parse(text: &str) -> Option<SslMode> {
        Some(match text.to_ascii_uppercase().as_str() {
            "DISABLED" => SslMode::Disabled,
            "PREFERRED" => SslMode::Preferred,
            "REQUIRED" => SslMode::Required,
            "VERIFY_CA" => SslMode::VerifyCa,
            "VERIFY_IDENTITY" => SslMode::VerifyIdentity,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disabled => "DISABLED",
            SslMode::Preferred => "PREFERRED",
            SslMode::Required => "REQUIRED",
            SslMode::VerifyCa => "VERIFY_CA",
            SslMode::VerifyIdentity => "VERIFY_IDENTITY",
        }
    }
}

/// The TLS settings of a MySQL URL, whichever way they were spelled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MysqlTls {
    /// The mode asked for, if any (`None`: the driver's default).
    pub mode: Option<SslMode>,
    /// A CA (PEM) to trust besides the built-in roots.
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
}

impl MysqlTls {
    /// Reads the TLS settings of `url` and returns them with the URL left without them. Errors
    /// name the setting, never the URL (it may hold a password).
    pub fn from_url(url: &str) -> Result<(MysqlTls, url::Url), String> {
        let mut parsed = url::Url::parse(url).map_err(|e| format!("bad URL: {e}"))?;
        let mut tls = MysqlTls::default();
        let mut mysql_mode = None;
        let (mut require_ssl, mut verify_ca, mut verify_identity) = (None, None, None);
        let flag = |key: &str, value: &str| match value {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("{key}={value}: expected true or false")),
        };
        let mut rest = Vec::new();
        for (key, value) in parsed.query_pairs() {
            match &*key {
                "ssl-mode" | "sslmode" => {
                    let mode = SslMode::parse(&value).ok_or_else(|| {
                        format!("{key}={value}: expected DISABLED, PREFERRED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY")
                    })?;
                    mysql_mode = Some(mode);
                }
                "ssl-ca" | "sslca" => tls.ca = Some(value.as_ref().into()),
                "ssl-cert" | "sslcert" => tls.cert = Some(value.as_ref().into()),
                "ssl-key" | "sslkey" => tls.key = Some(value.as_ref().into()),
                "require_ssl" => require_ssl = Some(flag(&key, &value)?),
                "verify_ca" => verify_ca = Some(flag(&key, &value)?),
                "verify_identity" => verify_identity = Some(flag(&key, &value)?),
                "built_in_roots" => {
                    return Err("built_in_roots is not supported: name the CA to trust with ssl-ca".into());
                }
                _ => rest.push((key.into_owned(), value.into_owned())),
            }
        }
        // mysql_async's spelling, as mysql_async reads it: the checks default to on.
        let async_mode = match require_ssl {
            Some(true) if verify_ca == Some(false) => Some(SslMode::Required),
            Some(true) if verify_identity == Some(false) => Some(SslMode::VerifyCa),
            Some(true) => Some(SslMode::VerifyIdentity),
            Some(false) => Some(SslMode::Disabled),
            None if verify_ca.is_some() || verify_identity.is_some() => {
                return Err("verify_ca and verify_identity take effect with require_ssl=true".into());
            }
            None => None,
        };
        tls.mode = match (mysql_mode, async_mode) {
            (Some(a), Some(b)) if a != b => {
                return Err(format!(
                    "ssl-mode={} and require_ssl/verify_ca/verify_identity (= {}) disagree: give one",
                    a.name(),
                    b.name()
                ));
            }
            (a, b) => a.or(b),
        };
        if tls.cert.is_some() != tls.key.is_some() {
            return Err("ssl-cert and ssl-key go together (a client certificate and its key)".into());
        }
        if tls.mode == Some(SslMode::Disabled) && (tls.ca.is_some() || tls.cert.is_some()) {
            return Err("ssl-mode=DISABLED with certificate files: say which one is meant".into());
        }
        if rest.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(&rest);
        }
        Ok((tls, parsed))
    }

    /// Whether the connection must be encrypted (no clear-text fallback).
    pub fn required(&self) -> bool {
        matches!(
            self.mode,
            Some(SslMode::Required | SslMode::VerifyCa | SslMode::VerifyIdentity)
        )
    }

    /// The files named, each checked to be readable (for `exhub check`).
    pub fn check_files(&self) -> Result<(), String> {
        for (what, path) in [("ssl-ca", &self.ca), ("ssl-cert", &self.cert), ("ssl-key", &self.key)] {
            if let Some(path) = path {
                std::fs::File::open(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
            }
        }
        Ok(())
    }

    /// What the binlog source can do: everything but `PREFERRED`, since mysql_async either
    /// requires TLS or does not use it.
    pub fn for_source(&self) -> Result<Option<mysql_async::SslOpts>, String> {
        let mode = match self.mode {
            Some(SslMode::Disabled) => return Ok(None),
            None if self.ca.is_none() && self.cert.is_none() => return Ok(None),
            // A CA named without a mode asks for a verified connection.
            None => SslMode::VerifyIdentity,
            Some(SslMode::Preferred) => {
                return Err(
                    "ssl-mode=PREFERRED cannot be honoured by the binlog source (it cannot fall back to \
                            clear text): use REQUIRED, VERIFY_CA, VERIFY_IDENTITY or DISABLED"
                        .into(),
                );
            }
            Some(mode) => mode,
        };
        let mut ssl = mysql_async::SslOpts::default()
            .with_danger_accept_invalid_certs(mode == SslMode::Required)
            .with_danger_skip_domain_validation(mode == SslMode::VerifyCa);
        if let Some(ca) = &self.ca {
            ssl = ssl.with_root_certs(vec![ca.clone().into()]);
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            ssl = ssl.with_client_identity(Some(mysql_async::ClientIdentity::new(
                cert.clone().into(),
                key.clone().into(),
            )));
        }
        Ok(Some(ssl))
    }

    /// The query pairs that say the same to sqlx.
    fn sqlx_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        let mode = match self.mode {
            // A CA named without a mode asks for a verified connection.
            None if self.ca.is_some() || self.cert.is_some() => Some(SslMode::VerifyIdentity),
            mode => mode,
        };
        if let Some(mode) = mode {
            pairs.push(("ssl-mode", mode.name().to_owned()));
        }
        for (key, path) in [("ssl-ca", &self.ca), ("ssl-cert", &self.cert), ("ssl-key", &self.key)] {
            if let Some(path) = path {
                pairs.push((key, path.display().to_string()));
            }
        }
        pairs
    }
}

/// mysql_async's options for `url`, with its TLS settings in either spelling.
pub fn source_opts(url: &str) -> Result<mysql_async::Opts, String> {
    let (tls, rest) = MysqlTls::from_url(url)?;
    let ssl = tls.for_source()?;
    let opts = mysql_async::Opts::from_url(rest.as_str()).map_err(|e| format!("bad URL: {e}"))?;
    Ok(mysql_async::OptsBuilder::from_opts(opts).ssl_opts(ssl).into())
}

/// `url` as sqlx reads it: the TLS settings in either spelling become `ssl-mode`, `ssl-ca`,
/// `ssl-cert` and `ssl-key`; the rest is left as it was.
pub fn sqlx_url(url: &str) -> Result<String, String> {
    let (tls, mut rest) = MysqlTls::from_url(url)?;
    let pairs = tls.sqlx_pairs();
    if !pairs.is_empty() {
        rest.query_pairs_mut().extend_pairs(pairs);
    }
    Ok(rest.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(url: &str) -> MysqlTls {
        MysqlTls::from_url(url).unwrap().0
    }

    #[test]
    fn both_spellings_mean_the_same() {
        let ca = Some(PathBuf::from("/ca.pem"));
        assert_eq!(
            tls("mysql://u@h/db?ssl-mode=VERIFY_IDENTITY&ssl-ca=/ca.pem"),
            MysqlTls {
                mode: Some(SslMode::VerifyIdentity),
                ca: ca.clone(),
                ..MysqlTls::default()
            }
        );
        assert_eq!(
            tls("mysql://u@h/db?require_ssl=true").mode,
            Some(SslMode::VerifyIdentity)
        );
        assert_eq!(
            tls("mysql://u@h/db?require_ssl=true&verify_identity=false").mode,
            Some(SslMode::VerifyCa)
        );
        assert_eq!(
            tls("mysql://u@h/db?require_ssl=true&verify_ca=false").mode,
            Some(SslMode::Required)
        );
        assert_eq!(tls("mysql://u@h/db?sslmode=required").mode, Some(SslMode::Required));
        assert_eq!(tls("mysql://u@h/db").mode, None);
        assert!(tls("mysql://u@h/db?ssl-mode=REQUIRED").required());
        assert!(!tls("mysql://u@h/db?ssl-mode=PREFERRED").required());
    }

    #[test]
    fn the_rest_of_the_url_is_kept_and_tls_goes_to_each_driver_in_its_words() {
        let url = "mysql://u:p@127.0.0.1:3306/db?require_ssl=true&verify_identity=false&ssl-ca=%2Fetc%2Fca.pem&timezone=%2B08:00";
        let sqlx = sqlx_url(url).unwrap();
        assert_eq!(
            sqlx,
            "mysql://u:p@127.0.0.1:3306/db?timezone=%2B08%3A00&ssl-mode=VERIFY_CA&ssl-ca=%2Fetc%2Fca.pem"
        );
        let opts = source_opts("mysql://u:p@127.0.0.1:3306/db?ssl-mode=VERIFY_CA&ssl-ca=/etc/ca.pem").unwrap();
        let ssl = opts.ssl_opts().unwrap();
        assert!(ssl.skip_domain_validation() && !ssl.accept_invalid_certs());
        assert_eq!(ssl.root_certs().len(), 1);
        assert_eq!(opts.db_name(), Some("db"));
        let plain = source_opts("mysql://u:p@127.0.0.1:3306/db").unwrap();
        assert!(plain.ssl_opts().is_none());
        assert_eq!(sqlx_url("mysql://u@h/db").unwrap(), "mysql://u@h/db");
        // A CA alone asks for verification, on both.
        assert!(
            sqlx_url("mysql://u@h/db?ssl-ca=/ca.pem")
                .unwrap()
                .contains("ssl-mode=VERIFY_IDENTITY")
        );
        let ssl = source_opts("mysql://u@h/db?ssl-ca=/ca.pem").unwrap();
        assert!(!ssl.ssl_opts().unwrap().skip_domain_validation());
    }

    #[test]
    fn what_cannot_be_honoured_is_an_error() {
        let err = |url: &str| source_opts(url).unwrap_err();
        assert!(err("mysql://u@h/db?ssl-mode=PREFERRED").contains("cannot be honoured"));
        assert!(err("mysql://u@h/db?ssl-mode=DISABLED&require_ssl=true").contains("disagree"));
        assert!(err("mysql://u@h/db?ssl-mode=SOMETIMES").contains("expected DISABLED"));
        assert!(err("mysql://u@h/db?ssl-cert=/c.pem").contains("go together"));
        assert!(err("mysql://u@h/db?verify_ca=false").contains("require_ssl=true"));
        assert!(err("mysql://u@h/db?built_in_roots=false").contains("not supported"));
        assert!(err("mysql://u:secret@h/db?require_ssl=maybe").contains("true or false"));
        assert!(!err("mysql://u:secret@h/db?require_ssl=maybe").contains("secret"));
        // The sink's driver can fall back, as PREFERRED asks.
        assert!(sqlx_url("mysql://u@h/db?ssl-mode=PREFERRED").is_ok());
    }
}
