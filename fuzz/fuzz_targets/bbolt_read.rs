#![no_main]
//! Fuzz target: see `cairn_store::fuzz::bbolt_read`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_store::fuzz::bbolt_read(data));
