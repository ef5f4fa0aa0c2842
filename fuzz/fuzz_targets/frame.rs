//! Any bytes as a WebSocket text frame: parsing and every method's params decoder
//! must never panic, and a refusal is always a well-formed JSON-RPC error.
#![no_main]

use jetway::protocol::params::{self, decode};
use jetway::protocol::{envelope, parse_request};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = std::str::from_utf8(data) else {
        return; // the WebSocket layer refuses invalid UTF-8 before us
    };
    match parse_request(frame) {
        Ok(req) => {
            let p = req.params;
            let _ = decode::<params::Credentials>(p.clone());
            let _ = decode::<params::Resume>(p.clone());
            let _ = decode::<params::Search>(p.clone());
            let _ = decode::<params::FlightRef>(p.clone());
            let _ = decode::<params::Subscribe>(p.clone());
            let _ = decode::<params::Hold>(p.clone());
            let _ = decode::<params::Pay>(p.clone());
            let _ = decode::<params::Cancel>(p.clone());
            let _ = decode::<params::ChangeSeat>(p.clone());
            let _ = decode::<params::LocatorRef>(p.clone());
            let _ = decode::<params::Limit>(p);
        }
        Err((id, e)) => {
            let reply: Value = serde_json::from_str(&envelope::failure(&id, &e)).unwrap();
            assert!(reply["error"]["data"]["reason"].is_string());
        }
    }
});
