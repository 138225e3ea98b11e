//! SQL Server targets (not verified against a real SQL Server — none can run where exhub is
//! built): the same effectively-once algorithm as the other databases, spoken through
//! tiberius. One transaction per batch: claim the newer versions in `exhub_applied` with a
//! `MERGE … OUTPUT`, delete, `MERGE` the upserts (`HOLDLOCK`), commit. Values are bound as
//! typed parameters ([`crate::values::column_data`]); statements stay under SQL
//! Server's 2,100 parameters ([`crate::sql::rows_per_statement`]).

use std::collections::HashSet;

use exhub_sink::apply::{ApplyError, Groups, Outcome, Part, Target, Version, by_fields, fresh, key_columns};
use futures_util::future::BoxFuture;
use tiberius::Query;
use tokio::sync::Mutex;

use crate::connect::{MssqlClient, config, connect};
use crate::sql;
use crate::values::column_data;

/// The connection to a SQL Server target, reopened on the next batch after it failed.
pub struct Connection {
    config: tiberius::Config,
    client: Mutex<Option<MssqlClient>>,
}

impl Connection {
    /// Connects to `url` (`mssql://…`) and creates the bookkeeping table if missing.
    pub async fn open(url: &str) -> Result<Connection, String> {
        let (config, _) = config(url).map_err(|e| e.to_string())?;
        let mut client = connect(config.clone())
            .await
            .map_err(|e| format!("cannot connect to SQL Server at {}: {e}", config.get_addr()))?;
        client
            .simple_query(sql::CREATE_APPLIED)
            .await
            .map_err(|e| format!("cannot create the bookkeeping table exhub_applied: {e}"))?
            .into_results()
            .await
            .map_err(|e| format!("cannot create the bookkeeping table exhub_applied: {e}"))?;
        Ok(Connection {
            config,
            client: Mutex::new(Some(client)),
        })
    }

    /// Fails unless `table` exists and can be read.
    pub async fn probe(&self, table: &str) -> Result<(), tiberius::error::Error> {
        let mut guard = self.client.lock().await;
        let client = reopen(&self.config, &mut guard).await?;
        client
            .simple_query(format!("SELECT TOP (0) * FROM {}", sql::qualified(table)))
            .await?
            .into_results()
            .await?;
        Ok(())
    }

    /// Closes the connection.
    pub async fn close(&self) {
        if let Some(client) = self.client.lock().await.take() {
            let _ = client.close().await;
        }
    }
}

async fn reopen<'g>(
    config: &tiberius::Config,
    slot: &'g mut Option<MssqlClient>,
) -> Result<&'g mut MssqlClient, tiberius::error::Error> {
    if slot.is_none() {
        *slot = Some(connect(config.clone()).await?);
    }
    slot.as_mut()
        .ok_or_else(|| tiberius::error::Error::Protocol("no connection".into()))
}

/// Whether SQL Server refused the data (the document goes to the DLQ) rather than failed:
/// duplicate key (2627, 2601), constraint (547), NULL into NOT NULL (515), truncation (8152,
/// 2628), conversion (245, 8114, 8115, 241, 242, 220, 232), or a value tiberius cannot send.
pub fn is_data_error(e: &tiberius::error::Error) -> bool {
    match e {
        tiberius::error::Error::Server(t) => {
            matches!(
                t.code(),
                2627 | 2601 | 547 | 515 | 8152 | 2628 | 245 | 8114 | 8115 | 241 | 242 | 220 | 232
            )
        }
        tiberius::error::Error::Conversion(_) => true,
        _ => false,
    }
}

impl Target for Connection {
    fn apply<'a>(&'a self, groups: Groups<'a>, outcome: &'a mut Outcome) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(async move {
            apply(self, groups, outcome).await.map_err(|e| ApplyError::Driver {
                data: is_data_error(&e),
                error: Box::new(e),
            })
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(Connection::close(self))
    }
}

/// Applies `groups` in one transaction.
async fn apply(conn: &Connection, groups: Groups<'_>, outcome: &mut Outcome) -> Result<(), tiberius::error::Error> {
    let mut guard = conn.client.lock().await;
    let client = reopen(&conn.config, &mut guard).await?;
    client.simple_query("BEGIN TRANSACTION").await?.into_results().await?;
    let result = async {
        for ((table, source), versions) in &groups {
            let claimed = claim(client, source, table, versions).await?;
            let (deletes, upserts) = fresh(versions, &claimed, outcome);
            delete(client, &deletes).await?;
            merge(client, &upserts).await?;
        }
        Ok::<_, tiberius::error::Error>(())
    }
    .await;
    match result {
        Ok(()) => {
            client.simple_query("COMMIT").await?.into_results().await?;
            Ok(())
        }
        Err(e) => {
            let rolled_back = match client.simple_query("IF @@TRANCOUNT > 0 ROLLBACK").await {
                Ok(stream) => stream.into_results().await.is_ok(),
                Err(_) => false,
            };
            if !rolled_back {
                // The connection is in an unknown state: the next batch opens a new one.
                *guard = None;
            }
            Err(e)
        }
    }
}

async fn claim(
    client: &mut MssqlClient,
    source: &str,
    table: &str,
    versions: &[Version<'_>],
) -> Result<HashSet<String>, tiberius::error::Error> {
    let mut claimed = HashSet::new();
    for part in versions.chunks(sql::rows_per_statement(4)) {
        let mut q = Query::new(sql::claim_applied(part.len()));
        for v in part {
            q.bind(source.to_owned());
            q.bind(table.to_owned());
            q.bind(v.key.clone());
            q.bind(v.order.clone());
        }
        for row in q.query(client).await?.into_first_result().await? {
            if let Some(key) = row.get::<&str, _>(0) {
                claimed.insert(key.to_owned());
            }
        }
    }
    Ok(claimed)
}

async fn delete(client: &mut MssqlClient, versions: &[&Version<'_>]) -> Result<(), tiberius::error::Error> {
    let Some(first) = versions.first() else { return Ok(()) };
    let key = key_columns(first);
    write(client, versions, Part::Key, key.len(), |n| {
        sql::delete(&first.target.table, &key, n)
    })
    .await
}

async fn merge(client: &mut MssqlClient, versions: &[&Version<'_>]) -> Result<(), tiberius::error::Error> {
    for (fields, group) in by_fields(versions) {
        let Some(first) = group.first() else { continue };
        let columns: Vec<String> = fields.iter().map(|f| first.target.column(f).to_owned()).collect();
        let key = key_columns(first);
        write(client, &group, Part::Body, columns.len(), |n| {
            sql::merge(&first.target.table, &columns, &key, n)
        })
        .await?;
    }
    Ok(())
}

/// Runs `statement` (built for a number of rows) over `versions`, `width` parameters a row.
async fn write(
    client: &mut MssqlClient,
    versions: &[&Version<'_>],
    part: Part,
    width: usize,
    statement: impl Fn(usize) -> String,
) -> Result<(), tiberius::error::Error> {
    for chunk in versions.chunks(sql::rows_per_statement(width)) {
        let mut q = Query::new(statement(chunk.len()));
        for v in chunk {
            for value in v.part(part).values() {
                q.bind(column_data(value));
            }
        }
        q.execute(client).await?;
    }
    Ok(())
}
