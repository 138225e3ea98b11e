//! A test exchange: its own AMQP prefix (so tests share the broker without seeing each other),
//! its own RabbitMQ users with least privilege, made by the real `exhub provision` (the hub's
//! and one per org, all named after the prefix, passwords in the scratch directory), its own
//! scratch directory with a routes.toml, its own archive (SQLite file or a fresh PostgreSQL
//! database), hub processes of the real binary, and helpers to publish as an org and to read
//! queues (as the broker's administrator, an observer outside the exchange). Dropping it stops
//! its hubs and deletes its queues, exchanges, users and database.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use exhub_connect::publisher::Declare;
use exhub_connect::wire;
use exhub_connect::{Outgoing, Publisher, Topology};
use exhub_hub::archive::{Archive, Query};
use futures_util::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use crate::{exhub_bin, scratch};

/// The broker's administrator: what tests observe queues with, and what an over-privileged
/// (misconfigured) participant would be.
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The RabbitMQ an exchange runs on: the machine's broker, or the three-node cluster of
/// `scripts/cluster.sh`.
#[derive(Clone, Copy, Debug)]
pub struct Broker {
    /// `host:port` of the node tried first.
    pub address: &'static str,
    /// The other nodes (`failover=` of exhub's AMQP URLs), or "".
    pub failover: &'static str,
    /// The management API.
    pub management: &'static str,
}

/// The machine's broker.
pub const LOCAL: Broker = Broker {
    address: "127.0.0.1:5672",
    failover: "",
    management: "http://127.0.0.1:15672",
};

/// The cluster `scripts/cluster.sh start` runs.
pub const CLUSTER: Broker = Broker {
    address: "127.0.0.1:5701",
    failover: "127.0.0.1:5702,127.0.0.1:5703",
    management: "http://127.0.0.1:15701",
};

impl Broker {
    /// The AMQP URL logging in as `login` (`user` or `user:password`), with the failover nodes.
    pub fn url(&self, login: &str) -> String {
        let failover = match self.failover {
            "" => String::new(),
            nodes => format!("?failover={nodes}"),
        };
        format!("amqp://{login}@{}/%2f{failover}", self.address)
    }

    /// A connection as the broker's administrator (guest), failing over like exhub's own.
    pub async fn admin(&self) -> Result<Connection, exhub_connect::amqp::AmqpError> {
        exhub_connect::amqp::connect(&self.url("guest:guest"), "exhub-test-admin").await
    }

    /// The management API as the broker's administrator.
    pub fn management(&self) -> Result<exhub_hub::provision::Management, exhub_hub::provision::ProvisionError> {
        exhub_hub::provision::Management::new(self.management, "guest", &exhub_hub::secret::Secret::new("guest"))
    }
}

/// Where the archive lives.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    Sqlite,
    Postgres,
}

pub struct Exchange {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub topology: Topology,
    pub archive_url: String,
    subscribers: Vec<String>,
    pg_db: Option<String>,
    hubs: Vec<Child>,
    /// Hub processes started so far (each logs to `hub-<n>.log`).
    started: usize,
    owner: bool,
    /// The AMQP prefix, which the exchange's user names start with.
    prefix: String,
    /// The RabbitMQ it runs on.
    pub broker: Broker,
}

/// Orgs every test exchange has: `nanhai.tax` (AMQP user `<prefix>-tax`; tax.registration),
/// `nanhai.commerce` (`<prefix>-commerce`; business licences), `nanhai.other`
/// (`<prefix>-other`; tax.registration too).
fn orgs(prefix: &str) -> String {
    format!(
        r#"
[[org]]
id = "nanhai.tax"
name = "南海区税务局"
publishes = ["tax.registration"]
amqp_user = "{prefix}-tax"

[[org]]
id = "nanhai.commerce"
name = "南海区市场监督管理局"
publishes = ["commerce.business_license"]
amqp_user = "{prefix}-commerce"

[[org]]
id = "nanhai.other"
name = "另一个单位"
publishes = ["tax.registration"]
amqp_user = "{prefix}-other"
"#
    )
}

