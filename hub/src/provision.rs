//! `exhub provision`: least privilege on the broker, derived from routes.toml. The exchange's
//! vhost, the hub's own user and one user per organisation are created or corrected through the
//! RabbitMQ management HTTP API so that they hold exactly the permissions of
//! [`exhub_connect::Topology::hub_permissions`] and
//! [`exhub_connect::Topology::org_permissions`]: the hub configures the
//! topology; an org writes only to the ingress exchange and reads only its own subscribers'
//! queues and DLQs. Users exhub created carry the tag [`TAG`]; a user without it is never
//! touched unless the operator says `--adopt`.
//!
//! Deciding ([`plan`]) is separate from doing ([`Management`]): the plan compares the wanted
//! state with what the broker reports, and `--dry-run` prints it without applying.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use exhub_connect::Permissions;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::config::Config;
use crate::secret::{Secret, SecretError, read_password_file, write_private_file};

/// The user tag that marks a RabbitMQ user as created (and so managed) by `exhub provision`.
pub const TAG: &str = "exhub-provisioned";

/// Tags that give a user powers beyond its permissions (the management UI and API).
const PRIVILEGED: [&str; 4] = ["administrator", "monitoring", "policymaker", "management"];

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The management API could not be reached or answered oddly.
    #[error("RabbitMQ management API at {url}: {message}")]
    Api {
        /// The API's base URL (no credentials).
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A user to adopt holds a broker-wide role.
    #[error(
        "RabbitMQ user {0:?} has the tag {1:?}: an exchange login must not be a broker administrator; \
         use another user (or remove the tag) before provisioning"
    )]
    Privileged(String, String),
    /// A user exists that exhub did not create.
    #[error(
        "RabbitMQ user {0:?} exists and was not created by exhub provision (no tag `exhub-provisioned`); \
         pass --adopt to take it over (its password and permissions on this vhost will be set)"
    )]
    NotOurs(String),
    /// A password could not be read or written.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// A password file could not be written.
    #[error("cannot write password file {path}: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config says something provisioning cannot use.
    #[error("{0}")]
    Config(String),
}

/// One RabbitMQ user as it should be.
#[derive(Debug)]
pub struct WantedUser {
    /// The user name.
    pub name: String,
    /// Its password.
    pub password: Secret,
    /// Its permissions on the vhost.
    pub permissions: Permissions,
    /// Whom it is for, in words (`the hub`, `org nanhai.tax`).
    pub role: String,
}

/// Everything `exhub provision` makes true.
#[derive(Debug)]
pub struct Wanted {
    /// The vhost of `[hub] amqp`.
    pub vhost: String,
    /// The `write` permissions that mark a user as one of this exchange's (the hub's, an
    /// org's): several exchanges (prefixes) may share a vhost.
    pub marks: [String; 2],
    /// The hub's user first, then one per org.
    pub users: Vec<WantedUser>,
}

/// The wanted state for `config`. Org passwords come from their files; a missing file gets a
/// new random password (written 0600) unless `dry_run`, which reports it instead.
pub fn wanted(config: &Config, base: &Path, dry_run: bool, notes: &mut Vec<String>) -> Result<Wanted, ProvisionError> {
    let topology = config.hub.topology();
    let hub_url = config
        .hub
        .amqp
        .parse()
        .map_err(|e| ProvisionError::Config(format!("[hub] amqp does not parse: {e}")))?;
    let vhost = match hub_url.path().trim_start_matches('/') {
        "" => "/".to_owned(),
        v => crate::secret::percent_decode(v),
    };
    let Some(hub_password) = hub_url.password() else {
        return Err(ProvisionError::Config(
            "[hub] amqp has no password (give it in the URL, password_file or password_env)".into(),
        ));
    };
    let mut users = vec![WantedUser {
        name: config.hub.user(),
        password: Secret::new(crate::secret::percent_decode(hub_password)),
        permissions: topology.hub_permissions(),
        role: "the hub".into(),
    }];
    for org in &config.orgs {
        let subscribers: Vec<&str> = config
            .subscribers
            .iter()
            .filter(|s| s.org() == org.id)
            .map(|s| s.name())
            .collect();
        let file = config.org_password_file(org, base);
        let password = if file.exists() {
            read_password_file(&file)?
        } else if dry_run {
            notes.push(format!(
                "would write a new password for {} to {}",
                org.amqp_user(),
                file.display()
            ));
            Secret::new(String::new())
        } else {
            let password = new_password()?;
            write_private_file(&file, &password).map_err(|source| ProvisionError::Write {
                path: file.clone(),
                source,
            })?;
            notes.push(format!(
                "wrote a new password for {} to {}",
                org.amqp_user(),
                file.display()
            ));
            password
        };
        users.push(WantedUser {
            name: org.amqp_user().to_owned(),
            password,
            permissions: topology.org_permissions(&subscribers),
            role: format!("org {}", org.id),
        });
    }
    let marks = [
        topology.hub_permissions().write,
        topology.org_permissions::<&str>(&[]).write,
    ];
    Ok(Wanted { vhost, users, marks })
}

