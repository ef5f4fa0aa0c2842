//! Any bytes as a WebSocket text frame (see `checks::frame`).
#![no_main]

#[path = "../../tests/checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::frame(data));
