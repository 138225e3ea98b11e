//! Values that must never reach a log: passwords inside URLs and key material. Their `Debug`
//! and `Display` redact, and they do not implement `Serialize`.

use std::fmt;

use serde::Deserialize;

/// A secret string (a password, a private key). Prints as `***`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for the one place that needs it (a connection, a signature).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A connection URL that may hold a password (`amqp://user:pw@host`). Prints with the password
/// replaced by `***`; an unparsable URL prints as `<unparsable URL>` since it might hold one.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl(url.into())
    }
    /// Parses the URL.
    pub fn parse(&self) -> Result<url::Url, url::ParseError> {
        url::Url::parse(&self.0)
    }
    /// The URL with its password, for the one place that connects.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The scheme, if the URL parses.
    pub fn scheme(&self) -> Option<String> {
        self.parse().ok().map(|u| u.scheme().to_owned())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parse() {
            Ok(mut u) => {
                if u.password().is_some() {
                    // Cannot fail for URLs that already have a password.
                    let _ = u.set_password(Some("***"));
                }
                let mut clean = u.to_string();
                // Query parameters may carry credentials too (e.g. ?password=…).
                if let Some(q) = u
                    .query()
                    .filter(|q| q.contains("password") || q.contains("secret") || q.contains("token"))
                {
                    clean = clean.replace(q, "***");
                }
                f.write_str(&clean)
            }
            Err(_) => f.write_str("<unparsable URL>"),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_print() {
        let u = SecretUrl::new("amqp://guest:hunter2@127.0.0.1:5672/%2f");
        assert_eq!(u.to_string(), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert!(!format!("{u:?}").contains("hunter2"));
        assert!(!format!("{:?}", SecretUrl::new("mysql://root:hunter2@[bad")).contains("hunter2"));
        let q = SecretUrl::new("postgres://db/x?user=a&password=hunter2");
        assert!(!q.to_string().contains("hunter2"), "{q}");
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
        assert_eq!(u.expose(), "amqp://guest:hunter2@127.0.0.1:5672/%2f");
    }
}