/// 24 random bytes, base64url: a password nobody chose.
pub fn new_password() -> Result<Secret, ProvisionError> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| ProvisionError::Config(format!("no randomness for a password: {e}")))?;
    Ok(Secret::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
    ))
}

/// One change to make on the broker.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Create the vhost.
    CreateVhost(String),
    /// Create a user (tagged [`TAG`]).
    CreateUser(String),
    /// Set an existing user's password (and add [`TAG`] when adopting).
    UpdateUser(String),
    /// Set a user's permissions on the vhost.
    SetPermissions(String, Permissions),
    /// Take every permission on the vhost from a user exhub made that routes.toml no longer
    /// names (an org removed, or given another login).
    Revoke(String),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::CreateVhost(v) => write!(f, "create vhost {v:?}"),
            Change::CreateUser(u) => write!(f, "create user {u:?}"),
            Change::UpdateUser(u) => write!(f, "set the password of user {u:?}"),
            Change::Revoke(u) => write!(f, "revoke the permissions of {u:?} (no longer in routes.toml)"),
            Change::SetPermissions(u, p) => write!(
                f,
                "set permissions of {u:?}: configure {} write {} read {}",
                p.configure, p.write, p.read
            ),
        }
    }
}

/// What the broker reports of one user, as far as provisioning cares.
#[derive(Debug, Default)]
pub struct Existing {
    /// Its tags.
    pub tags: Vec<String>,
    /// `password_hash` and `hashing_algorithm` from the API.
    pub password_hash: String,
    /// The algorithm's name.
    pub hashing: String,
    /// Its permissions on the vhost, if any.
    pub permissions: Option<Permissions>,
}

/// The changes that turn the broker's state (`vhost_exists`, `existing` per wanted user, in
/// order) into the wanted one. Refuses users exhub did not create unless `adopt`.
pub fn plan(
    wanted: &Wanted,
    vhost_exists: bool,
    existing: &[Option<Existing>],
    adopt: bool,
) -> Result<Vec<Change>, ProvisionError> {
    let mut changes = Vec::new();
    if !vhost_exists {
        changes.push(Change::CreateVhost(wanted.vhost.clone()));
    }
    for (user, found) in wanted.users.iter().zip(existing) {
        match found {
            None => changes.push(Change::CreateUser(user.name.clone())),
            Some(e) => {
                let ours = e.tags.iter().any(|t| t == TAG);
                if !ours && !adopt {
                    return Err(ProvisionError::NotOurs(user.name.clone()));
                }
                if let Some(t) = e.tags.iter().find(|t| PRIVILEGED.contains(&t.as_str())) {
                    return Err(ProvisionError::Privileged(user.name.clone(), t.clone()));
                }
                if !ours || !password_matches(&e.password_hash, &e.hashing, &user.password) {
                    changes.push(Change::UpdateUser(user.name.clone()));
                }
            }
        }
        let current = found.as_ref().and_then(|e| e.permissions.as_ref());
        if current != Some(&user.permissions) {
            changes.push(Change::SetPermissions(user.name.clone(), user.permissions.clone()));
        }
    }
    Ok(changes)
}

/// Whether `password` hashes to RabbitMQ's `password_hash` (base64 of a 4-byte salt followed by
/// SHA-256(salt ‖ password), the default `rabbit_password_hashing_sha256`). Another algorithm
/// counts as "does not match": the password is then simply set again.
pub fn password_matches(hash: &str, algorithm: &str, password: &Secret) -> bool {
    if algorithm != "rabbit_password_hashing_sha256" {
        return false;
    }
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(hash) else {
        return false;
    };
    let Some((salt, digest)) = bytes.split_at_checked(4) else {
        return false;
    };
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.expose().as_bytes());
    h.finalize().as_slice() == digest
}

