//! routes.toml: the one file that describes the whole exchange — the hub, organisations,
//! sources, subscribers and routes. This module owns its types (closed, `deny_unknown_fields`)
//! and reading it so that **every** syntax error and unknown key is reported with its line and
//! column, not just the first. The graph check ([`crate::check`]) builds on it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use exhub_connect::sign::{KeyError, SigningKey};

use crate::secret::{SecretError, SecretUrl, read_password_file};

/// Default of `[hub] secrets`: the directory of AMQP password files, beside routes.toml.
pub const SECRETS_DIR: &str = "exhub-secrets";
/// The public key lines of a `public_keys_file` (blank lines skipped).
pub fn read_key_lines(path: &Path) -> std::io::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Default of `[hub] max_batch_items`.
pub const MAX_BATCH_ITEMS: usize = 1000;
/// Default of `[hub] max_batch_bytes`.
pub const MAX_BATCH_BYTES: usize = 8 << 20;

/// Whether `name` is a valid name of an org, source, subscriber or route, and of an AMQP user
/// or prefix: lower-case ASCII letters, digits, `.`, `_`, `-`, at most 100 characters, not
/// starting with `.` (names become queue names, file names and permission patterns).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

/// The whole exchange.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The hub itself.
    pub hub: HubConfig,
    /// Participating organisations.
    #[serde(default, rename = "org")]
    pub orgs: Vec<OrgConfig>,
    /// Legacy databases whose changes are published.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// Receivers of documents.
    #[serde(default, rename = "subscriber")]
    pub subscribers: Vec<SubscriberConfig>,
    /// Which documents go to which subscribers.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Early-warning thresholds over the built-in ones ([`crate::alerts`]).
    #[serde(default, rename = "alert")]
    pub alerts: Vec<crate::alerts::AlertConfig>,
    /// Who may log in to the supervision console ([`crate::console`]).
    #[serde(default, rename = "operator")]
    pub operators: Vec<OperatorConfig>,
    /// Approval flows ([`crate::process`]).
    #[serde(default, rename = "process")]
    pub processes: Vec<crate::process::ProcessConfig>,
    /// Working days, for approval deadlines.
    #[serde(default)]
    pub calendar: crate::process::CalendarConfig,
}

/// `[[operator]]`: a login of the supervision console.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// The login name.
    pub name: String,
    /// The password's Argon2 hash (PHC string, `$argon2id$…`), as `exhub operator hash` prints
    /// it; the password itself is never written down.
    pub password_hash: String,
    /// An org's operator sees only that org's flows, alerts and figures; without one, the
    /// operator is the hub's and sees everything.
    pub org: Option<String>,
}

/// `[hub]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// RabbitMQ, `amqp://user:password@host:port/vhost`.
    pub amqp: SecretUrl,
    /// The archive: `sqlite://file.db` or `postgres://…`.
    pub archive: SecretUrl,
    /// Admin API listen address, e.g. `127.0.0.1:8480`.
    pub admin: Option<String>,
    /// A file holding a token that `GET /metrics` then requires (`Authorization: Bearer …`),
    /// relative to routes.toml; without it the metrics are open, as exporters' are.
    pub metrics_token_file: Option<PathBuf>,
    /// A directory of additional schemas (`<doc_type>.v<N>.json`), relative to routes.toml.
    pub schemas: Option<PathBuf>,
    /// Largest accepted document in bytes (default 4 MiB).
    pub max_document_bytes: Option<usize>,
    /// Prefix of every AMQP exchange and queue name (default `exhub`).
    pub prefix: Option<String>,
    /// Hub workers per process (default 2); more processes may run on the same config.
    pub workers: Option<usize>,
    /// The directory of AMQP password files that `exhub provision` writes and adapters read
    /// (default `exhub-secrets` beside routes.toml).
    pub secrets: Option<PathBuf>,
    /// Most documents in one batch message (default 1000); a bigger batch is dead-lettered
    /// whole, as one message.
    pub max_batch_items: Option<usize>,
    /// Most bytes of one batch message (default 8 MiB); a bigger batch is dead-lettered whole.
    pub max_batch_bytes: Option<usize>,
    /// The hub's public signing keys (`"<alg> hub#<name> <base64>"`): when set, sinks apply only
    /// copies signed by one of them.
    #[serde(default)]
    pub public_keys: Vec<String>,
    /// A file of more such lines (`exhub keys generate --hub` appends to it).
    pub public_keys_file: Option<PathBuf>,
    /// The hub's private signing key, which it signs every copy with when the file exists
    /// (default `<secrets>/hub.signing-key`; mode 0600).
    pub signing_key_file: Option<PathBuf>,
    /// How often sources and sinks report their status to the hub, seconds (default 5); a part
    /// is shown silent after three missed heartbeats.
    pub heartbeat_seconds: Option<u64>,
    /// The RabbitMQ management API `exhub provision` uses (default `http://<amqp host>:15672`);
    /// the administrator's login comes from `EXHUB_RABBITMQ_ADMIN` (`user:password`), never
    /// from this file.
    pub management: Option<String>,
}

