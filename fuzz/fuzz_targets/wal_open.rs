#![no_main]
//! Fuzz target: see `cairn_store::fuzz::wal_open`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_store::fuzz::wal_open(data));
