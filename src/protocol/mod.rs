//! The wire protocol: JSON-RPC 2.0 envelope, method params, result shapes and error
//! reasons. Pure: no I/O.

pub mod contract;
pub mod envelope;
pub mod error;
pub mod params;
pub mod results;
pub mod wire;

pub use envelope::{parse_request, Request};
pub use error::ApiError;