impl HubConfig {
    /// The AMQP topology under the configured prefix.
    pub fn topology(&self) -> exhub_connect::Topology {
        exhub_connect::Topology::new(self.prefix.as_deref().unwrap_or("exhub"))
    }

    /// The hub's own AMQP user (RabbitMQ's `guest` when the URL names none).
    pub fn user(&self) -> String {
        crate::pipeline::amqp_user(&self.amqp)
    }

    /// How often sources and sinks report their status.
    pub fn heartbeat(&self) -> std::time::Duration {
        self.heartbeat_seconds
            .map_or(exhub_connect::status::DEFAULT_EVERY, |s| {
                std::time::Duration::from_secs(s.clamp(1, 3600))
            })
    }

    /// Batch limits: (most documents, most bytes).
    pub fn batch_limits(&self) -> (usize, usize) {
        (
            self.max_batch_items.unwrap_or(MAX_BATCH_ITEMS),
            self.max_batch_bytes.unwrap_or(MAX_BATCH_BYTES),
        )
    }

    /// The decoders' limits.
    pub fn limits(&self) -> exhub_schemas::Limits {
        let mut limits = exhub_schemas::Limits::default();
        if let Some(max) = self.max_document_bytes {
            limits.max_bytes = max;
        }
        limits
    }
}

/// `[[org]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgConfig {
    /// Stable id, e.g. `nanhai.tax`; documents name it in `header.sender.org`.
    pub id: String,
    /// Display name, e.g. 南海区税务局.
    pub name: String,
    /// Doc types this org may publish.
    #[serde(default)]
    pub publishes: Vec<String>,
    /// The RabbitMQ user this org publishes as (default: the org id).
    pub amqp_user: Option<String>,
    /// The file holding that user's password (default `<secrets>/<amqp_user>.password`),
    /// written by `exhub provision` when missing; the org's sources and sinks log in with it.
    pub amqp_password_file: Option<PathBuf>,
    /// The org's public signing keys, lines `"<ed25519|sm2> <org>#<name> <base64>"` as
    /// `exhub keys generate` prints them (several during a key rotation).
    #[serde(default)]
    pub public_keys: Vec<String>,
    /// A file of more such lines, collected from the department (`exhub keys generate`
    /// appends to it); public, unlike the signing key.
    pub public_keys_file: Option<PathBuf>,
    /// Refuse the org's documents unless they are signed by one of its keys (default false).
    #[serde(default)]
    pub require_signature: bool,
    /// The org's private signing key, which its sources and `exhub publish` sign with when the
    /// file exists (default `<secrets>/<org>.signing-key`; mode 0600).
    pub signing_key_file: Option<PathBuf>,
}

impl OrgConfig {
    /// The RabbitMQ user this org publishes as.
    pub fn amqp_user(&self) -> &str {
        self.amqp_user.as_deref().unwrap_or(&self.id)
    }
}

impl Config {
    /// The org with id `id`.
    pub fn org(&self, id: &str) -> Option<&OrgConfig> {
        self.orgs.iter().find(|o| o.id == id)
    }

    /// The directory of password files (relative paths against `base`, routes.toml's directory).
    pub fn secrets_dir(&self, base: &Path) -> PathBuf {
        base.join(self.hub.secrets.as_deref().unwrap_or(Path::new(SECRETS_DIR)))
    }

