//! Backend hooks against a small HTTP server in the test (the
//! "application"), with two real herald nodes on the real broker: the
//! connect hook refusing, failing and supplying an identity with grants
//! (and seeing forwarded headers), the subscribe hook allowing, refusing and
//! timing out (failing closed), the publish hook refusing and rewriting;
//! every acked publish is delivered once, in order, as rewritten.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use herald_client::{ClientError, Connection, Published};
use serde_json::{json, Value};
use uuid::Uuid;

/// A call the application received: path, lower-cased headers, body.
#[derive(Clone, Debug)]
struct Call {
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

/// The application's answer to a call: status and body (after a delay).
fn decide(path: &str, body: &Value) -> (u16, Value, Duration) {
    let none = Duration::ZERO;
    match path {
        "/connect" => match body["client_id"].as_str() {
            Some("banned") => (
                200,
                json!({ "allow": false, "code": "unauthorized", "reason": "banned here" }),
                none,
            ),
            Some("broken") => (500, json!({}), none),
            Some("hooked") => (
                200,
                json!({ "allow": true, "identity": {
                    "sub": "hooked-user",
                    "channels": { "vip:*": ["subscribe", "publish", "history"] },
                    "info": { "via": "hook" },
                } }),
                none,
            ),
            _ => (200, json!({ "allow": true }), none),
        },
        "/subscribe" => match body["channel"].as_str() {
            Some("chat:secret") => (
                200,
                json!({ "allow": false, "code": "not-for-you", "reason": "members only" }),
                none,
            ),
            Some("chat:slow") => (200, json!({ "allow": true }), Duration::from_secs(3)),
            _ => (200, json!({ "allow": true }), none),
        },
        "/publish" => {
            let text = body["data"]["text"].as_str().unwrap_or_default();
            if text.contains("spam") {
                (
                    200,
                    json!({ "allow": false, "code": "rate_limited", "reason": "no spam" }),
                    none,
                )
            } else {
                let mut data = body["data"].clone();
                data["checked"] = json!(true);
                (200, json!({ "allow": true, "data": data }), none)
            }
        }
        _ => (404, json!({}), none),
    }
}

/// The application: answers by [`decide`], recording each call.
async fn application() -> (String, Arc<Mutex<Vec<Call>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = calls.clone();
    let url = serve_http(Arc::new(move |req: HttpRequest| {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let (status, answer, delay) = decide(&req.path, &body);
        log.lock().expect("calls").push(Call {
            path: req.path,
            headers: req.headers,
            body,
        });
        (status, answer.to_string(), delay)
    }))
    .await;
    (url, calls)
}

fn config(prefix: &str, app: &str) -> String {
    let path = config_file(
        prefix,
        &format!(
            r#"
[hooks]
connect_url = "{app}/connect"
subscribe_url = "{app}/subscribe"
publish_url = "{app}/publish"
timeout_ms = 500
forward_headers = ["x-session"]

{OPEN_CHAT}

[[namespace]]
name = "vip"
partitions = 2
subscribe = "grant"
publish = "grant"
history = "grant"
"#
        ),
    );
    path.to_str().expect("path").to_owned()
}

/// The status and body of a refused upgrade.
async fn refused(url: &str) -> (u16, Value) {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            (
                resp.status().as_u16(),
                serde_json::from_slice(&body).unwrap_or(Value::Null),
            )
        }
        Err(e) => panic!("{url}: {e}"),
        Ok(_) => panic!("{url}: connected"),
    }
}

