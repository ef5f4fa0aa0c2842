//! JSON-RPC 2.0 framing: parsing requests, writing replies and pushes.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::ApiError;

/// A well-formed request; `id` is `None` for a notification (which gets no reply).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub method: String,
    pub params: Value,
}

/// Whether a request's `id` may be echoed: a number, a string or null.
fn is_valid_id(id: &Value) -> bool {
    matches!(id, Value::Number(_) | Value::String(_) | Value::Null)
}

/// The id that answers a request whose `id` member is `raw` (null for one that is
/// not a valid id), read without the rest of the request.
pub fn reply_id_of(raw: &serde_json::value::RawValue) -> Value {
    serde_json::from_str(raw.get())
        .ok()
        .filter(is_valid_id)
        .unwrap_or_default()
}

/// Parses one text frame. On failure, returns the id to answer with (or null).
pub fn parse_request(frame: &str) -> Result<Request, (Value, ApiError)> {
    let v: Value =
        serde_json::from_str(frame).map_err(|e| (Value::Null, ApiError::Parse(e.to_string())))?;
    let Value::Object(mut obj) = v else {
        let what = if v.is_array() {
            "batch requests are not supported"
        } else {
            "a request must be a JSON object"
        };
        return Err((Value::Null, ApiError::InvalidRequest(what.into())));
    };
    let id = obj.remove("id");
    let reply_id = match id.as_ref().map(is_valid_id) {
        Some(true) => id.clone().unwrap_or_default(),
        Some(false) => {
            return Err((
                Value::Null,
                ApiError::InvalidRequest("id must be a number, string or null".into()),
            ))
        }
        None => Value::Null,
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err((
            reply_id,
            ApiError::InvalidRequest("jsonrpc must be \"2.0\"".into()),
        ));
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        _ => {
            return Err((
                reply_id,
                ApiError::InvalidRequest("method must be a string".into()),
            ))
        }
    };
    // params that are not an object are refused once the method's access has been
    // checked ([`Request::object_params`]): `forbidden` whatever the params
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(p) => p,
    };
    Ok(Request { id, method, params })
}

impl Request {
    /// The params, which must be an object (by-position params are not supported).
    pub fn object_params(&mut self) -> Result<Value, ApiError> {
        match std::mem::take(&mut self.params) {
            p @ Value::Object(_) => Ok(p),
            _ => Err(ApiError::InvalidParams("params must be an object".into())),
        }
    }
}

#[derive(Serialize)]
struct Success<'a, T: Serialize> {
    jsonrpc: &'static str,
    id: &'a Value,
    result: &'a T,
}

#[derive(Serialize)]
struct Failure<'a> {
    jsonrpc: &'static str,
    id: &'a Value,
    error: Value,
}

#[derive(Serialize)]
struct Push<'a, T: Serialize + ?Sized> {
    jsonrpc: &'static str,
    method: &'a str,
    params: &'a T,
}

pub fn success<T: Serialize>(id: &Value, result: &T) -> String {
    serde_json::to_string(&Success {
        jsonrpc: "2.0",
        id,
        result,
    })
    .unwrap_or_else(|_| failure(id, &ApiError::Internal))
}

/// A success reply whose result is `result`, JSON that is already encoded (a
/// remembered answer, [`super::results::remembered_ok`]): the same bytes as
/// [`success`] of what it encodes. `result` must be valid JSON.
pub fn success_encoded(id: &Value, result: &str) -> String {
    let Ok(id_text) = serde_json::to_string(id) else {
        return failure(id, &ApiError::Internal);
    };
    let mut out = String::with_capacity(32 + id_text.len() + result.len());
    for piece in [
        r#"{"jsonrpc":"2.0","id":"#,
        &id_text,
        r#","result":"#,
        result,
        "}",
    ] {
        out.push_str(piece);
    }
    out
}

/// A success reply whose result is the object `result` plus the member `key` set to
/// `raw`, JSON that is already encoded: a large piece shared by many replies (a
/// flight's seat map) is copied into each, not encoded again. `raw` must be valid JSON.
pub fn success_with_raw(id: &Value, result: &RawValue, key: &str, raw: &str) -> String {
    let head = result
        .get()
        .strip_suffix('}')
        .filter(|h| h.starts_with('{'));
    let (Some(head), Ok(id_text), Ok(key)) =
        (head, serde_json::to_string(id), serde_json::to_string(key))
    else {
        return failure(id, &ApiError::Internal);
    };
    let comma = if head.trim_end() == "{" { "" } else { "," };
    let mut out = String::with_capacity(40 + id_text.len() + head.len() + key.len() + raw.len());
    for piece in [
        r#"{"jsonrpc":"2.0","id":"#,
        &id_text,
        r#","result":"#,
        head,
        comma,
        &key,
        ":",
        raw,
        "}}",
    ] {
        out.push_str(piece);
    }
    out
}

pub fn failure(id: &Value, err: &ApiError) -> String {
    serde_json::to_string(&Failure { jsonrpc: "2.0", id, error: err.to_json() })
        .unwrap_or_else(|_| r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"internal error","data":{"reason":"internal"}}}"#.into())
}

