//! The booking state machine under any sequence of operations (see `checks::booking`).
#![no_main]

#[path = "../../tests/checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::booking(data));
