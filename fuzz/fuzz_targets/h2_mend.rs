#![no_main]
//! Fuzz target: see `cairn_server::fuzz::h2_mend`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_server::fuzz::h2_mend(data));
