//! End-to-end test package: `tests/main.rs` runs the real `exhub` binary (built by
//! `cargo nextest run --workspace`) against the real services.
