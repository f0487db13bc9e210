//! A distinctive Secret value for analysis tests, and the search for it in text a user without
//! `get secrets` can read.

#![allow(clippy::panic, clippy::indexing_slicing)]

use k8s_openapi::ByteString;
use serde_json::json;

use super::http_stub::{RecordedRequest, Reply};

/// The start of [`TOKEN`], which survives any escaping (JSON, debug, percent-encoding):
/// finding it anywhere means some spelling of the token leaked, or a cut left part of it.
pub const TOKEN_START: &str = "wc7f3a9c";

/// A Secret value with the characters that escaping changes: `"` and `\` (JSON and debug
/// escapes), `/`, `+`, `=` and a space (percent-encoding).
pub const TOKEN: &str = r#"wc7f3a9c1e5b2d4k"q\r/s+t= u"#;

/// How the Secret's `data` holds it (and `kubectl get secret -o yaml` shows it).
pub fn token_base64() -> String {
    serde_json::to_value(ByteString(TOKEN.as_bytes().to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

/// Where `text` (read from `place`) holds the token in any spelling or its base64 form, with
/// some context; `None` when it does not.
pub fn token_leak(place: &str, text: &str) -> Option<String> {
    [
        ("in some spelling, or part of it", TOKEN_START.to_owned()),
        ("base64", token_base64()),
    ]
    .into_iter()
    .find_map(|(spelling, needle)| {
        let at = text.find(&needle)?;
        let from = text[..at]
            .char_indices()
            .rev()
            .nth(80)
            .map_or(0, |(i, _)| i);
        let context: String = text[from..].chars().take(200).collect();
        Some(format!(
            "the Secret's value ({spelling}) leaked into {place}: ...{context}..."
        ))
    })
}

/// Panics if `text` (read from `place`) holds the token ([`token_leak`]).
pub fn assert_no_token(place: &str, text: &str) {
    if let Some(leak) = token_leak(place, text) {
        panic!("{leak}");
    }
}

/// A provider that echoes its caller's credentials back, as real ones do: `/whoami` answers
/// `{"check": {"healthy": true, "caller": <Authorization>}}`; `/denied?pad=N` answers 401 with
/// an error quoting the Authorization header after N spaces (to place it where a message is
/// cut); anything else is a Prometheus query refused with `bad_data` quoting the query.
pub fn echo_credentials(r: &RecordedRequest) -> Reply {
    let caller = r.header("authorization").unwrap_or_default().to_owned();
    match r.path() {
        "/whoami" => Reply::ok(&json!({"check": {"healthy": true, "caller": caller}})),
        "/denied" => {
            let pad = " ".repeat(r.query_param("pad").map_or(0, |p| p.parse().unwrap()));
            Reply::Json(
                401,
                json!({"error": format!("{pad}token {caller} is not allowed")}).to_string(),
            )
        }
        _ => Reply::Json(
            400,
            json!({"status": "error", "errorType": "bad_data", "error": format!(
                "unknown tenant in {}", r.query_param("query").unwrap_or_default())})
            .to_string(),
        ),
    }
}
