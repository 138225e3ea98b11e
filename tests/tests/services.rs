//! The machine is ready for change data capture after scripts/services.sh: the settings the
//! source adapters depend on are in force on the real servers.

use std::process::Command;

/// Runs `cmd args`, asserting success; its trimmed stdout.
pub fn query(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs `sql` in PostgreSQL database `db`; its unaligned, tuples-only output.
pub fn psql(db: &str, sql: &str) -> String {
    psql_with(db, &["-c", sql])
}

/// Runs `psql` on database `db` with `args` (`-c SQL`, `-f FILE`); its unaligned, tuples-only
/// output.
pub fn psql_with(db: &str, args: &[&str]) -> String {
    let mut all = vec!["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-XAtq"];
    all.extend_from_slice(args);
    query("psql", &all)
}

#[test]
fn postgres_has_logical_replication() {
    let psql = |sql: &str| psql("postgres", sql);
    assert_eq!(psql("show wal_level"), "logical");
    assert!(psql("show max_replication_slots").parse::<u32>().unwrap() >= 20);
    assert!(psql("show max_wal_senders").parse::<u32>().unwrap() >= 20);
}

#[test]
fn mariadb_binlog_is_row_with_full_metadata() {
    let row = query(
        "mariadb",
        &[
            "-uroot",
            "-h127.0.0.1",
            "-N",
            "-B",
            "-e",
            "select @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata, @@server_id > 0",
        ],
    );
    assert_eq!(row, "1\tROW\tFULL\tFULL\t1");
}

#[test]
fn rabbitmq_is_up() {
    let status = query("rabbitmqctl", &["-q", "status"]);
    assert!(status.contains("RabbitMQ version"), "{status}");
}
