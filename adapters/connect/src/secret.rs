//! Values that must never reach a log: passwords inside URLs and key material. Their `Debug`
//! and `Display` redact, and they do not implement `Serialize`. Passwords need not be written in
//! routes.toml at all: a URL may name a file (mode 0600) or an environment variable that holds
//! its password, read when the config is loaded ([`SecretUrl::resolve`]), and an
//! organisation's AMQP password lives in a file of its own ([`read_password_file`]).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A password that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The password file is missing or unreadable.
    #[error("cannot read password file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Others than the owner may read or write the file.
    #[error("password file {path} has mode {mode:o}: others may read it; chmod 600 it")]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is empty.
    #[error("password file {path} is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The environment variable is not set.
    #[error("environment variable {0} (a password) is not set")]
    Env(String),
    /// The URL does not parse or cannot carry a password.
    #[error("URL {0} cannot take a password")]
    Url(String),
}

/// Reads a password file: the first line, which must not be empty; the file may be read and
/// written by its owner only (mode 0600 or stricter).
pub fn read_password_file(path: &Path) -> Result<Secret, SecretError> {
    let read = |source| SecretError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretError::Mode {
                path: path.to_owned(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = std::fs::read_to_string(path).map_err(read)?;
    let password = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if password.is_empty() {
        return Err(SecretError::Empty { path: path.to_owned() });
    }
    Ok(Secret::new(password))
}

/// Writes a new file only its owner may read (mode 0600, in a directory created 0700 when
/// missing; never replacing an existing file): a password, a private key.
pub fn write_private_file(path: &Path, content: &Secret) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            builder.mode(0o700);
        }
        builder.create(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    std::io::Write::write_all(&mut file, format!("{}\n", content.expose()).as_bytes())?;
    file.sync_all()
}

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
///
/// In routes.toml it is either a string, or a table that keeps the password out of the file:
/// `{ url = "amqp://exhub-hub@host/vhost", password_file = "secrets/hub" }` (a file of mode
/// 0600, relative to routes.toml) or `{ url = "…", password_env = "EXHUB_HUB_PASSWORD" }`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(from = "UrlSetting")]
pub struct SecretUrl {
    url: String,
    password: Option<PasswordFrom>,
}

/// Where a URL's password comes from, until [`SecretUrl::resolve`] read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordFrom {
    /// A file (relative to routes.toml).
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum UrlSetting {
    Plain(String),
    Table(UrlTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UrlTable {
    url: String,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
}

impl From<UrlSetting> for SecretUrl {
    fn from(setting: UrlSetting) -> Self {
        match setting {
            UrlSetting::Plain(url) => SecretUrl { url, password: None },
            UrlSetting::Table(t) => SecretUrl {
                url: t.url,
                // Both given is reported by `exhub check` (`password_sources`).
                password: t
                    .password_file
                    .map(PasswordFrom::File)
                    .or(t.password_env.map(PasswordFrom::Env)),
            },
        }
    }
}

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl {
            url: url.into(),
            password: None,
        }
    }
    /// Parses the URL.
    pub fn parse(&self) -> Result<url::Url, url::ParseError> {
        url::Url::parse(&self.url)
    }
    /// The URL with its password, for the one place that connects.
    pub fn expose(&self) -> &str {
        &self.url
    }
    /// The scheme, if the URL parses.
    pub fn scheme(&self) -> Option<String> {
        self.parse().ok().map(|u| u.scheme().to_owned())
    }
    /// Where the password is to come from, if not from the URL itself (before [`resolve`]).
    ///
    /// [`resolve`]: SecretUrl::resolve
    pub fn password_from(&self) -> Option<&PasswordFrom> {
        self.password.as_ref()
    }
    /// The user name in the URL, percent-decoded (empty when it has none).
    pub fn username(&self) -> String {
        self.parse().map(|u| percent_decode(u.username())).unwrap_or_default()
    }
    /// Whether the URL itself carries a password.
    pub fn has_password(&self) -> bool {
        self.parse().is_ok_and(|u| u.password().is_some())
    }
    /// The same URL logging in as `user` with `password` (percent-encoded as needed).
    pub fn with_login(&self, user: &str, password: &Secret) -> Result<SecretUrl, SecretError> {
        let mut u = self.parse().map_err(|_| SecretError::Url(self.to_string()))?;
        u.set_username(user)
            .and_then(|()| u.set_password(Some(password.expose())))
            .map_err(|()| SecretError::Url(self.to_string()))?;
        Ok(SecretUrl::new(String::from(u)))
    }
    /// Reads the password from its file (relative to `base`) or environment variable into the
    /// URL. Does nothing for a URL that names no password source.
    pub fn resolve(&mut self, base: &Path) -> Result<(), SecretError> {
        let password = match &self.password {
            None => return Ok(()),
            Some(PasswordFrom::File(p)) => read_password_file(&base.join(p))?,
            Some(PasswordFrom::Env(name)) => {
                Secret::new(std::env::var(name).map_err(|_| SecretError::Env(name.clone()))?)
            }
        };
        let user = self.username();
        *self = self.with_login(&user, &password)?;
        Ok(())
    }
}

/// The user and password of a URL, percent-decoded (empty when absent): the one decoder of a
/// URL's credentials, for every driver that takes them apart.
pub fn url_credentials(url: &url::Url) -> (String, String) {
    (
        percent_decode(url.username()),
        url.password().map(percent_decode).unwrap_or_default(),
    )
}

/// Percent-decodes a URL part (`+` stays `+`: it is not a space in a URL's user info).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

    #[test]
    fn a_password_file_fills_in_the_url_and_must_be_private() {
        let dir = std::env::temp_dir().join(format!("exhub-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("hub.password");
        write_private_file(&file, &Secret::new("p@ss:w+rd/1")).unwrap();
        assert!(
            write_private_file(&file, &Secret::new("other")).is_err(),
            "never replaced"
        );
        let mut u: SecretUrl = toml::from_str::<toml::Table>(
            "u = { url = \"amqp://exhub-hub@127.0.0.1:5672/exhub\", password_file = \"hub.password\" }",
        )
        .unwrap()["u"]
            .clone()
            .try_into()
            .unwrap();
        assert_eq!(u.password_from(), Some(&PasswordFrom::File("hub.password".into())));
        u.resolve(&dir).unwrap();
        let parsed = u.parse().unwrap();
        assert_eq!(percent_decode(parsed.password().unwrap()), "p@ss:w+rd/1");
        // A `+` in a password is a plus, never a space (form decoding got this wrong).
        let url = url::Url::parse("mssql://sa%40corp:a+b%2Bc@db.example/si").unwrap();
        assert_eq!(url_credentials(&url), ("sa@corp".to_owned(), "a+b+c".to_owned()));
        assert_eq!(u.username(), "exhub-hub");
        assert!(!u.to_string().contains("p@ss"), "{u}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = read_password_file(&file).unwrap_err();
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
