//! The `exhub` command: the one place that dispatches to every part of the exchange.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
mod cmd;

use exhub_hub::archive::Query;
use exhub_hub::check::check;
use exhub_hub::config::{ConfigFile, Severity};
use exhub_schemas::{Document, Limits, Registry, decode, json, xml, xsd};

/// exhub — a government data exchange hub.
#[derive(Parser)]
#[command(name = "exhub", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the whole exchange described in routes.toml; print every problem.
    Check {
        /// The exchange description.
        #[arg(long, env = "EXHUB_CONFIG", default_value = "routes.toml")]
        config: PathBuf,
    },
    /// Validate an exchange document (JSON or XML) against its schema.
    Validate {
        /// The document file.
        file: PathBuf,
        /// Extra schema directory.
        #[arg(long)]
        schemas: Option<PathBuf>,
    },
    /// Convert a document between JSON and XML (to stdout).
    Convert {
        /// Target encoding.
        #[arg(long)]
        to: Target,
        /// The document file.
        file: PathBuf,
        /// Extra schema directory.
        #[arg(long)]
        schemas: Option<PathBuf>,
    },
    /// Work with the schemas of the exchange standard.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Create or correct the broker's vhost, the hub's user and one user per org, with exactly
    /// the permissions routes.toml implies (RabbitMQ management API; administrator login from
    /// EXHUB_RABBITMQ_ADMIN=user:password, default guest:guest).
    Provision {
        /// The exchange description.
        #[arg(long, env = "EXHUB_CONFIG", default_value = "routes.toml")]
        config: PathBuf,
        /// Print what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Take over users that exist but were not created by exhub provision.
        #[arg(long)]
        adopt: bool,
    },
    /// Statistics from the archive: documents received, refused (by reason), routed and
    /// applied, and how long until applied, per org, doc type, subscriber or day.
    Stats {
        /// The exchange description.
        #[arg(long, env = "EXHUB_CONFIG", default_value = "routes.toml")]
        config: PathBuf,
        /// From: 2026-11-22 (midnight at `--offset`) or 2026-11-22T08:00:00+08:00; default: the
        /// start of today at `--offset`.
        #[arg(long)]
        since: Option<String>,
        /// Until, not included, written as `--since` (default: now).
        #[arg(long)]
        until: Option<String>,
        /// Rows per org, doc_type, subscriber or day.
        #[arg(long, default_value = "org")]
        by: exhub_hub::stats::By,
        /// The time zone's offset from UTC that days are counted in, e.g. +08:00.
        #[arg(long, default_value = "+00:00", value_parser = exhub_hub::stats::parse_offset, allow_hyphen_values = true)]
        offset: i32,
        /// table, csv or json.
        #[arg(long, value_enum, default_value = "table")]
        format: cmd::stats::Format,
    },
    /// The archive's hash-chained audit log.
    Audit {
        /// The exchange description.
        #[arg(long, env = "EXHUB_CONFIG", default_value = "routes.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The supervision console's operators.
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// Signing keys of orgs and of the hub.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Run hub workers (several processes may share one config) until Ctrl-C or SIGTERM.
    Hub {
        /// The exchange description.
        #[arg(long, env = "EXHUB_CONFIG", default_value = "routes.toml")]
        config: PathBuf,
        /// Workers in this process (default: `[hub] workers`, else 2).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Run the whole configured exchange in one process: the hub, every source, every database sink.
    Run {
        /// The exchange description.
        #[arg(long, env = "EXHUB_CONFIG", default_value = "routes.toml")]
        config: PathBuf,
        /// A source or database subscriber not to run here (it runs elsewhere: `exhub source`,
        /// `exhub sink`); may be repeated.
        #[arg(long, value_name = "NAME")]
        except: Vec<String>,
    },
    /// Run one source (a legacy database's change feed) until Ctrl-C or SIGTERM.
    Source {
        /// The exchange description.
        #[arg(long, env = "EXHUB_CONFIG", default_value = "routes.toml")]
        config: PathBuf,
        /// The source's name in routes.toml.
        name: String,
        /// Forget the checkpoint first: start over with a new snapshot.
        #[arg(long)]
        reset: bool,
        /// Retire the source: drop its replication slot and publication (PostgreSQL) and its
        /// checkpoint, then exit.
        #[arg(long)]
        drop_slot: bool,
    },
    /// Run one database subscriber (applies its documents to its tables) until Ctrl-C or SIGTERM.
    Sink {
        /// The exchange description.
        #[arg(long, env = "EXHUB_CONFIG", default_value = "routes.toml")]
        config: PathBuf,
        /// The subscriber's name in routes.toml.
        name: String,
    },
    /// Publish documents (JSON or XML files) to the hub as an org, with publisher confirms.
    Publish {
        /// The exchange description.
        #[arg(long, env = "EXHUB_CONFIG", default_value = "routes.toml")]
        config: PathBuf,
        /// The publishing org. It logs in as the org's AMQP user with the org's password file,
        /// or with the URL in the environment variable `EXHUB_AMQP_URL` (never a command-line
        /// argument: those show in `ps`).
        #[arg(long = "as", value_name = "ORG")]
        org: String,
        /// Documents per message: 1 sends single messages, more sends batches.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// The document files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show documents as they are routed to a subscriber, without taking them from its queue.
    Tail {
        /// The exchange description.
        #[arg(long, env = "EXHUB_CONFIG", default_value = "routes.toml")]
        config: PathBuf,
        /// The subscriber.
        subscriber: String,
        /// Stop after this many documents.
        #[arg(long)]
        count: Option<u64>,
        /// Print each whole document after its summary line.
        #[arg(long)]
        full: bool,
    },
    /// Send archived documents again to one subscriber.
    Replay {
        /// The exchange description.
        #[arg(long, env = "EXHUB_CONFIG", default_value = "routes.toml")]
        config: PathBuf,
        /// The subscriber to send to.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        select: Select,
    },
    /// Documents the hub or a subscriber could not take.
    Dlq {
        /// The exchange description.
        #[arg(long, env = "EXHUB_CONFIG", default_value = "routes.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// The archive (转储) of every accepted document.
    Archive {
        /// The exchange description.
        #[arg(long, env = "EXHUB_CONFIG", default_value = "routes.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: ArchiveCommand,
    },
}

/// Which archived documents.
#[derive(clap::Args)]
struct Select {
    /// Only this doc type.
    #[arg(long)]
    doc_type: Option<String>,
    /// Only from this org.
    #[arg(long)]
    org: Option<String>,
    /// Received at or after (2026-11-22 or 2026-11-22T08:00:00+08:00).
    #[arg(long, value_parser = cmd::parse_time)]
    since: Option<i64>,
    /// Received before.
    #[arg(long, value_parser = cmd::parse_time)]
    until: Option<i64>,
    /// Business key FIELD=VALUE.
    #[arg(long, value_parser = cmd::parse_key)]
    key: Option<(String, String)>,
}

impl From<Select> for Query {
    fn from(s: Select) -> Query {
        Query {
            doc_type: s.doc_type,
            org: s.org,
            since: s.since,
            until: s.until,
            key: s.key,
        }
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the whole chain; report the first record changed, removed or inserted (exit 1).
    Verify,
    /// Show the latest records.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum OperatorCommand {
    /// Reads a password (one line) from standard input and prints its Argon2id hash, for the
    /// `password_hash` of an `[[operator]]` in routes.toml.
    Hash,
}

#[derive(clap::Subcommand)]
enum KeysCommand {
    /// Make a signing key: the private key goes to the org's (or the hub's) key file, mode
    /// 0600; the public key line to add to routes.toml is printed.
    Generate {
        /// The exchange description.
        #[arg(long, env = "EXHUB_CONFIG", default_value = "routes.toml")]
        config: PathBuf,
        /// The org whose key it is.
        #[arg(long, conflicts_with = "hub", required_unless_present = "hub")]
        org: Option<String>,
        /// The hub's own key (it signs every copy it sends).
        #[arg(long)]
        hub: bool,
        /// ed25519 or sm2 (SM2 with SM3, GB/T 32918).
        #[arg(long, default_value = "ed25519")]
        alg: String,
        /// The key's name after `org#` (default: the year).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Show dead-lettered documents with reason and detail (they stay in the queue).
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// A subscriber's DLQ instead of the hub's.
        #[arg(long)]
        subscriber: Option<String>,
    },
    /// Send dead-lettered documents back through the hub.
    Retry {
        /// Only the document with this id.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        id: Option<String>,
        /// All of them.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum ArchiveCommand {
    /// Show one document's whole chain: received, signature, archived, published, applied or
    /// refused by each subscriber.
    Show {
        /// The document id.
        id: String,
    },
    /// Find archived documents; print their delivery status per subscriber.
    Search {
        #[command(flatten)]
        select: Select,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// List the known doc types and versions.
    List {
        /// Extra schema directory.
        #[arg(long)]
        schemas: Option<PathBuf>,
    },
    /// Print the schema of a doc type, as JSON Schema or as XSD.
    Export {
        /// Print an XSD instead of the JSON Schema.
        #[arg(long)]
        xsd: bool,
        /// The doc type, e.g. tax.registration.
        doc_type: String,
        /// Version (default: the newest).
        #[arg(long)]
        version: Option<u32>,
        /// Extra schema directory.
        #[arg(long)]
        schemas: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    Json,
    Xml,
}

fn main() -> ExitCode {
    // rustls (SQL Server's TLS, through tiberius) needs one process-wide crypto provider; when
    // the dependency graph enables more than one (aws-lc-rs and ring), it cannot choose and
    // the first TLS handshake panics. Installing ours before anything runs settles it.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Provision { config, dry_run, adopt } => block_on(cmd::provision::provision(&config, dry_run, adopt)),
        Command::Stats {
            config,
            since,
            until,
            by,
            offset,
            format,
        } => {
            let at = |t: &str| exhub_hub::stats::parse_time_at(t, offset).map_err(anyhow::Error::msg);
            let since = match since {
                Some(t) => at(&t)?,
                None => exhub_hub::stats::start_of_today(offset),
            };
            let until = until.map(|t| at(&t)).transpose()?;
            block_on(cmd::stats::stats(&config, since, until, by, offset, format))
        }
        Command::Audit { config, command } => match command {
            AuditCommand::Verify => block_on_code(cmd::audit::verify(&config)),
            AuditCommand::List { limit } => block_on_code(cmd::audit::list(&config, limit)),
        },
        Command::Operator {
            command: OperatorCommand::Hash,
        } => operator_hash(),
        Command::Keys {
            command:
                KeysCommand::Generate {
                    config,
                    org,
                    hub: _,
                    alg,
                    name,
                },
        } => cmd::keys::generate(&config, org.as_deref(), &alg, name.as_deref()).map(|()| ExitCode::SUCCESS),
        Command::Hub { config, workers } => block_on(cmd::serve::hub(&config, workers)),
        Command::Run { config, except } => block_on(cmd::adapters::run(&config, &except)),
        Command::Source {
            config,
            name,
            reset,
            drop_slot,
        } => block_on(cmd::adapters::source(&config, &name, reset, drop_slot)),
        Command::Sink { config, name } => block_on(cmd::adapters::sink(&config, &name)),
        Command::Publish {
            config,
            org,
            batch,
            files,
        } => block_on(cmd::publish::publish(&config, &org, batch, &files)),
        Command::Tail {
            config,
            subscriber,
            count,
            full,
        } => block_on(cmd::tail::tail(&config, &subscriber, count, full)),
        Command::Replay { config, to, select } => block_on(cmd::archive::replay(&config, &to, &select.into())),
        Command::Dlq { config, command } => match command {
            DlqCommand::List { limit, subscriber } => block_on(cmd::dlq::list(&config, subscriber.as_deref(), limit)),
            DlqCommand::Retry { id, all: _ } => block_on(cmd::dlq::retry(&config, id.as_deref())),
        },
        Command::Archive {
            config,
            command: ArchiveCommand::Search { select, limit },
        } => block_on(cmd::archive::search(&config, &select.into(), limit)),
        Command::Archive {
            config,
            command: ArchiveCommand::Show { id },
        } => block_on(cmd::archive::show(&config, &id)),
        Command::Check { config } => run_check(&config),
        Command::Validate { file, schemas } => run_validate(&file, &registry(schemas.as_deref())?),
        Command::Convert { to, file, schemas } => run_convert(to, &file, &registry(schemas.as_deref())?),
        Command::Schema {
            command: SchemaCommand::List { schemas },
        } => {
            for s in registry(schemas.as_deref())?.iter() {
                println!(
                    "{} v{}\t{}\t{}",
                    s.doc_type(),
                    s.version(),
                    s.title().unwrap_or(""),
                    s.origin()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema {
            command:
                SchemaCommand::Export {
                    xsd: as_xsd,
                    doc_type,
                    version,
                    schemas,
                },
        } => {
            let registry = registry(schemas.as_deref())?;
            let schema = match version {
                Some(v) => registry.get(&doc_type, v),
                None => registry.latest(&doc_type),
            };
            let Some(schema) = schema else {
                bail!("unknown doc type {doc_type:?} (known: {})", registry.list().join(", "));
            };
            if as_xsd {
                print!("{}", xsd::export(schema));
            } else {
                println!("{}", serde_json::to_string_pretty(schema.json())?);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs an async command on a multi-threaded runtime.
fn block_on(f: impl std::future::Future<Output = Result<()>>) -> Result<ExitCode> {
    block_on_code(async { f.await.map(|()| ExitCode::SUCCESS) })
}

/// Runs a command that chooses its own exit code.
fn block_on_code(f: impl std::future::Future<Output = Result<ExitCode>>) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(f)
}

fn registry(dir: Option<&Path>) -> Result<Registry> {
    Ok(exhub_hub::registry_with(dir)?)
}

/// Reads and decodes a document file; a document that does not decode is reported (with its
/// reason code) and gives `None`.
fn decode_file(file: &Path, registry: &Registry) -> Result<Option<Document>> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    match decode(&bytes, registry, &Limits::default()) {
        Ok(doc) => Ok(Some(doc)),
        Err(e) => {
            eprintln!("{}: {} [{}]", file.display(), e, e.reason());
            Ok(None)
        }
    }
}

fn run_check(path: &Path) -> Result<ExitCode> {
    let file = ConfigFile::load(path).with_context(|| format!("reading {}", path.display()))?;
    let registry = exhub_hub::registry_for(&file).context("loading schemas")?;
    let (problems, summary) = check(&file, &registry, &cmd::adapters::Kinds);
    let name = path.display();
    for p in &problems {
        match p.position {
            Some(_) => println!("{name}:{p}"),
            None => println!("{name}: {p}"),
        }
    }
    let errors = problems.iter().filter(|p| p.severity == Severity::Error).count();
    let warnings = problems.len() - errors;
    if errors > 0 {
        println!("{name}: {errors} error(s), {warnings} warning(s)");
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "{name}: ok — {} orgs, {} sources, {} subscribers, {} routes, {} doc types ({warnings} warning(s))",
        summary.orgs, summary.sources, summary.subscribers, summary.routes, summary.doc_types
    );
    Ok(ExitCode::SUCCESS)
}

fn run_validate(file: &Path, registry: &Registry) -> Result<ExitCode> {
    let Some(doc) = decode_file(file, registry)? else {
        return Ok(ExitCode::FAILURE);
    };
    let violations = registry.validate(&doc);
    for v in &violations {
        println!("{v}");
    }
    let h = &doc.header;
    if violations.is_empty() {
        println!(
            "{}: valid {} v{} ({})",
            file.display(),
            h.doc_type,
            h.schema_version,
            h.id
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{}: {} violation(s) of {} v{}",
            file.display(),
            violations.len(),
            h.doc_type,
            h.schema_version
        );
        Ok(ExitCode::FAILURE)
    }
}

fn run_convert(to: Target, file: &Path, registry: &Registry) -> Result<ExitCode> {
    let Some(doc) = decode_file(file, registry)? else {
        return Ok(ExitCode::FAILURE);
    };
    let out = match to {
        Target::Json => json::encode_pretty(&doc) + "\n",
        Target::Xml => xml::encode(&doc, registry),
    };
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// `exhub operator hash`: the hash of the password on standard input.
fn operator_hash() -> anyhow::Result<ExitCode> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| anyhow::anyhow!("reading the password: {e}"))?;
    let password = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!password.is_empty(), "an empty password");
    let hash = exhub_hub::console::hash_password(password).map_err(anyhow::Error::msg)?;
    println!("{hash}");
    Ok(ExitCode::SUCCESS)
}
