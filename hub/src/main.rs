//! The `exhub` command: the one place that dispatches to every part of the exchange.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
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
    let (problems, summary) = check(&file, &registry);
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