/// A server push (a notification from server to client).
pub fn push<T: Serialize + ?Sized>(method: &str, params: &T) -> String {
    serde_json::to_string(&Push {
        jsonrpc: "2.0",
        method,
        params,
    })
    .unwrap_or_else(|e| {
        tracing::error!(method, error = %e, "a push's params did not encode");
        format!(r#"{{"jsonrpc":"2.0","method":"{method}","params":null}}"#)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(frame: &str) -> (Value, ApiError) {
        parse_request(frame).unwrap_err()
    }

    #[test]
    fn parses_a_request() {
        let r = parse_request(
            r#"{"jsonrpc":"2.0","id":7,"method":"flights.search","params":{"from":"LHR"}}"#,
        )
        .unwrap();
        assert_eq!(r.id, Some(json!(7)));
        assert_eq!(r.method, "flights.search");
        assert_eq!(r.params, json!({"from":"LHR"}));
        let r = parse_request(r#"{"jsonrpc":"2.0","method":"x"}"#).unwrap();
        assert_eq!(r.id, None);
        assert_eq!(r.params, json!({}));
        let mut r = parse_request(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#).unwrap();
        assert_eq!(
            r.object_params(),
            Err(ApiError::InvalidParams("params must be an object".into()))
        );
    }

    #[test]
    fn rejects_bad_frames_with_the_right_code() {
        assert_eq!(err("{oops").1.code(), -32700);
        assert_eq!(err("").1.code(), -32700);
        assert_eq!(err("[]").1.code(), -32600);
        assert_eq!(err("42").1.code(), -32600);
        assert_eq!(
            err(r#"{"jsonrpc":"1.0","id":3,"method":"x"}"#),
            (
                json!(3),
                ApiError::InvalidRequest("jsonrpc must be \"2.0\"".into())
            )
        );
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","id":"a","method":5}"#).0,
            json!("a")
        );
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#).1.code(),
            -32600
        );
    }

    #[test]
    fn deep_nesting_is_a_parse_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert_eq!(err(&deep).1.code(), -32700);
    }

    #[test]
    fn a_reply_carries_the_request_id_exactly() {
        // found by `cargo fuzz run frame`: without correctly rounded float parsing this
        // id was read one unit in the last place off, so the client could not match it
        let ids = [
            ("-4.444444444444445e224", json!(-4.444444444444445e224_f64)),
            ("1e-300", json!(1e-300_f64)),
            ("7", json!(7)),
            (r#""x""#, json!("x")),
        ];
        for (text, id) in ids {
            let r =
                parse_request(&format!(r#"{{"jsonrpc":"2.0","id":{text},"method":"x"}}"#)).unwrap();
            assert_eq!(r.id.as_ref(), Some(&id), "{text}");
            let reply: Value = serde_json::from_str(&success(&id, &1)).unwrap();
            assert_eq!(reply["id"], id, "{text}");
        }
    }

    #[test]
    fn a_spliced_member_makes_the_same_reply_as_encoding_it() {
        let seats =
            json!([{"seat": "1A", "status": "held"}, {"seat": "1B", "status": "available"}]);
        for (id, result) in [
            (json!(7), json!({"flight_id": "JW100", "version": 3})),
            (json!("a\"b"), json!({})),
            (Value::Null, json!({"viewers": 2})),
        ] {
            let raw = serde_json::value::to_raw_value(&result).unwrap();
            let spliced = success_with_raw(&id, &raw, "seats", &seats.to_string());
            let mut whole = result.clone();
            whole["seats"] = seats.clone();
            let parsed: Value = serde_json::from_str(&spliced).unwrap();
            let expected: Value = serde_json::from_str(&success(&id, &whole)).unwrap();
            assert_eq!(parsed, expected, "{spliced}");
        }
        // a result that is not an object cannot take a member
        let list = serde_json::value::to_raw_value(&json!([])).unwrap();
        let refused: Value =
            serde_json::from_str(&success_with_raw(&json!(1), &list, "seats", "[]")).unwrap();
        assert_eq!(refused["error"]["code"], json!(-32603));
        assert_eq!(refused["id"], json!(1));
    }

    #[test]
    fn replies_are_well_formed() {
        let s: Value = serde_json::from_str(&success(&json!(1), &json!({"ok":true}))).unwrap();
        assert_eq!(s, json!({"jsonrpc":"2.0","id":1,"result":{"ok":true}}));
        let f: Value =
            serde_json::from_str(&failure(&Value::Null, &ApiError::Unauthenticated)).unwrap();
        assert_eq!(f["error"]["data"]["reason"], "unauthenticated");
        assert_eq!(f["id"], Value::Null);
        let p: Value = serde_json::from_str(&push("seats.changed", &json!({"v":1}))).unwrap();
        assert_eq!(
            p,
            json!({"jsonrpc":"2.0","method":"seats.changed","params":{"v":1}})
        );
    }
}
