//! Backend hooks: optional HTTP calls from herald to the application when a
//! client connects, subscribes or publishes (the idea of Centrifugo's
//! proxy). The application answers whether to allow it, and may supply the
//! connection's identity (connect) or rewrite the message (publish).
//!
//! Each hook is a `POST` of a JSON body to its URL, with the headers named
//! in `hooks.forward_headers` copied from the client's upgrade request.
//! The answer is `200` with `{"allow": true, ...}` or `{"allow": false,
//! "code": "...", "reason": "..."}`. Anything else (another status, a body
//! that is not such JSON, no answer within `hooks.timeout_ms`) is a failure,
//! which refuses (`unavailable`) unless `hooks.fail_open` is set.
//!
//! `http://` or `https://` ([`crate::http_client`]).

use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_proto::codes;
use http_body_util::Full;
use hyper::Uri;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tracing::{debug, warn};

/// Where and how the hooks are called.
#[derive(Clone, Debug, Default)]
pub struct HooksConfig {
    pub connect_url: Option<Uri>,
    pub subscribe_url: Option<Uri>,
    pub publish_url: Option<Uri>,
    /// How long a hook may take. Default 1 s.
    pub timeout: Duration,
    /// Upgrade-request headers copied onto every hook call (lower case).
    pub forward_headers: Vec<String>,
    /// A failed hook allows instead of refusing.
    pub fail_open: bool,
}

/// The hook being called.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Hook {
    Connect,
    Subscribe,
    Publish,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Subscribe => "subscribe",
            Hook::Publish => "publish",
        }
    }
}

/// What the application answered.
#[derive(Debug)]
pub enum Verdict {
    /// Go ahead; `answer` is the whole answer (connect: `identity`;
    /// publish: `data`).
    Allow(Answer),
    /// Refused, with a code the client sees and the application's reason.
    Refuse { code: &'static str, reason: String },
}

/// An allowing answer's optional parts.
#[derive(Debug, Default, Deserialize)]
pub struct Answer {
    /// Connect: who the connection acts as (token claims: `sub`, `exp?`,
    /// `channels?`, `info?`).
    #[serde(default)]
    pub identity: Option<Box<RawValue>>,
    /// Publish: the message to append instead of the client's.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Reply {
    allow: bool,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(flatten)]
    answer: AnswerFields,
}

/// [`Answer`]'s fields inside [`Reply`] (`flatten` cannot hold `RawValue`s,
/// so they are taken as `Value`s and turned back).
#[derive(Deserialize)]
struct AnswerFields {
    #[serde(default)]
    identity: Option<Value>,
    #[serde(default)]
    data: Option<Value>,
}

/// Largest hook answer read.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Longest refusal reason passed on to the client.
const MAX_REASON_BYTES: usize = 200;

/// Codes an application may refuse with; any other becomes `refused`.
const CODES: [&str; 5] = [
    codes::UNAUTHORIZED,
    codes::BAD_FRAME,
    codes::RATE_LIMITED,
    codes::TOO_LARGE,
    codes::UNAVAILABLE,
];

/// A hook URL: `http(s)://host[:port]/path`.
pub fn parse_url(s: &str) -> Result<Uri, String> {
    crate::http_client::parse_url(s, "http://127.0.0.1:3000/herald/connect")
}

/// Whether `s` is a valid HTTP header name.
pub fn is_header_name(s: &str) -> bool {
    s.parse::<hyper::header::HeaderName>().is_ok()
}

/// The hooks of a node: one pooled HTTP client for all of them.
pub struct Hooks {
    cfg: HooksConfig,
    client: crate::http_client::HttpClient,
}

impl Hooks {
    pub fn new(cfg: HooksConfig) -> Hooks {
        let client = crate::http_client::client(cfg.timeout);
        Hooks { cfg, client }
    }

    /// Whether `hook` is configured.
    pub fn has(&self, hook: Hook) -> bool {
        self.url(hook).is_some()
    }

    fn url(&self, hook: Hook) -> Option<&Uri> {
        match hook {
            Hook::Connect => self.cfg.connect_url.as_ref(),
            Hook::Subscribe => self.cfg.subscribe_url.as_ref(),
            Hook::Publish => self.cfg.publish_url.as_ref(),
        }
    }

