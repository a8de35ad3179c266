#![no_main]
//! Fuzz target: see `cairn_store::fuzz::backup_scan`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_store::fuzz::backup_scan(data));