/// A minimal client of the RabbitMQ management HTTP API: HTTP/1.0 requests (so that answers are
/// never chunked and end with the connection), JSON bodies, basic authentication.
pub struct Management {
    host: String,
    port: u16,
    base: String,
    authorization: Secret,
}

impl Management {
    /// A client of the API at `url` (`http://host:15672`) logging in as `user`.
    pub fn new(url: &str, user: &str, password: &Secret) -> Result<Management, ProvisionError> {
        let api = |message: String| ProvisionError::Api {
            url: url.to_owned(),
            message,
        };
        let parsed = url::Url::parse(url).map_err(|e| api(format!("does not parse: {e}")))?;
        if parsed.scheme() != "http" {
            return Err(api(
                "only http:// is supported (reach it on loopback or through a tunnel)".into(),
            ));
        }
        let host = parsed.host_str().ok_or_else(|| api("has no host".into()))?.to_owned();
        // Plain HTTP carries the administrator's login and the new passwords: loopback only.
        let loopback = match parsed.host() {
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        if !loopback {
            return Err(api(
                "is not on this machine: the management API is spoken in clear text, so exhub provision \
                 reaches it on loopback only (run it on the broker's machine, or through an SSH tunnel)"
                    .into(),
            ));
        }
        let credentials = format!("{user}:{}", password.expose());
        Ok(Management {
            port: parsed.port().unwrap_or(15672),
            base: format!("http://{host}:{}", parsed.port().unwrap_or(15672)),
            host,
            authorization: Secret::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            )),
        })
    }

    /// `GET /api/<path>`: `None` on 404.
    pub async fn get(&self, path: &str) -> Result<Option<Value>, ProvisionError> {
        let (status, body) = self.request("GET", path, None).await?;
        match status {
            404 => Ok(None),
            200 => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| self.error(format!("GET {path}: not JSON: {e}"))),
            s => Err(self.error(format!("GET {path}: HTTP {s}: {}", String::from_utf8_lossy(&body)))),
        }
    }

    /// `PUT /api/<path>` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> Result<(), ProvisionError> {
        let (status, answer) = self.request("PUT", path, Some(body)).await?;
        match status {
            200..=204 => Ok(()),
            s => Err(self.error(format!("PUT {path}: HTTP {s}: {}", String::from_utf8_lossy(&answer)))),
        }
    }

    /// `DELETE /api/<path>` (a missing resource is fine).
    pub async fn delete(&self, path: &str) -> Result<(), ProvisionError> {
        let (status, answer) = self.request("DELETE", path, None).await?;
        match status {
            200..=204 | 404 => Ok(()),
            s => Err(self.error(format!("DELETE {path}: HTTP {s}: {}", String::from_utf8_lossy(&answer)))),
        }
    }

    fn error(&self, message: String) -> ProvisionError {
        ProvisionError::Api {
            url: self.base.clone(),
            message,
        }
    }

    async fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Vec<u8>), ProvisionError> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let head = format!(
            "{method} /api/{path} HTTP/1.0\r\nHost: {}:{}\r\nAuthorization: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            self.host,
            self.port,
            self.authorization.expose(),
            body.len()
        );
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body.as_bytes()).await?;
            let mut answer = Vec::new();
            stream.take(16 << 20).read_to_end(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .map_err(|_| self.error(format!("{method} {path}: no answer within 30 s")))?
            .map_err(|e| self.error(format!("{method} {path}: {e}")))?;
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| self.error(format!("{method} {path}: not an HTTP answer")))?;
        let status = std::str::from_utf8(&answer[..split])
            .ok()
            .and_then(|head| head.split_whitespace().nth(1))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| self.error(format!("{method} {path}: no HTTP status")))?;
        Ok((status, answer[split + 4..].to_vec()))
    }

    /// What the broker has of `user`: tags, password hash, permissions on `vhost`.
    pub async fn existing(&self, user: &str, vhost: &str) -> Result<Option<Existing>, ProvisionError> {
        let Some(u) = self.get(&format!("users/{}", enc(user))).await? else {
            return Ok(None);
        };
        let tags = match &u["tags"] {
            Value::Array(items) => items.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect(),
            Value::String(s) => s.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let permissions = self
            .get(&format!("permissions/{}/{}", enc(vhost), enc(user)))
            .await?
            .map(|p| Permissions {
                configure: p["configure"].as_str().unwrap_or_default().to_owned(),
                write: p["write"].as_str().unwrap_or_default().to_owned(),
                read: p["read"].as_str().unwrap_or_default().to_owned(),
            });
        Ok(Some(Existing {
            tags,
            password_hash: u["password_hash"].as_str().unwrap_or_default().to_owned(),
            hashing: u["hashing_algorithm"].as_str().unwrap_or_default().to_owned(),
            permissions,
        }))
    }

    /// Users that exhub made (tagged [`TAG`]) with this exchange's permissions on the vhost,
    /// that `wanted` does not name.
    pub async fn stale(&self, wanted: &Wanted) -> Result<Vec<String>, ProvisionError> {
        let Some(Value::Array(perms)) = self.get(&format!("vhosts/{}/permissions", enc(&wanted.vhost))).await? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for p in perms {
            let Some(user) = p["user"].as_str() else { continue };
            let ours = p["write"].as_str().is_some_and(|w| wanted.marks.iter().any(|m| m == w));
            if !ours || wanted.users.iter().any(|u| u.name == user) {
                continue;
            }
            let tags = self
                .existing(user, &wanted.vhost)
                .await?
                .map(|e| e.tags)
                .unwrap_or_default();
            if tags.iter().any(|t| t == TAG) {
                out.push(user.to_owned());
            }
        }
        Ok(out)
    }

    /// Makes one change.
    pub async fn apply(
        &self,
        change: &Change,
        wanted: &Wanted,
        existing: &[Option<Existing>],
    ) -> Result<(), ProvisionError> {
        let user = |name: &str| {
            wanted
                .users
                .iter()
                .zip(existing)
                .find(|(u, _)| u.name == name)
                .ok_or_else(|| self.error(format!("user {name:?} is not planned")))
        };
        match change {
            Change::CreateVhost(v) => self.put(&format!("vhosts/{}", enc(v)), &json!({})).await,
            Change::CreateUser(name) | Change::UpdateUser(name) => {
                let (u, found) = user(name)?;
                let mut tags: Vec<String> = found.as_ref().map(|e| e.tags.clone()).unwrap_or_default();
                if !tags.iter().any(|t| t == TAG) {
                    tags.push(TAG.to_owned());
                }
                let body = json!({ "password": u.password.expose(), "tags": tags.join(",") });
                self.put(&format!("users/{}", enc(name)), &body).await
            }
            Change::Revoke(name) => {
                self.delete(&format!("permissions/{}/{}", enc(&wanted.vhost), enc(name)))
                    .await
            }
            Change::SetPermissions(name, p) => {
                let body = json!({ "configure": p.configure, "write": p.write, "read": p.read });
                self.put(&format!("permissions/{}/{}", enc(&wanted.vhost), enc(name)), &body)
                    .await
            }
        }
    }
}