    /// The headers of the upgrade request that hooks forward.
    pub fn forwarded(&self, headers: &hyper::HeaderMap) -> Vec<(String, String)> {
        self.cfg
            .forward_headers
            .iter()
            .filter_map(|name| {
                let v = headers.get(name.as_str())?.to_str().ok()?;
                Some((name.clone(), v.to_owned()))
            })
            .collect()
    }

    /// Calls `hook` with `body`; `None` when it is not configured.
    pub async fn call(
        &self,
        hook: Hook,
        body: &Value,
        headers: &[(String, String)],
    ) -> Option<Verdict> {
        let url = self.url(hook)?;
        let started = Instant::now();
        let r = tokio::time::timeout(self.cfg.timeout, self.post(url, body, headers)).await;
        metrics::histogram!("herald_hook_duration_seconds", "hook" => hook.as_str())
            .record(started.elapsed().as_secs_f64());
        let failed = |why: String| {
            metrics::counter!("herald_hook_calls_total", "hook" => hook.as_str(), "result" => "error")
                .increment(1);
            warn!(hook = hook.as_str(), %why, fail_open = self.cfg.fail_open, "Backend hook failed");
            if self.cfg.fail_open {
                Verdict::Allow(Answer::default())
            } else {
                Verdict::Refuse {
                    code: codes::UNAVAILABLE,
                    reason: format!("the application's {} hook failed; retry", hook.as_str()),
                }
            }
        };
        let reply = match r {
            Err(_) => return Some(failed(format!("no answer within {:?}", self.cfg.timeout))),
            Ok(Err(why)) => return Some(failed(why)),
            Ok(Ok(reply)) => reply,
        };
        let verdict = if reply.allow {
            let raw = |v: Option<Value>| v.and_then(|v| serde_json::value::to_raw_value(&v).ok());
            Verdict::Allow(Answer {
                identity: raw(reply.answer.identity),
                data: raw(reply.answer.data),
            })
        } else {
            let code = reply
                .code
                .as_deref()
                .and_then(|c| CODES.iter().find(|k| **k == c).copied())
                .unwrap_or(codes::REFUSED);
            let mut reason = reply
                .reason
                .unwrap_or_else(|| "refused by the application".into());
            if reason.len() > MAX_REASON_BYTES {
                let mut end = MAX_REASON_BYTES;
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                reason.truncate(end);
            }
            Verdict::Refuse { code, reason }
        };
        let result = if matches!(verdict, Verdict::Allow(_)) {
            "allow"
        } else {
            "refuse"
        };
        metrics::counter!("herald_hook_calls_total", "hook" => hook.as_str(), "result" => result)
            .increment(1);
        debug!(hook = hook.as_str(), result, "Backend hook answered");
        Some(verdict)
    }

    async fn post(
        &self,
        url: &Uri,
        body: &Value,
        headers: &[(String, String)],
    ) -> Result<Reply, String> {
        let mut req = hyper::Request::post(url.clone())
            .header("content-type", "application/json")
            .header("user-agent", concat!("herald/", env!("CARGO_PKG_VERSION")));
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let (status, bytes) = crate::http_client::send(&self.client, req, MAX_ANSWER_BYTES).await?;
        if status != hyper::StatusCode::OK {
            return Err(format!("answered {status}"));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("unreadable answer: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_or_https() {
        assert!(parse_url("http://127.0.0.1:3000/herald/connect").is_ok());
        assert!(parse_url("https://app.example/hook").is_ok());
        assert!(parse_url("ftp://app.example/hook").is_err());
        assert!(parse_url("127.0.0.1:3000").is_err());
        assert!(parse_url("").is_err());
        assert!(is_header_name("x-session") && !is_header_name("bad header"));
    }

    #[test]
    fn answers_parse() {
        let r: Reply = serde_json::from_str(r#"{"allow":true,"data":{"a":1}}"#).unwrap();
        assert!(r.allow);
        assert_eq!(r.answer.data, Some(serde_json::json!({"a": 1})));
        let r: Reply =
            serde_json::from_str(r#"{"allow":false,"code":"unauthorized","reason":"no"}"#).unwrap();
        assert!(!r.allow);
        assert_eq!(r.code.as_deref(), Some("unauthorized"));
        assert!(serde_json::from_str::<Reply>(r#"{"data":1}"#).is_err());
    }
}
