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

/// Runs `sql` in MariaDB database `db`; its tab-separated output without column names.
pub fn mysql(db: &str, sql: &str) -> String {
    query("mysql", &["-uroot", "-N", "-B", db, "-e", sql])
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

/// The local PostgreSQL cluster's version (`/etc/postgresql/<version>`).
pub fn postgres_version() -> String {
    std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
        .unwrap()
}

/// Restarts the local PostgreSQL cluster (fast shutdown: every connection is cut) and waits
/// until it accepts connections again. Only for `restart_*` tests, which run alone.
pub fn restart_postgres() {
    let version = postgres_version();
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart", "-m", "fast"])
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctlcluster restart");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-XAtq", "-c", "select 1"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(std::time::Instant::now() < deadline, "PostgreSQL did not come back");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn rabbitmq_is_up() {
    let status = query("rabbitmqctl", &["-q", "status"]);
    assert!(status.contains("RabbitMQ version"), "{status}");
}