async fn refusal(c: &mut Connection, channel: &str) -> (String, String) {
    match c.subscribe(channel, None).await {
        Err(ClientError::Server { code, reason }) => (code, reason),
        other => panic!("subscribe {channel}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_allow_refuse_rewrite_and_fail_closed() {
    let (app, calls) = application().await;
    let prefix = unique_prefix("hooks");
    let cfg = config(&prefix, &app);
    let a = Server::start(&prefix, &["--config", &cfg, "--publish-rate", "0"]);
    let b = Server::start(&prefix, &["--config", &cfg, "--publish-rate", "0"]);

    // Connect: refused with the application's code, a failing hook fails
    // closed, and an identity from the hook grants what no token did.
    let (status, body) = refused(&format!("{}?client_id=banned", a.url)).await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        json!({ "code": "unauthorized", "reason": "banned here" })
    );
    let (status, body) = refused(&format!("{}?client_id=broken", a.url)).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")));
    let mut vip = Connection::connect_with_headers(
        &format!("{}?client_id=hooked", a.url),
        &[("X-Session", "s-42"), ("X-Other", "not forwarded")],
    )
    .await
    .expect("connect through the hook");
    vip.subscribe("vip:lounge", None)
        .await
        .expect("the hook's grant allows vip");
    let mut plain = Connection::connect(&b.url).await.expect("connect");
    assert_eq!(refusal(&mut plain, "vip:lounge").await.0, "unauthorized");
    {
        let calls = calls.lock().expect("calls");
        let hooked = calls
            .iter()
            .find(|c| c.path == "/connect" && c.body["client_id"] == "hooked")
            .expect("connect call");
        assert!(hooked
            .headers
            .contains(&("x-session".into(), "s-42".into())));
        assert!(!hooked.headers.iter().any(|(k, _)| k == "x-other"));
        let sub = calls
            .iter()
            .find(|c| c.path == "/subscribe" && c.body["channel"] == "vip:lounge")
            .expect("subscribe call");
        assert_eq!(sub.body["sub"], "hooked-user");
    }

    // Subscribe: refused with an unknown code (→ refused) and the reason;
    // a hook that does not answer in time fails closed.
    let (code, reason) = refusal(&mut plain, "chat:secret").await;
    assert_eq!(
        (code.as_str(), reason.as_str()),
        ("refused", "members only")
    );
    let (code, _) = refusal(&mut plain, "chat:slow").await;
    assert_eq!(code, "unavailable");
    // Refused subscriptions are forgotten: asking again is not "already".
    assert_eq!(refusal(&mut plain, "chat:secret").await.0, "refused");
    plain.subscribe("chat:ok", None).await.expect("subscribe");

    // Publish: every fifth is spam (nacked with the application's code),
    // the rest are appended as the hook rewrote them.
    let mut publisher = Connection::connect(&a.url).await.expect("connect");
    let mut acked = Vec::new();
    for n in 0..20 {
        let text = if n % 5 == 4 {
            "spam".to_owned()
        } else {
            format!("m{n}")
        };
        let id = Uuid::new_v4();
        let data = json!({ "n": n, "text": text });
        match publisher
            .publish("chat:ok", id, &data)
            .await
            .expect("answer")
        {
            Published::Ack { seq, .. } => {
                assert_ne!(text, "spam");
                acked.push((seq, n));
            }
            Published::Nack { code, reason } => {
                assert_eq!(
                    (code.as_str(), reason.as_str()),
                    ("rate_limited", "no spam")
                );
                assert_eq!(text, "spam");
            }
        }
    }
    assert_eq!(acked.len(), 16);
    let got = read_messages(&mut plain, acked.len(), Duration::from_secs(10)).await;
    let seen: Vec<(i64, i64)> = got
        .iter()
        .map(|m| (m.seq, m.data["n"].as_i64().unwrap_or(-1)))
        .collect();
    assert_eq!(seen, acked, "delivered != acked");
    assert!(got.iter().all(|m| m.data["checked"] == true));
    assert_no_message(&mut plain, Duration::from_millis(300)).await;
    // The hook saw each publish once: no retries of an allowed one.
    let publishes = calls
        .lock()
        .expect("calls")
        .iter()
        .filter(|c| c.path == "/publish")
        .count();
    assert_eq!(publishes, 20);
    let m = http_get(&a.http, "/metrics").await.1;
    assert!(
        m.contains("herald_hook_calls_total{hook=\"publish\",result=\"refuse\"} 4"),
        "{m}"
    );
    let m = http_get(&b.http, "/metrics").await.1;
    assert!(
        m.contains("herald_hook_calls_total{hook=\"subscribe\",result=\"error\"} 1"),
        "{m}"
    );
    drop(vip);
}
