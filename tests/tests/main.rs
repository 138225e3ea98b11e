//! End-to-end tests: the real `exhub` binary, the real files of the repository, the real
//! services as scripts/services.sh leaves them.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod archive;
mod cdc;
mod cli;
mod console;
mod exchange;
mod hub;
mod recovery;
mod services;
mod tls;
mod trust;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The `exhub` binary next to this test executable (`target/<profile>/exhub`), or `EXHUB_BIN`.
/// `cargo test` does not build another package's binary: scripts/test.sh builds it first.
pub fn exhub_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("EXHUB_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("exhub");
    assert!(
        bin.exists(),
        "{} not built: run `cargo nextest run --workspace`",
        bin.display()
    );
    bin
}

/// Runs `exhub ARGS` in the repository root.
pub fn exhub(args: &[&str]) -> Output {
    Command::new(exhub_bin())
        .args(args)
        .current_dir(root())
        .env_remove("EXHUB_CONFIG")
        .output()
        .unwrap()
}

/// A fresh scratch directory with a random name.
pub fn scratch(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("exhub-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
