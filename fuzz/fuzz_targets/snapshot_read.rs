#![no_main]
//! Fuzz target: see `cairn_store::fuzz::snapshot_read`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_store::fuzz::snapshot_read(data));
