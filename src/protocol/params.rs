//! Method parameters as clients send them; semantic checks happen in the use cases.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::ApiError;

/// Decodes a method's params, naming the offending field on failure.
pub fn decode<T: DeserializeOwned>(params: Value) -> Result<T, ApiError> {
    serde_json::from_value(params).map_err(|e| ApiError::InvalidParams(e.to_string()))
}

#[derive(Debug, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Deserialize)]
pub struct Resume {
    pub token: String,
}

#[derive(Debug, Deserialize)]
pub struct Search {
    pub from: Option<String>,
    pub to: Option<String>,
    pub date: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct FlightRef {
    pub flight_id: String,
}

#[derive(Debug, Deserialize)]
pub struct Subscribe {
    pub flight_id: String,
    pub since: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct Passenger {
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub struct Hold {
    pub flight_id: String,
    pub seats: Option<Vec<String>>,
    pub count: Option<u32>,
    pub cabin: Option<String>,
    pub passengers: Vec<Passenger>,
    pub request_id: String,
}

#[derive(Debug, Deserialize)]
pub struct Pay {
    pub locator: String,
    pub payment_method: String,
    pub request_id: String,
}

#[derive(Debug, Deserialize)]
pub struct Cancel {
    pub locator: String,
    pub request_id: String,
    pub seats: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub struct ChangeSeat {
    pub locator: String,
    pub from: String,
    pub to: String,
    pub request_id: String,
}

#[derive(Debug, Deserialize)]
pub struct LocatorRef {
    pub locator: String,
}

#[derive(Debug, Deserialize)]
pub struct Limit {
    pub limit: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_or_mistyped_fields_are_invalid_params() {
        let e = decode::<Credentials>(json!({"username":"a"})).unwrap_err();
        assert!(
            matches!(e, ApiError::InvalidParams(ref m) if m.contains("password")),
            "{e:?}"
        );
        let e =
            decode::<Hold>(json!({"flight_id":1,"passengers":[],"request_id":"r"})).unwrap_err();
        assert_eq!(e.reason(), "invalid_params");
        let h = decode::<Hold>(json!({"flight_id":"F","seats":["1A"],"passengers":[{"name":"A"}],"request_id":"r","extra":true})).unwrap();
        assert_eq!(h.seats.unwrap(), ["1A"]);
    }
}
