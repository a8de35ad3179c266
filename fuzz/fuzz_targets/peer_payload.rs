#![no_main]
//! Fuzz target: see `cairn_server::fuzz::peer_payload`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_server::fuzz::peer_payload(data));
