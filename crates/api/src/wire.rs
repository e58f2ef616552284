//! The one wire form: a JSON-RPC 2.0 object on one line.

use serde_json::{Map, Value, json};

use crate::{Answer, ApiError, ErrorKind, Event, Request, RpcError};

/// JSON-RPC's code for a failed method of this API (`data.kind` says which failure).
const METHOD_FAILED: i64 = -32000;
/// JSON-RPC's code for a request that is not one of ours.
const INVALID_REQUEST: i64 = -32600;
/// The method name of notifications.
const EVENT: &str = "event";

/// One message on the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A client's request; its answer carries the same `id`.
    Request {
        /// Chosen by the client.
        id: u64,
        /// What it asks.
        request: Request,
    },
    /// The engine's answer to request `id`.
    Reply {
        /// The request's id.
        id: u64,
        /// The answer, or why there is none.
        result: Result<Answer, RpcError>,
    },
    /// An event, to a client that subscribed (a JSON-RPC notification: no id).
    Event(Event),
}

impl Frame {
    /// The frame as one line of JSON, newline included.
    pub fn encode(&self) -> Vec<u8> {
        let v = match self {
            Frame::Request { id, request } => {
                let mut m = match serde_json::to_value(request) {
                    Ok(Value::Object(m)) => m,
                    _ => Map::new(),
                };
                m.insert("jsonrpc".into(), "2.0".into());
                m.insert("id".into(), (*id).into());
                Value::Object(m)
            }
            Frame::Reply { id, result: Ok(a) } => json!({"jsonrpc": "2.0", "id": id, "result": a}),
            Frame::Reply { id, result: Err(e) } => json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {
                    "code": if e.kind == ErrorKind::BadRequest { INVALID_REQUEST } else { METHOD_FAILED },
                    "message": e.message,
                    "data": {"kind": e.kind},
                },
            }),
            Frame::Event(e) => json!({"jsonrpc": "2.0", "method": EVENT, "params": e}),
        };
        let mut out = serde_json::to_vec(&v).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Decodes one line (without its newline).
    pub fn decode(line: &[u8]) -> Result<Frame, ApiError> {
        let v: Value = serde_json::from_slice(line).map_err(malformed)?;
        let Value::Object(mut m) = v else {
            return Err(malformed("not a JSON object"));
        };
        if m.remove("jsonrpc").as_ref().and_then(Value::as_str) != Some("2.0") {
            return Err(malformed(
                "not JSON-RPC 2.0 (\"jsonrpc\": \"2.0\" is missing)",
            ));
        }
        let id = match m.remove("id") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| malformed("the id is not a number"))?,
            ),
        };
        let need_id = || id.ok_or_else(|| malformed("a request or reply without an id"));
        if m.get("method").and_then(Value::as_str) == Some(EVENT) && id.is_none() {
            let params = m.remove("params").unwrap_or(Value::Null);
            return Ok(Frame::Event(
                serde_json::from_value(params).map_err(malformed)?,
            ));
        }
        if m.contains_key("method") {
            let id = need_id()?;
            let request = serde_json::from_value(Value::Object(m)).map_err(malformed)?;
            return Ok(Frame::Request { id, request });
        }
        if let Some(r) = m.remove("result") {
            let id = need_id()?;
            let answer = serde_json::from_value(r).map_err(malformed)?;
            return Ok(Frame::Reply {
                id,
                result: Ok(answer),
            });
        }
        if let Some(e) = m.remove("error") {
            let id = need_id()?;
            let message = e
                .get("message")
                .and_then(Value::as_str)
                .ok_or_else(|| malformed("an error without a message"))?
                .to_string();
            // An error from another implementation may carry no kind: a plain failure.
            let kind = e
                .get("data")
                .and_then(|d| d.get("kind"))
                .and_then(|k| serde_json::from_value(k.clone()).ok())
                .unwrap_or(ErrorKind::Failure);
            return Ok(Frame::Reply {
                id,
                result: Err(RpcError { message, kind }),
            });
        }
        Err(malformed("neither a request, a reply nor an event"))
    }
}

fn malformed(e: impl std::fmt::Display) -> ApiError {
    ApiError::Malformed(e.to_string())
}