/// The org short names of [`orgs`].
const ORG_USERS: [&str; 3] = ["tax", "commerce", "other"];

impl Exchange {
    /// A new exchange whose `[hub]` gets `hub_extra` lines and whose subscribers and routes
    /// are `graph` (TOML).
    pub fn new(tag: &str, archive: ArchiveKind, hub_extra: &str, graph: &str) -> Exchange {
        Exchange::on(LOCAL, tag, archive, hub_extra, graph)
    }

    /// [`Exchange::new`] on `broker`.
    pub fn on(broker: Broker, tag: &str, archive: ArchiveKind, hub_extra: &str, graph: &str) -> Exchange {
        let dir = scratch(tag);
        let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
        let (archive_url, pg_db) = match archive {
            ArchiveKind::Sqlite => (format!("sqlite://{}", dir.join("archive.db").display()), None),
            ArchiveKind::Postgres => {
                let db = format!("exhub_{prefix}");
                psql(&format!("CREATE DATABASE {db}"));
                (format!("postgres://postgres@127.0.0.1:5432/{db}"), Some(db))
            }
        };
        let config = dir.join("routes.toml");
        let management = match broker.management {
            m if m == LOCAL.management => String::new(),
            m => format!("management = \"{m}\"\n"),
        };
        let toml = format!(
            "[hub]\namqp = {{ url = \"{}\", password_file = \"secrets/hub.password\" }}\n{management}\
             secrets = \"secrets\"\narchive = \"{archive_url}\"\nprefix = \"{prefix}\"\n{hub_extra}\n{}\n{graph}",
            broker.url(&format!("{prefix}-hub")),
            orgs(&prefix)
        );
        std::fs::write(&config, toml).unwrap();
        let subscribers = graph
            .lines()
            .filter_map(|l| l.trim().strip_prefix("name = \""))
            .filter_map(|l| l.strip_suffix('"'))
            .map(str::to_owned)
            .collect();
        let ex = Exchange {
            dir,
            config,
            topology: Topology::new(prefix.clone()),
            archive_url,
            subscribers,
            pg_db,
            hubs: Vec::new(),
            started: 0,
            owner: true,
            prefix,
            broker,
        };
        let out = ex.exhub(&["provision"]);
        assert!(
            out.status.success(),
            "exhub provision: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ex
    }

    /// The AMQP user of org `nanhai.<short>` (`tax`, `commerce`, `other`), or `hub`.
    pub fn user(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// The AMQP URL of that user, with the password `exhub provision` wrote for it.
    pub fn url_of(&self, short: &str) -> String {
        let file = match short {
            "hub" => "hub.password".to_owned(),
            _ => format!("{}.password", self.user(short)),
        };
        let password = std::fs::read_to_string(self.dir.join("secrets").join(file)).unwrap();
        self.broker.url(&format!("{}:{}", self.user(short), password.trim()))
    }

    /// Properties of a tax registration published by the tax bureau's AMQP user.
    pub fn props(&self, id: &str) -> BasicProperties {
        props(id, &self.user("tax"))
    }

    /// A handle on this exchange (for a second task to publish with); it owns nothing and
    /// cleans up nothing.
    pub fn handle(&self) -> Exchange {
        Exchange {
            dir: self.dir.clone(),
            config: self.config.clone(),
            topology: self.topology.clone(),
            archive_url: self.archive_url.clone(),
            subscribers: Vec::new(),
            pg_db: None,
            hubs: Vec::new(),
            started: 0,
            owner: false,
            prefix: self.prefix.clone(),
            broker: self.broker,
        }
    }

    /// Runs `exhub ARGS` with this exchange's config.
    pub fn exhub(&self, args: &[&str]) -> Output {
        Command::new(exhub_bin())
            .args(args)
            .env("EXHUB_CONFIG", &self.config)
            .current_dir(&self.dir)
            .output()
            .unwrap()
    }

    /// Starts a hub process and waits until both its workers consume the ingress queue (each
    /// logs `consuming` once its `basic.consume` was answered).
    pub async fn start_hub(&mut self) {
        let n = self.started;
        self.started += 1;
        let log = std::fs::File::create(self.dir.join(format!("hub-{n}.log"))).unwrap();
        let child = Command::new(exhub_bin())
            .args(["hub", "--workers", "2"])
            .env("EXHUB_CONFIG", &self.config)
            .env("EXHUB_LOG", "info,exhub_hub=debug")
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.hubs.push(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.hub_log(n).matches("consuming").count() < 2 {
            assert!(
                Instant::now() < deadline,
                "hub did not start consuming; log: {}",
                self.hub_log(n)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The peak resident memory (VmHWM, kB) of running hub `n`.
    pub fn hub_peak_rss_kb(&self, n: usize) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.hubs[n].id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// The log of hub `n`.
    pub fn hub_log(&self, n: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("hub-{n}.log"))).unwrap_or_default()
    }

    /// Sends SIGKILL to hub `n` (started `n`-th), leaving the others running.
    pub fn kill_hub(&mut self, n: usize) {
        let h = &mut self.hubs[n];
        let _ = h.kill();
        let _ = h.wait();
    }

    /// Sends SIGKILL to every hub.
    pub fn kill_hubs(&mut self) {
        for mut h in self.hubs.drain(..) {
            let _ = h.kill();
            let _ = h.wait();
        }
    }

    /// Sends SIGTERM to the last hub and waits for it to exit.
    pub fn terminate_hub(&mut self) -> ExitStatus {
        let mut h = self.hubs.pop().expect("a hub runs");
        let ok = Command::new("kill")
            .args(["-TERM", &h.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        h.wait().unwrap()
    }

    /// Messages waiting in `queue`.
    pub async fn depth(&self, queue: &str) -> u32 {
        let conn = self.broker.admin().await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = ch
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .unwrap();
        let _ = conn.close(200, "".into()).await;
        q.message_count()
    }

    /// Publishes raw messages to the ingress exchange with confirms, as the tax bureau's user.
    pub async fn publish(&self, messages: Vec<(Vec<u8>, BasicProperties)>) {
        self.publish_as("tax", messages).await;
    }

    /// Publishes raw messages to the ingress exchange with confirms, logged in as `user` (see
    /// [`Exchange::user`]).
    pub async fn publish_as(&self, user: &str, messages: Vec<(Vec<u8>, BasicProperties)>) {
        let out: Vec<Outgoing> = messages
            .into_iter()
            .map(|(payload, properties)| Outgoing {
                exchange: self.topology.ingress_exchange(),
                routing_key: String::new(),
                payload,
                properties,
            })
            .collect();
        let mut p = Publisher::new(self.url_of(user), "exhub-test", Declare::Ingress(self.topology.clone()));
        p.publish(&out, &CancellationToken::new()).await.unwrap();
    }

    /// Takes messages from `queue` (acknowledging them) until `want` is true of what was taken,
    /// or `timeout` passes.
    pub async fn take(&self, queue: &str, timeout: Duration, want: impl Fn(&Taken) -> bool) -> Taken {
        let conn = self.broker.admin().await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.basic_qos(1000, BasicQosOptions::default()).await.unwrap();
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut taken = Taken::default();
        let deadline = tokio::time::Instant::now() + timeout;
        while !want(&taken) {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    d.ack(BasicAckOptions::default()).await.unwrap();
                    // A batch is split into its documents (a malformed one, in a DLQ, stays whole).
                    let docs: Vec<Vec<u8>> = match wire::is_batch(&d.properties).then(|| wire::split_batch(&d.data)) {
                        Some(Ok(parts)) => parts.into_iter().map(<[u8]>::to_vec).collect(),
                        _ => vec![d.data.clone()],
                    };
                    taken.docs += docs.len();
                    for doc in &docs {
                        if let Some(id) = doc_id(doc) {
                            taken.order.push(id.clone());
                            taken.ids.insert(id);
                        }
                    }
                    taken.messages.push(Received {
                        properties: d.properties.clone(),
                        docs,
                    });
                }
                Ok(other) => panic!("consumer ended: {other:?}"),
                Err(_) => break,
            }
        }
        let _ = conn.close(200, "".into()).await;
        taken
    }

    /// The archive.
    pub async fn archive(&self) -> Archive {
        Archive::open(&self.archive_url).await.unwrap()
    }

    /// Ids of every archived document (and how many rows there are).
    pub async fn archived_ids(&self) -> (HashSet<String>, usize) {
        let archive = self.archive().await;
        let mut ids = HashSet::new();
        let mut rows = 0;
        let mut after: Option<(i64, String)> = None;
        loop {
            let page = archive
                .search(&Query::default(), after.as_ref().map(|(t, i)| (*t, i.as_str())), 5000)
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = Some((last.received_at, last.id.clone()));
            rows += page.len();
            ids.extend(page.into_iter().map(|r| r.id));
        }
        archive.close().await;
        (ids, rows)
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        self.kill_hubs();
        let topology = self.topology.clone();
        let subscribers = self.subscribers.clone();
        let users: Vec<String> = ORG_USERS.iter().chain(&["hub"]).map(|u| self.user(u)).collect();
        let broker = self.broker;
        // Drop may run inside a runtime: clean up from a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(conn) = broker.admin().await
                    && let Ok(ch) = conn.create_channel().await
                {
                    let _ = topology.delete_all(&ch, &subscribers).await;
                }
                if let Ok(api) = broker.management() {
                    for u in users {
                        let _ = api.delete(&format!("users/{u}")).await;
                    }
                }
            });
        })
        .join();
        if let Some(db) = &self.pg_db {
            psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A message taken from a queue.
#[derive(Debug)]
pub struct Received {
    pub properties: BasicProperties,
    pub docs: Vec<Vec<u8>>,
}

/// What [`Exchange::take`] took.
#[derive(Debug, Default)]
pub struct Taken {
    /// The messages.
    pub messages: Vec<Received>,
    /// Documents in them (a batch counts its documents).
    pub docs: usize,
    /// Distinct document ids.
    pub ids: HashSet<String>,
    /// Document ids in arrival order (repeats included).
    pub order: Vec<String>,
}

/// The header id of an encoded document (JSON or XML), if it has one.
pub fn doc_id(doc: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(doc);
    if text.trim_start().starts_with('<') {
        let start = text.find("<id>")? + 4;
        let end = text[start..].find("</id>")? + start;
        return Some(text[start..end].to_owned());
    }
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(v["header"]["id"].as_str()?.to_owned())
}

/// The management API of the machine's broker as its administrator.
pub fn management() -> Result<exhub_hub::provision::Management, exhub_hub::provision::ProvisionError> {
    LOCAL.management()
}

pub async fn connect() -> lapin::Result<Connection> {
    Connection::connect(AMQP, ConnectionProperties::default()).await
}

pub fn psql(sql: &str) {
    crate::services::psql("postgres", sql);
}

/// Properties of a document published by AMQP user `user`.
pub fn props(id: &str, user: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(id.into())
        .with_type("tax.registration".into())
        .with_user_id(user.into())
}

/// A valid tax registration from `org` with a fresh id: (id, bytes).
pub fn tax_doc(org: &str, n: u64, district: &str) -> (String, Vec<u8>) {
    let id = uuid::Uuid::now_v7();
    (
        id.to_string(),
        exhub_schemas::samples::tax_registration(id, org, n, district).into_bytes(),
    )
}
