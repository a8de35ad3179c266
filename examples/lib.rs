//! Cairn's runnable examples (run them with `cargo run -p cairn-examples --example NAME`
//! against `cargo run --release --bin cairn`); `./scripts/test` runs each against a real
//! cluster and checks what its docs promise:
//!
//! - `quickstart`: the SDK in one page — put/get, compare-and-set, watch, a session's key.
//! - `greeter`: service discovery and load balancing with tonic (registry + discovery).
//! - `scheduler`: leader election, one active scheduler among many.
//! - `workers`: a work queue drained by competing workers.
//! - `config_reload`: live configuration reload from a prefix.