    /// Where `org`'s AMQP password is kept.
    pub fn org_password_file(&self, org: &OrgConfig, base: &Path) -> PathBuf {
        match &org.amqp_password_file {
            Some(p) => base.join(p),
            None => self.secrets_dir(base).join(format!("{}.password", org.amqp_user())),
        }
    }

    /// Where `org`'s private signing key is kept.
    pub fn org_signing_key_file(&self, org: &OrgConfig, base: &Path) -> PathBuf {
        match &org.signing_key_file {
            Some(p) => base.join(p),
            None => self.secrets_dir(base).join(format!("{}.signing-key", org.id)),
        }
    }

    /// The signing key `org`'s adapters sign with: its key file when it exists, else none —
    /// unless the org requires signatures, which makes a missing key an error.
    pub fn org_signer(&self, org: &str, base: &Path) -> Result<Option<SigningKey>, KeyError> {
        let Some(o) = self.org(org) else { return Ok(None) };
        let file = self.org_signing_key_file(o, base);
        if file.exists() {
            return SigningKey::read_file(&file).map(Some);
        }
        if o.require_signature {
            return Err(KeyError::Read {
                path: file.display().to_string(),
                detail: format!(
                    "org {org} requires signatures and has no signing key (exhub keys generate --org {org})"
                ),
            });
        }
        Ok(None)
    }

    /// Each org's AMQP user → the org's id.
    pub fn orgs_by_user(&self) -> std::collections::HashMap<String, String> {
        self.orgs
            .iter()
            .map(|o| (o.amqp_user().to_owned(), o.id.clone()))
            .collect()
    }

    /// The hub's signing key, when its key file exists.
    pub fn hub_signer(&self, base: &Path) -> Result<Option<SigningKey>, KeyError> {
        let file = self.hub_signing_key_file(base);
        if file.exists() {
            return SigningKey::read_file(&file).map(Some);
        }
        if !self.hub.public_keys.is_empty() {
            return Err(KeyError::Read {
                path: file.display().to_string(),
                detail: "[hub] public_keys is set, so sinks want signed copies, and the hub has no signing key \
                         (exhub keys generate --hub)"
                    .into(),
            });
        }
        Ok(None)
    }

    /// The token `GET /metrics` requires, if `[hub] metrics_token_file` names one: the file's
    /// first line, read as a password file is (owner-only, not empty). A file that fails is an
    /// error, never an open endpoint.
    pub fn metrics_token(&self, base: &Path) -> Result<Option<exhub_connect::secret::Secret>, SecretError> {
        self.hub
            .metrics_token_file
            .as_ref()
            .map(|file| read_password_file(&base.join(file)))
            .transpose()
    }

    /// Where the hub's private signing key is kept.
    pub fn hub_signing_key_file(&self, base: &Path) -> PathBuf {
        match &self.hub.signing_key_file {
            Some(p) => base.join(p),
            None => self.secrets_dir(base).join("hub.signing-key"),
        }
    }

    /// Reads every URL's password from its file or environment variable (see [`SecretUrl`]).
    pub fn resolve_secrets(&mut self, base: &Path) -> Result<(), SecretError> {
        // Public key files: their lines join the `public_keys` (a missing file adds none).
        let read = |file: &Option<PathBuf>| -> Vec<String> {
            file.as_ref()
                .and_then(|f| read_key_lines(&base.join(f)).ok())
                .unwrap_or_default()
        };
        let more = read(&self.hub.public_keys_file);
        self.hub.public_keys.extend(more);
        for o in &mut self.orgs {
            let more = read(&o.public_keys_file);
            o.public_keys.extend(more);
        }
        self.hub.amqp.resolve(base)?;
        self.hub.archive.resolve(base)?;
        for s in &mut self.sources {
            s.url.resolve(base)?;
            if let Some(a) = &mut s.amqp {
                a.resolve(base)?;
            }
        }
        for s in &mut self.subscribers {
            if let Some(url) = &mut s.url {
                url.resolve(base)?;
            }
            if let Some(a) = &mut s.amqp {
                a.resolve(base)?;
            }
        }
        Ok(())
    }

