//! What every benchmark needs around the code it measures: its flags, the broker's address, and
//! the real `exhub` processes it starts, watches (log lines, peak RSS, CPU time) and stops.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// The RabbitMQ a benchmark runs on.
#[derive(Clone, Copy, Debug)]
pub struct Broker {
    /// `host:port` of the node tried first.
    pub address: &'static str,
    /// The other nodes (`failover=` of exhub's AMQP URLs), or "".
    pub failover: &'static str,
    /// The management API, when not at the AMQP host's port 15672.
    pub management: Option<&'static str>,
}

impl Broker {
    /// `--broker local` (the machine's broker, the default) or `cluster` (scripts/cluster.sh).
    pub fn named(name: &str) -> Result<Broker> {
        match name {
            "local" => Ok(LOCAL),
            "cluster" => Ok(Broker {
                address: "127.0.0.1:5701",
                failover: "127.0.0.1:5702,127.0.0.1:5703",
                management: Some("http://127.0.0.1:15701"),
            }),
            other => anyhow::bail!("--broker {other}: local or cluster (start it with scripts/cluster.sh start)"),
        }
    }

    /// The AMQP URL logging in as `login` (`user` or `user:password`), with the failover nodes.
    pub fn url(&self, login: &str) -> String {
        let failover = match self.failover {
            "" => String::new(),
            nodes => format!("?failover={nodes}"),
        };
        format!("amqp://{login}@{}/%2f{failover}", self.address)
    }
}

/// The machine's broker, as scripts/services.sh leaves it.
const LOCAL: Broker = Broker {
    address: "127.0.0.1:5672",
    failover: "",
    management: None,
};

/// The broker this run uses: the machine's unless a benchmark chose with [`use_broker`].
static BROKER: std::sync::OnceLock<Broker> = std::sync::OnceLock::new();

/// Chooses the broker for the whole run (before anything connects).
pub fn use_broker(broker: Broker) {
    let _ = BROKER.set(broker);
}

/// The broker this run uses.
pub fn broker() -> Broker {
    *BROKER.get_or_init(|| LOCAL)
}

/// The broker's administrator (guest): what the benchmarks set up, relay, observe and clean up
/// with (never what the exchange runs as).
pub fn admin_url() -> String {
    broker().url("guest:guest")
}

/// A routes.toml for a benchmark: a hub with `workers` workers archiving at `archive` under AMQP
/// prefix `prefix`, logging in as `<prefix>-hub`; the tax and commerce orgs (users
/// `<prefix>-tax`, `<prefix>-commerce`; passwords in `secrets/` beside the file, written by
/// [`provision`]); and `graph` (sources, subscribers, routes).
pub fn routes_toml(archive: &str, prefix: &str, workers: usize, graph: &str) -> String {
    let broker = broker();
    let hub_url = broker.url(&format!("{prefix}-hub"));
    let management = broker
        .management
        .map(|m| format!("management = \"{m}\"\n"))
        .unwrap_or_default();
    format!(
        r#"[hub]
amqp = {{ url = "{hub_url}", password_file = "secrets/{prefix}-hub.password" }}
{management}secrets = "secrets"
archive = "{archive}"
prefix = "{prefix}"
workers = {workers}

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

{graph}"#
    )
}

