//! One method's params as any JSON (see `checks::params`): the first byte picks the
//! method, so every method's decoder is reached.
#![no_main]

#[path = "../../tests/checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::params(data));