    /// The AMQP URL an org's adapter logs in with: `endpoint` (a source's or sink's own `amqp`,
    /// default `[hub] amqp`: host, port, vhost, TLS) with the org's user, and the password of
    /// `endpoint` when it has one, else the org's password file. Never the hub's login.
    pub fn org_login(&self, org: &str, endpoint: Option<&SecretUrl>, base: &Path) -> Result<SecretUrl, SecretError> {
        let Some(o) = self.org(org) else {
            return Err(SecretError::Url(format!("(org {org:?} is not defined)")));
        };
        if let Some(e) = endpoint
            && e.has_password()
        {
            // Never another login, nor RabbitMQ's default one (`exhub check` says so first).
            if e.username() != o.amqp_user() {
                return Err(SecretError::Url(format!("{e} (it must log in as {})", o.amqp_user())));
            }
            return Ok(e.clone());
        }
        let password = read_password_file(&self.org_password_file(o, base))?;
        endpoint.unwrap_or(&self.hub.amqp).with_login(o.amqp_user(), &password)
    }
}

pub use exhub_connect::mapping::{SnapshotMode, TableMapping};

pub use exhub_connect::adapter::parse_offset;

/// `[[source]]`: the settings every source has; the rest of the entry are the options of its
/// kind, which the kind's adapter reads and checks (`exhub_connect::adapter`): an option of
/// another kind is refused there, as an unknown key.
#[derive(Debug, Deserialize)]
pub struct SourceConfig {
    /// The database kind: `mysql`, `postgres`, `mssql`, … (see `exhub check` for the list).
    pub kind: String,
    /// Unique source name.
    pub name: String,
    /// The publishing org.
    pub org: String,
    /// Connection URL.
    pub url: SecretUrl,
    /// Snapshot mode.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Where this source reaches RabbitMQ, when not at `[hub] amqp`'s address. It always logs
    /// in as its org's AMQP user (with the org's password file unless this URL has a password).
    pub amqp: Option<SecretUrl>,
    /// The checkpoint file (default: `exhub-state/<name>.json` beside routes.toml).
    pub checkpoint: Option<PathBuf>,
    /// The time zone of the legacy database's zone-less date-times, e.g. `+08:00` (default:
    /// MySQL the server's, others UTC).
    pub time_zone: Option<String>,
    /// Tables and their mapping to documents.
    #[serde(default, rename = "table")]
    pub tables: Vec<TableMapping>,
    /// The options of this kind (everything else in the entry).
    #[serde(flatten)]
    pub options: toml::Table,
}

/// A subscriber's wire format.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON (default).
    #[default]
    Json,
    /// XML.
    Xml,
}

impl From<Format> for exhub_schemas::Encoding {
    fn from(f: Format) -> Self {
        match f {
            Format::Json => exhub_schemas::Encoding::Json,
            Format::Xml => exhub_schemas::Encoding::Xml,
        }
    }
}

/// The kind of a subscriber that reads its queue with any AMQP client.
pub const AMQP_KIND: &str = "amqp";

/// `[[subscriber]]`: a database sink (`kind` = a database kind, with `url` and `apply`) or a
/// plain AMQP client reading its queue (`kind = "amqp"`).
#[derive(Debug, Deserialize)]
pub struct SubscriberConfig {
    /// `amqp`, or the database kind of a sink: `postgres`, `mysql`, `mssql`, ….
    pub kind: String,
    /// Unique subscriber name (its queue is `<prefix>.sub.<name>`).
    pub name: String,
    /// The receiving org.
    pub org: String,
    /// Wire format of its queue.
    #[serde(default)]
    pub format: Format,
    /// Whether several documents may travel in one message (the batch form). Default: `true`
    /// for database sinks (they apply batches), `false` for plain AMQP subscribers, which get
    /// one document per message (`message_id` = the document's id, `type` = its doc type).
    pub batch: Option<bool>,
    /// A database sink's target database URL.
    pub url: Option<SecretUrl>,
    /// Where a database sink reaches RabbitMQ, when not at `[hub] amqp`'s address; it always
    /// logs in as its org's AMQP user.
    pub amqp: Option<SecretUrl>,
    /// A database sink's doc type → target table.
    #[serde(default)]
    pub apply: Vec<ApplyConfig>,
    /// The options of this kind (everything else in the entry).
    #[serde(flatten)]
    pub options: toml::Table,
}