/// Runs the real `exhub provision` on `config`: the benchmark's users, with least privilege.
pub fn provision(config: &Path) -> Result<()> {
    let out = Command::new(exhub_bin()?)
        .args(["provision", "--config"])
        .arg(config)
        .output()?;
    if !out.status.success() {
        bail!("exhub provision: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The local CA scripts/services.sh made.
const CA: &str = "/var/lib/exhub-tls/ca.pem";

/// Sets the connections of the exchange of `config` to TLS or to clear text, so that the two
/// can be compared: `spec` is `on` (every connection), `off` (none), or a comma-separated list of
/// `amqp`, `source`, `sink`, `archive`. TLS is amqps to RabbitMQ's TLS port, PostgreSQL
/// `verify-full`, MySQL/MariaDB `VERIFY_IDENTITY`, all against the local CA; clear text is said
/// outright, since PostgreSQL's and the MySQL sink's clients would otherwise take TLS whenever
/// the server offers it.
pub fn set_tls(config: &Path, spec: &str) -> Result<()> {
    let parts: Vec<&str> = match spec {
        "on" => vec!["amqp", "source", "sink", "archive"],
        "off" => vec![],
        list => list.split(',').collect(),
    };
    if let Some(bad) = parts
        .iter()
        .find(|p| !["amqp", "source", "sink", "archive"].contains(p))
    {
        bail!("--tls {spec}: {bad} is not on, off, amqp, source, sink or archive");
    }
    let text = std::fs::read_to_string(config)?;
    let mut out = String::with_capacity(text.len() + 256);
    let mut section = "";
    for line in text.lines() {
        let mut line = line.to_owned();
        if line.starts_with('[') {
            section = match line.trim() {
                "[hub]" => "archive",
                "[[source]]" => "source",
                "[[subscriber]]" => "sink",
                _ => section,
            };
        }
        let on = parts.contains(&section);
        if let Some(start) = line.find("\"postgres://").or_else(|| line.find("\"mysql://")) {
            let end = line[start + 1..].find('"').map(|e| start + 1 + e);
            if let Some(end) = end {
                let url = &line[start + 1..end];
                let param = match (url.starts_with("postgres"), on) {
                    (true, true) => format!("sslmode=verify-full&sslrootcert={CA}"),
                    (true, false) => "sslmode=disable".to_owned(),
                    (false, true) => format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={CA}"),
                    (false, false) => "ssl-mode=DISABLED".to_owned(),
                };
                let sep = if url.contains('?') { '&' } else { '?' };
                line = format!("{}{url}{sep}{param}{}", &line[..start + 1], &line[end..]);
            }
        }
        if parts.contains(&"amqp") {
            line = line.replace("amqp://", "amqps://").replace(
                "@127.0.0.1:5672/%2f\"",
                &format!("@127.0.0.1:5671/%2f?cacertfile={CA}\""),
            );
        }
        out.push_str(&line);
        out.push('\n');
    }
    std::fs::write(config, out)?;
    Ok(())
}

/// Turns signing on for the exchange of `config`: `exhub keys generate` with `alg` (`ed25519`
/// or `sm2`) for the tax and commerce orgs and for the hub, their public lines added to the
/// config (the tax bureau then *must* sign, and the sinks want the hub's signature). `none`
/// leaves the config as it is.
pub fn enable_signing(config: &Path, alg: &str) -> Result<()> {
    if alg == "none" {
        return Ok(());
    }
    let key = |who: &[&str]| -> Result<String> {
        let out = Command::new(exhub_bin()?)
            .args(["keys", "generate", "--alg", alg, "--config"])
            .arg(config)
            .args(who)
            .output()?;
        if !out.status.success() {
            bail!("exhub keys generate: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let mut text = std::fs::read_to_string(config)?;
    let hub = key(&["--hub"])?;
    text = text.replacen("[hub]\n", &format!("[hub]\npublic_keys = [\"{hub}\"]\n"), 1);
    for (org, extra) in [("nanhai.tax", "require_signature = true\n"), ("nanhai.commerce", "")] {
        let line = key(&["--org", org])?;
        let anchor = format!("id = \"{org}\"\n");
        text = text.replacen(&anchor, &format!("{anchor}public_keys = [\"{line}\"]\n{extra}"), 1);
    }
    std::fs::write(config, text)?;
    Ok(())
}

/// The AMQP URL of user `<prefix>-<short>`, with the password [`provision`] wrote beside the
/// config in `dir`.
pub fn login(dir: &Path, prefix: &str, short: &str) -> Result<String> {
    let user = format!("{prefix}-{short}");
    let file = dir.join("secrets").join(format!("{user}.password"));
    let password = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    Ok(broker().url(&format!("{user}:{}", password.trim())))
}

/// `--name value` flags, taken one by one; [`Flags::done`] refuses the ones nobody took.
pub struct Flags(BTreeMap<String, String>);

impl Flags {
    /// Parses `--name value` pairs.
    pub fn parse(args: impl Iterator<Item = String>) -> Result<Flags> {
        let mut map = BTreeMap::new();
        let mut it = args;
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .with_context(|| format!("expected a --flag, got {flag}"))?;
            let value = it.next().with_context(|| format!("--{name} takes a value"))?;
            map.insert(name.to_owned(), value);
        }
        Ok(Flags(map))
    }

    /// The value of `--name`, or `default`.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> Result<T>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        match self.0.get(name) {
            Some(v) => v.parse().with_context(|| format!("--{name} {v}")),
            None => Ok(default),
        }
    }

    /// Fails on a flag that is not `known`.
    pub fn done(&self, known: &[&str]) -> Result<()> {
        if let Some(unknown) = self.0.keys().find(|k| !known.contains(&k.as_str())) {
            bail!("unknown flag --{unknown} (known: --{})", known.join(", --"));
        }
        Ok(())
    }
}

/// A running `exhub` process, stopped (SIGKILL) when dropped so that a failed benchmark leaves
/// nothing running.
pub struct Exhub {
    child: Child,
    log: PathBuf,
}

impl Exhub {
    /// Starts `exhub ARGS --config CONFIG` with `EXHUB_LOG=log_filter`, its log in `log`.
    pub fn spawn(config: &Path, args: &[&str], log_filter: &str, log: &Path) -> Result<Exhub> {
        let file = std::fs::File::create(log)?;
        let child = Command::new(exhub_bin()?)
            .args(args)
            .arg("--config")
            .arg(config)
            .env("EXHUB_LOG", log_filter)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting exhub {}", args.join(" ")))?;
        Ok(Exhub {
            child,
            log: log.to_owned(),
        })
    }

    /// Waits until the log shows `line`; fails if the process exits or `timeout` passes.
    pub async fn wait_log(&mut self, line: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if std::fs::read_to_string(&self.log)?.contains(line) {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("no `{line}` in {} after {timeout:?}", self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails, with the end of its log, if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{} exited ({status}):\n{}", self.log.display(), tail.join("\n"));
        }
        Ok(())
    }

    /// Peak resident set size (`VmHWM`), in MB.
    pub fn peak_rss_mb(&self) -> Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmHWM not in /proc/<pid>/status")?;
        Ok(kb / 1024.0)
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed /proc/<pid>/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
            .sum();
        Ok(ticks / 100.0)
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Prints the `hub stages` lines of a hub's log (logged at `info` every 10 s and when it
    /// stops): where its time went.
    pub fn print_stages(&self) -> Result<()> {
        for line in std::fs::read_to_string(&self.log)?.lines() {
            if let Some(stages) = line.split("hub stages").nth(1) {
                println!("  {}", stages.trim());
            }
        }
        Ok(())
    }
}

impl Drop for Exhub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `exhub` next to this binary (the same profile), or `EXHUB_BIN`.
fn exhub_bin() -> Result<PathBuf> {
    if let Ok(bin) = std::env::var("EXHUB_BIN") {
        return Ok(bin.into());
    }
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("exhub");
    if !bin.exists() {
        bail!("{} not built: cargo build --release --bins", bin.display());
    }
    Ok(bin)
}
