#![no_main]
//! Fuzz target: see `cairn_server::fuzz::gateway_stream`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_server::fuzz::gateway_stream(data));