/// `[[subscriber.apply]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyConfig {
    /// The doc type.
    pub doc_type: String,
    /// The target table.
    pub table: String,
    /// Document field → column, where the names differ (default: the field's name).
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
}

/// `[[route]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique route name.
    pub name: String,
    /// Doc types this route carries.
    pub doc_types: Vec<String>,
    /// Only documents from these orgs (default: any org allowed to publish them).
    pub from: Option<Vec<String>>,
    /// A filter on body fields, e.g. `body.district == '南海'` (see [`crate::filter`]).
    #[serde(rename = "where")]
    pub filter: Option<String>,
    /// Subscribers that receive them.
    pub to: Vec<String>,
    /// Subscriber → body fields it may not see.
    #[serde(default)]
    pub mask: BTreeMap<String, Vec<String>>,
}

impl SubscriberConfig {
    /// Subscriber name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Receiving org.
    pub fn org(&self) -> &str {
        &self.org
    }
    /// Wire format.
    pub fn format(&self) -> Format {
        self.format
    }
    /// Whether this subscriber is a database sink (any kind but `amqp`).
    pub fn is_database(&self) -> bool {
        self.kind != AMQP_KIND
    }
    /// Whether its copies may be batches (see [`SubscriberConfig::batch`]).
    pub fn takes_batches(&self) -> bool {
        self.batch.unwrap_or(self.is_database())
    }
    /// The database part, for database subscribers: itself, with its URL.
    pub fn database(&self) -> Option<(&SubscriberConfig, &SecretUrl)> {
        match &self.url {
            Some(url) if self.is_database() => Some((self, url)),
            _ => None,
        }
    }
}

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The config cannot be used.
    Error,
    /// Probably a mistake, but the exchange can run.
    Warning,
}

/// One problem found in routes.toml.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// 1-based line and column, where known.
    pub position: Option<(usize, usize)>,
    /// Where in the exchange, e.g. `route "tax-registrations" → to[1]`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// One step of a path into the TOML document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