/// Percent-encodes a path segment (a vhost `/` becomes `%2F`).
fn enc(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Where the management API is: `[hub] management`, else port 15672 on `[hub] amqp`'s host.
pub fn management_url(config: &Config) -> String {
    if let Some(m) = &config.hub.management {
        return m.clone();
    }
    let host = config
        .hub
        .amqp
        .parse()
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "127.0.0.1".into());
    format!("http://{host}:15672")
}

/// Compares and (unless `dry_run`) applies: every change made, or that would be made.
pub async fn provision(
    api: &Management,
    wanted: &Wanted,
    adopt: bool,
    dry_run: bool,
) -> Result<Vec<Change>, ProvisionError> {
    let vhost_exists = api.get(&format!("vhosts/{}", enc(&wanted.vhost))).await?.is_some();
    let mut existing = Vec::with_capacity(wanted.users.len());
    for u in &wanted.users {
        existing.push(api.existing(&u.name, &wanted.vhost).await?);
    }
    let mut changes = plan(wanted, vhost_exists, &existing, adopt)?;
    if vhost_exists {
        changes.extend(api.stale(wanted).await?.into_iter().map(Change::Revoke));
    }
    if !dry_run {
        for change in &changes {
            api.apply(change, wanted, &existing).await?;
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use exhub_connect::Topology;

    fn wanted() -> Wanted {
        let t = Topology::new("exhub");
        Wanted {
            vhost: "exhub".into(),
            marks: [t.hub_permissions().write, t.org_permissions::<&str>(&[]).write],
            users: vec![
                WantedUser {
                    name: "exhub-hub".into(),
                    password: Secret::new("hub-pw"),
                    permissions: t.hub_permissions(),
                    role: "the hub".into(),
                },
                WantedUser {
                    name: "nanhai.tax".into(),
                    password: Secret::new("tax-pw"),
                    permissions: t.org_permissions(&["tax-mirror"]),
                    role: "org nanhai.tax".into(),
                },
            ],
        }
    }

    fn hash(salt: [u8; 4], password: &str) -> String {
        let mut h = Sha256::new();
        h.update(salt);
        h.update(password.as_bytes());
        let mut bytes = salt.to_vec();
        bytes.extend_from_slice(&h.finalize());
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn a_new_exchange_gets_a_vhost_users_and_permissions() {
        let changes = plan(&wanted(), false, &[None, None], false).unwrap();
        assert_eq!(changes.len(), 5);
        assert_eq!(changes[0], Change::CreateVhost("exhub".into()));
        assert!(
            matches!(&changes[4], Change::SetPermissions(u, p) if u == "nanhai.tax" && p.write == "^(exhub\\.in|exhub\\.status)$")
        );
    }

    #[test]
    fn provisioned_state_plans_nothing_and_strangers_are_refused() {
        let w = wanted();
        let ours = |pw: &str, p: &Permissions| Existing {
            tags: vec![TAG.into()],
            password_hash: hash([1, 2, 3, 4], pw),
            hashing: "rabbit_password_hashing_sha256".into(),
            permissions: Some(p.clone()),
        };
        let existing = [
            Some(ours("hub-pw", &w.users[0].permissions)),
            Some(ours("tax-pw", &w.users[1].permissions)),
        ];
        assert_eq!(plan(&w, true, &existing, false).unwrap(), []);
        // A changed password and a widened permission are put back.
        let mut drifted = ours("old", &w.users[1].permissions);
        drifted.permissions = Some(Permissions {
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        });
        let existing = [Some(ours("hub-pw", &w.users[0].permissions)), Some(drifted)];
        let changes = plan(&w, true, &existing, false).unwrap();
        assert_eq!(changes.len(), 2, "{changes:?}");
        // A user exhub did not create is not touched without --adopt.
        let stranger = Existing {
            tags: vec!["administrator".into()],
            ..Existing::default()
        };
        let existing = [Some(stranger), None];
        assert!(matches!(plan(&w, true, &existing, false), Err(ProvisionError::NotOurs(u)) if u == "exhub-hub"));
        // With --adopt it is taken over — unless it is a broker administrator.
        assert!(matches!(plan(&w, true, &existing, true), Err(ProvisionError::Privileged(u, _)) if u == "exhub-hub"));
        let plain = Existing {
            tags: vec!["ops".into()],
            ..Existing::default()
        };
        assert!(plan(&w, true, &[Some(plain), None], true).is_ok());
    }

    #[test]
    fn the_management_api_is_reached_on_loopback_only() {
        let pw = Secret::new("pw");
        assert!(Management::new("http://127.0.0.1:15672", "admin", &pw).is_ok());
        assert!(Management::new("http://localhost:15672", "admin", &pw).is_ok());
        let far = Management::new("http://10.1.2.3:15672", "admin", &pw)
            .err()
            .map(|e| e.to_string());
        assert!(far.is_some_and(|e| e.contains("loopback only")));
    }

    #[test]
    fn rabbitmq_password_hashes_are_checked() {
        let h = hash([9, 8, 7, 6], "s3cret");
        assert!(password_matches(
            &h,
            "rabbit_password_hashing_sha256",
            &Secret::new("s3cret")
        ));
        assert!(!password_matches(
            &h,
            "rabbit_password_hashing_sha256",
            &Secret::new("other")
        ));
        assert!(!password_matches(
            &h,
            "rabbit_password_hashing_md5",
            &Secret::new("s3cret")
        ));
        assert!(!password_matches(
            "",
            "rabbit_password_hashing_sha256",
            &Secret::new("")
        ));
    }
}