impl From<&str> for Seg {
    fn from(k: &str) -> Self {
        Seg::Key(k.to_owned())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// routes.toml as read: its text (for positions) and, when it deserialized, the config.
#[derive(Debug)]
pub struct ConfigFile {
    /// The file it came from.
    pub path: PathBuf,
    text: String,
    /// The deserialized config (unknown keys left out), unless there were syntax errors or a
    /// structural error such as a missing field.
    pub config: Option<Config>,
    /// Syntax and structure problems (all unknown keys, all syntax errors).
    pub problems: Vec<Problem>,
}

/// Byte offset → 1-based (line, column in characters).
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Removes, anywhere in the table tree, the key named `name` inside `within` (an exact key span
/// for plain structs; the whole table's span where serde lost the key's own, as in tagged enums).
/// Returns the removed key's span.
fn remove_key(table: &mut DeTable<'_>, name: &str, within: &Range<usize>) -> Option<Range<usize>> {
    let found = table
        .iter()
        .map(|(k, _)| k)
        .find(|k| k.get_ref() == name && k.span().start >= within.start && k.span().end <= within.end)
        .cloned();
    if let Some(key) = found {
        table.remove(&key);
        return Some(key.span());
    }
    table
        .iter_mut()
        .find_map(|(_, v)| remove_in_value(v.get_mut(), name, within))
}

fn remove_in_value(value: &mut DeValue<'_>, name: &str, within: &Range<usize>) -> Option<Range<usize>> {
    match value {
        DeValue::Table(t) => remove_key(t, name, within),
        DeValue::Array(items) => items
            .iter_mut()
            .find_map(|v| remove_in_value(v.get_mut(), name, within)),
        _ => None,
    }
}

/// The span of a key path in the table tree (the value's span, or the key's for the last step).
fn span_of(table: &DeTable<'_>, path: &[Seg]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let Seg::Key(k) = first else { return None };
    let (key, value) = table.iter().find(|(key, _)| key.get_ref() == k)?;
    if rest.is_empty() {
        return Some(key.span());
    }
    span_in_value(value.get_ref(), rest).or_else(|| Some(value.span()))
}

fn span_in_value(value: &DeValue<'_>, path: &[Seg]) -> Option<Range<usize>> {
    match (value, path.first()?) {
        (DeValue::Table(t), Seg::Key(_)) => span_of(t, path),
        (DeValue::Array(items), Seg::Index(i)) => {
            let item = items.get(*i)?;
            if path.len() == 1 {
                Some(item.span())
            } else {
                span_in_value(item.get_ref(), &path[1..]).or_else(|| Some(item.span()))
            }
        }
        _ => None,
    }
}

fn read(text: &str) -> (Option<Config>, Vec<Problem>) {
    let mut problems = Vec::new();
    let (mut table, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        problems.extend(errors.iter().map(|e| toml_problem(text, e)));
        return (None, problems);
    }
    // Each round reports one unknown key and removes it, so that all are reported; any other
    // structural error (missing field, wrong type) ends the rounds.
    for _ in 0..1000 {
        match Config::deserialize(toml::de::Deserializer::from(table.clone())) {
            // With unknown keys removed the rest is sound, so the graph check can still run.
            Ok(config) => return (Some(config), problems),
            Err(e) => {
                let unknown = e
                    .message()
                    .strip_prefix("unknown field `")
                    .and_then(|rest| rest.split_once('`'))
                    .map(|(name, _)| name.to_owned());
                let removed = match (unknown, e.span()) {
                    // Serde may report only where the enclosing array starts: then take the first
                    // key of that name after it.
                    (Some(name), Some(span)) => remove_key(table.get_mut(), &name, &span)
                        .or_else(|| remove_key(table.get_mut(), &name, &(span.start..usize::MAX))),
                    _ => None,
                };
                let mut problem = toml_problem(text, &e);
                match removed {
                    Some(key_span) => {
                        problem.position = Some(line_col(text, key_span.start));
                        problem.path = enclosing_header(text, &key_span);
                        problems.push(problem);
                    }
                    None => {
                        problems.push(problem);
                        break;
                    }
                }
            }
        }
    }
    (None, problems)
}

fn toml_problem(text: &str, e: &toml::de::Error) -> Problem {
    Problem {
        severity: Severity::Error,
        position: e.span().map(|s| line_col(text, s.start)),
        path: e.span().map(|s| enclosing_header(text, &s)).unwrap_or_default(),
        message: e.message().trim().replace('\n', " "),
    }
}

/// The `[table]` header above a span, as a human path — best effort.
fn enclosing_header(text: &str, span: &Range<usize>) -> String {
    let before = text.get(..span.start).unwrap_or("");
    before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(str::to_owned)
        .unwrap_or_default()
}

impl ConfigFile {
    /// Reads and deserializes `path`, collecting every syntax error and every unknown key.
    /// Only an unreadable file is an `Err`.
    pub fn load(path: &Path) -> std::io::Result<ConfigFile> {
        let text = std::fs::read_to_string(path)?;
        Ok(ConfigFile::parse(path, text))
    }

    /// As [`ConfigFile::load`], from text.
    pub fn parse(path: &Path, text: String) -> ConfigFile {
        let (config, problems) = read(&text);
        ConfigFile {
            path: path.to_owned(),
            text,
            config,
            problems,
        }
    }

    /// The file's spans, parsed once, for locating many problems.
    pub fn positions(&self) -> Positions<'_> {
        let (table, _) = DeTable::parse_recoverable(&self.text);
        Positions {
            text: &self.text,
            table,
        }
    }

    /// The directory relative paths in the config are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        self.path.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

/// Where paths are in routes.toml: the span-carrying table, parsed once.
pub struct Positions<'a> {
    text: &'a str,
    table: toml::Spanned<DeTable<'a>>,
}

impl Positions<'_> {
    /// 1-based line and column of a path such as `["route", 2, "to", 1]`.
    pub fn position(&self, path: &[Seg]) -> Option<(usize, usize)> {
        span_of(self.table.get_ref(), path).map(|s| line_col(self.text, s.start))
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if let Some((l, c)) = self.position {
            write!(f, "{l}:{c}: ")?;
        }
        write!(f, "{sev}: ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}
