//! Security against the real broker: every refusal with its documented code,
//! and nothing published or leaked by a refused request. Tokens come from
//! `herald gentoken` (the operators' tool) or are forged here.

use crate::common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use herald_client::{ClientError, Connection, Frame, HistoryQuery, Published, Start};
use serde_json::{json, Value};
use uuid::Uuid;

const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";
const API_KEY: &str = "test-api-key-0123456789";

/// A config with one namespace per access rule.
fn config(dir: &str, leeway: u64) -> PathBuf {
    let path = config_file(
        dir,
        &format!(
            r#"
[auth]
hs256_secret = "{SECRET}"
api_key = "{API_KEY}"
leeway_secs = {leeway}

[[namespace]]
name = "chat"
partitions = 4

[[namespace]]
name = "user"
partitions = 2
subscribe = "owner"
history = "owner"
publish = "nobody"

[[namespace]]
name = "room"
partitions = 2
subscribe = "grant"
publish = "grant"
history = "grant"

[[namespace]]
name = "open"
partitions = 2
subscribe = "anonymous"
publish = "anonymous"
history = "anonymous"
"#
        ),
    );
    path
}

/// A new P-256 private key (PEM) at `out`.
fn ec_key(out: &str) {
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        out,
    ]);
}

/// `GET path` on the node's HTTP listener with `headers`: (status, body).
async fn api_get(s: &Server, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http(&s.http, "GET", path, headers, None).await
}

/// Publishes `data` to `channel` and expects a nack with `code`.
async fn assert_nack(c: &mut Connection, channel: &str, data: serde_json::Value, code: &str) {
    match c.publish(channel, Uuid::new_v4(), &data).await.unwrap() {
        Published::Nack { code: got, .. } => assert_eq!(got, code),
        other => panic!("{other:?}"),
    }
}

fn start(name: &str, leeway: u64, extra: &[&str]) -> Server {
    let prefix = unique_prefix(name);
    let cfg = config(&prefix, leeway);
    let mut args = vec!["--config", cfg.to_str().unwrap(), "--publish-rate", "0"];
    args.extend_from_slice(extra);
    Server::start(&prefix, &args)
}

/// `herald gentoken` with the test secret.
fn gentoken(sub: &str, ttl: u64, grants: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["gentoken", "--sub", sub, "--ttl-secs", &ttl.to_string()])
        .env("HERALD_AUTH_HS256_SECRET", SECRET);
    for g in grants {
        cmd.args(["--grant", g]);
    }
    let out = cmd.output().expect("herald gentoken");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn forge(claims: Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

async fn connect_with(server: &Server, token: &str) -> Connection {
    Connection::connect(&format!("{}?token={token}", server.url))
        .await
        .expect("connect with a token")
}

/// The status of a WebSocket upgrade request for `path`.
pub(crate) async fn upgrade_status(base: &str, path: &str) -> u16 {
    http(
        base,
        "GET",
        path,
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        None,
    )
    .await
    .0
}

fn server_code(e: &ClientError) -> &str {
    match e {
        ClientError::Server { code, .. } => code,
        _ => "",
    }
}

/// Records in `{prefix}{namespace}`.
fn records(server: &Server, namespace: &str) -> usize {
    read_topic(&format!("{}{namespace}", server.prefix)).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_token_nothing_is_allowed_where_auth_is_required() {
    let s = start("sec-anon", 5, &[]);
    let mut anon = s.connect().await;
    let e = anon.subscribe("chat:a", None).await.unwrap_err();
    assert_eq!(server_code(&e), "unauthorized", "{e}");
    assert_nack(&mut anon, "chat:a", json!("x"), "unauthorized").await;
    let e = anon
        .history("chat:a", &HistoryQuery::default())
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), "unauthorized");
    // An anonymous namespace works on the same connection.
    anon.subscribe("open:x", None).await.unwrap();
    publish_ok(&mut anon, "open:x", json!(1)).await;

    // Bad tokens in the URL never become a connection: 401.
    let exp = now() + 600;
    let cases = [
        (
            "expired",
            forge(json!({"sub": "a", "exp": now() - 60}), SECRET.as_bytes()),
        ),
        (
            "bad signature",
            forge(
                json!({"sub": "a", "exp": exp}),
                b"not-the-secret-not-the-secret-xx",
            ),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64url(br#"{"alg":"none","typ":"JWT"}"#),
                b64url(json!({"sub": "a", "exp": exp}).to_string().as_bytes())
            ),
        ),
        ("no sub", forge(json!({"exp": exp}), SECRET.as_bytes())),
        ("garbage", "garbage".to_string()),
    ];
    for (what, token) in &cases {
        let st = upgrade_status(&s.http, &format!("/ws?token={token}")).await;
        assert_eq!(st, 401, "{what}");
    }
    // The same tokens as a first frame: bad_token, and still anonymous.
    let mut c = s.connect().await;
    for (what, token) in &cases {
        let e = c.auth(token).await.unwrap_err();
        assert_eq!(server_code(&e), "bad_token", "{what}");
    }
    let e = c.subscribe("chat:a", None).await.unwrap_err();
    assert_eq!(server_code(&e), "unauthorized");
    // A client_id that is not the token's sub is refused.
    let alice = gentoken("alice", 600, &[]);
    let st = upgrade_status(&s.http, &format!("/ws?token={alice}&client_id=bob")).await;
    assert_eq!(st, 400);
    // Nothing reached the protected topic.
    assert_eq!(records(&s, "chat"), 0);

    // A valid token, in the URL or as a first frame, opens it.
    let mut a = connect_with(&s, &alice).await;
    a.subscribe("chat:a", None).await.unwrap();
    let mut b = s.connect().await;
    assert_eq!(b.auth(&alice).await.unwrap().0, "alice");
    publish_ok(&mut b, "chat:a", json!("hi")).await;
    let got = read_messages(&mut a, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].data, json!("hi"));
    assert_eq!(records(&s, "chat"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_user_channels_and_grants() {
    let s = start("sec-private", 5, &[]);
    let alice = gentoken("alice", 600, &[]);
    let bob = gentoken("bob", 600, &[]);
    // Alice on two devices; Bob tries her channel.
    let mut phone = connect_with(&s, &alice).await;
    let mut laptop = connect_with(&s, &alice).await;
    phone.subscribe("user:alice", None).await.unwrap();
    laptop.subscribe("user:alice", None).await.unwrap();
    let mut b = connect_with(&s, &bob).await;
    let e = b.subscribe("user:alice", None).await.unwrap_err();
    assert_eq!(server_code(&e), "unauthorized");
    let e = b
        .history("user:alice", &HistoryQuery::default())
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), "unauthorized");
    let e = b
        .subscribe_from("user:alice", Start::Cursor, true)
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), "unauthorized");
    b.subscribe("user:bob", None).await.unwrap();
    // Users do not publish to user: channels (publish = nobody), backends do.
    assert_nack(&mut phone, "user:alice", json!("self"), "unauthorized").await;
    let (st, body) = http(
        &s.http,
        "POST",
        "/api/publish",
        &[("Authorization", &format!("Bearer {API_KEY}"))],
        Some(&json!({"channel": "user:alice", "data": {"note": "for alice"}}).to_string()),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    for dev in [&mut phone, &mut laptop] {
        let got = read_messages(dev, 1, Duration::from_secs(10)).await;
        assert_eq!(got[0].data, json!({"note": "for alice"}));
    }
    assert_no_message(&mut b, Duration::from_millis(500)).await;
    let page = phone
        .history("user:alice", &HistoryQuery::default())
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 1);

    // Grants: subscribe + history on room:team-*, no publish.
    let carol = gentoken("carol", 600, &["room:team-*=subscribe+history"]);
    let mut c = connect_with(&s, &carol).await;
    c.subscribe("room:team-1", None).await.unwrap();
    c.history("room:team-1", &HistoryQuery::default())
        .await
        .unwrap();
    let e = c.subscribe("room:other", None).await.unwrap_err();
    assert_eq!(server_code(&e), "unauthorized");
    assert_nack(&mut c, "room:team-1", json!("x"), "unauthorized").await;
    // Authenticated but without a grant: nothing in room.
    let e = b.subscribe("room:team-1", None).await.unwrap_err();
    assert_eq!(server_code(&e), "unauthorized");
    assert_eq!(records(&s, "room"), 0);
    assert_eq!(records(&s, "user"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_closes_with_4003_unless_refreshed() {
    let s = start("sec-expiry", 0, &[]);
    // Not refreshed: closed with 4003 at expiry.
    let mut short = s.connect().await;
    let (_, exp) = short.auth(&gentoken("dave", 2, &[])).await.unwrap();
    assert!(exp <= now() + 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let code = loop {
        match short.next_frame_within(Duration::from_secs(1)).await {
            Err(ClientError::Closed(code)) => break code,
            Err(ClientError::Timeout(_)) | Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(std::time::Instant::now() < deadline, "not closed at expiry");
    };
    assert_eq!(code, Some(4003));

    // Refreshed before expiry: lives on, with the new token's grants.
    let mut c = s.connect().await;
    c.auth(&gentoken(
        "erin",
        2,
        &["room:a=subscribe", "room:b=subscribe"],
    ))
    .await
    .unwrap();
    c.subscribe("room:a", None).await.unwrap();
    c.subscribe("room:b", None).await.unwrap();
    // Another user's token is not a refresh.
    let e = c.refresh(&gentoken("frank", 60, &[])).await.unwrap_err();
    assert_eq!(server_code(&e), "bad_token");
    let (sub, exp) = c
        .refresh(&gentoken("erin", 60, &["room:a=subscribe"]))
        .await
        .unwrap();
    assert_eq!(sub, "erin");
    assert!(exp > now() + 30);
    // The narrower token dropped room:b.
    let mut dropped = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !dropped && std::time::Instant::now() < deadline {
        if let Ok(Frame::Unsubscribed { channel }) =
            c.next_frame_within(Duration::from_millis(500)).await
        {
            dropped = channel == "room:b";
        }
    }
    assert!(dropped, "room:b kept after a refresh without its grant");
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.ping()
        .await
        .expect("alive after the first token's expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_needs_the_key_and_keeps_ws_semantics() {
    let s = start("sec-api", 5, &[]);
    let body = json!({"channel": "chat:api", "id": Uuid::new_v4(), "data": 1}).to_string();
    // No key, wrong key, a key with the wrong scheme: 401, nothing stored.
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong-key-wrong-key-1")],
        vec![("X-Api-Key", "test-api-key-012345678")],
        vec![("Authorization", API_KEY)],
    ] {
        for (method, path, b) in [
            ("POST", "/api/publish", Some(body.as_str())),
            ("GET", "/api/history?channel=chat:api", None),
            ("GET", "/api/channels/chat:api/position", None),
        ] {
            let (st, resp) = http(&s.http, method, path, &headers, b).await;
            assert_eq!(st, 401, "{method} {path} {headers:?}: {resp}");
            assert_eq!(
                serde_json::from_str::<Value>(&resp).unwrap()["code"],
                "unauthorized"
            );
        }
    }
    assert_eq!(records(&s, "chat"), 0);

    let key = [("X-Api-Key", API_KEY)];
    let (st, resp) = http(&s.http, "POST", "/api/publish", &key, Some(&body)).await;
    assert_eq!(st, 200, "{resp}");
    let first: Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(first["duplicate"], false);
    // The same id again: the original seq, nothing appended.
    let (st, resp) = http(&s.http, "POST", "/api/publish", &key, Some(&body)).await;
    assert_eq!(st, 200);
    let again: Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["seq"], first["seq"]);
    assert_eq!(records(&s, "chat"), 1);

    let (st, resp) = api_get(&s, "/api/history?channel=chat:api&since_seq=-1", &key).await;
    assert_eq!(st, 200, "{resp}");
    let page: Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(page["messages"][0]["data"], 1);
    assert_eq!(page["messages"][0]["seq"], first["seq"]);
    let (st, resp) = api_get(&s, "/api/channels/chat%3Aapi/position", &key).await;
    assert_eq!(st, 200, "{resp}");
    let pos: Value = serde_json::from_str(&resp).unwrap();
    assert!(pos["position"]["seq"].as_i64().unwrap() >= first["seq"].as_i64().unwrap());

    // Bad requests get their codes.
    for (method, path, b, want, code) in [
        ("POST", "/api/publish", Some("{"), 400, "bad_frame"),
        (
            "POST",
            "/api/publish",
            Some(r#"{"channel":"nope:x","data":1}"#),
            404,
            "unknown_namespace",
        ),
        (
            "POST",
            "/api/publish",
            Some(r#"{"channel":"bad","data":1}"#),
            400,
            "bad_channel",
        ),
        (
            "GET",
            "/api/history?channel=chat:api&limit=0",
            None,
            400,
            "bad_frame",
        ),
        (
            "GET",
            "/api/history?channel=chat:api&color=red",
            None,
            400,
            "bad_frame",
        ),
    ] {
        let (st, resp) = http(&s.http, method, path, &key, b).await;
        assert_eq!(st, want, "{path} {b:?}: {resp}");
        assert_eq!(serde_json::from_str::<Value>(&resp).unwrap()["code"], code);
    }
    // The OpenAPI document needs no key.
    let (st, resp) = http(&s.http, "GET", "/api/openapi.json", &[], None).await;
    assert_eq!(st, 200);
    let doc: Value = serde_json::from_str(&resp).unwrap();
    assert!(doc["paths"]["/api/publish"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_or_metrics() {
    let prefix = unique_prefix("sec-logs");
    let secret = format!("env-secret-{}", Uuid::new_v4().simple());
    let api_key = format!("env-key-{}", Uuid::new_v4().simple());
    let s = Server::start_env(
        &prefix,
        &["--namespaces", "chat=2"],
        &[
            ("HERALD_AUTH_HS256_SECRET", &secret),
            ("HERALD_AUTH_API_KEY", &api_key),
            ("HERALD_LOG", "debug"),
        ],
    );
    let good = forge(
        json!({"sub": "gina", "exp": now() + 600}),
        secret.as_bytes(),
    );
    let bad = forge(
        json!({"sub": "gina", "exp": now() + 600}),
        b"wrong-wrong-wrong-wrong-wrong-wr",
    );
    assert_eq!(
        upgrade_status(&s.http, &format!("/ws?token={bad}")).await,
        401
    );
    let mut c = connect_with(&s, &good).await;
    c.subscribe("chat:z", None).await.unwrap();
    let mut d = s.connect().await;
    assert!(d.auth(&bad).await.is_err());
    d.auth(&good).await.unwrap();
    let (st, _) = api_get(
        &s,
        "/api/history?channel=chat:z",
        &[("X-Api-Key", &api_key)],
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = api_get(
        &s,
        "/api/history?channel=chat:z",
        &[("X-Api-Key", "guess-guess-guess-1")],
    )
    .await;
    assert_eq!(st, 401);
    let (_, metrics) = http_get(&s.http, "/metrics").await;
    assert!(metrics.contains("herald_auth_failures_total"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = s.log();
    assert!(log.contains("DEBUG"), "debug logging was on");
    for (what, secret) in [
        ("HS256 secret", secret.as_str()),
        ("API key", api_key.as_str()),
        ("a valid token", good.as_str()),
        ("a refused token", bad.as_str()),
        ("a refused API key", "guess-guess-guess-1"),
    ] {
        assert!(!log.contains(secret), "the log contains {what}");
        assert!(!metrics.contains(secret), "/metrics contains {what}");
    }
}

#[test]
fn gentoken_and_checktoken_round_trip() {
    let token = gentoken("hank", 600, &["room:*=subscribe+publish"]);
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["checktoken", &token])
        .env("HERALD_AUTH_HS256_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sub"], "hank");
    assert_eq!(v["channels"]["room:*"], json!(["subscribe", "publish"]));
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["checktoken", &token])
        .env(
            "HERALD_AUTH_HS256_SECRET",
            "another-secret-another-secret-another",
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad signature"));
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn checktoken(cfg: &std::path::Path, token: &str) -> Result<Value, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["checktoken", "--config", cfg.to_str().unwrap(), token])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn gentoken_with_key(key: &std::path::Path, alg: &str, kid: Option<&str>, sub: &str) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args([
        "gentoken",
        "--sub",
        sub,
        "--private-key",
        key.to_str().unwrap(),
        "--alg",
        alg,
    ]);
    if let Some(k) = kid {
        cmd.args(["--kid", k]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_from_jwks_and_es256_from_pem() {
    let dir = std::env::temp_dir().join(format!("herald-keys-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = |n: &str| dir.join(n);
    let ps = |n: &str| p(n).to_str().unwrap().to_owned();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &ps("rsa.pem"),
    ]);
    ec_key(&ps("ec.pem"));
    ec_key(&ps("other-ec.pem"));
    openssl(&[
        "pkey",
        "-in",
        &ps("ec.pem"),
        "-pubout",
        "-out",
        &ps("ec.pub.pem"),
    ]);
    // The RSA public key as a JWKS entry: n from the modulus, e = 65537.
    let modulus = openssl(&["rsa", "-in", &ps("rsa.pem"), "-noout", "-modulus"]);
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let jwks = json!({"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig", "n": b64url(&n), "e": "AQAB"}]});
    std::fs::write(p("jwks.json"), jwks.to_string()).unwrap();
    let cfg = p("herald.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\npublic_key_file = \"{}\"\njwks_file = \"{}\"\n\n[[namespace]]\nname = \"chat\"\npartitions = 2\n",
            ps("ec.pub.pem"),
            ps("jwks.json")
        ),
    )
    .unwrap();

    let es = gentoken_with_key(&p("ec.pem"), "ES256", None, "ivy");
    assert_eq!(checktoken(&cfg, &es).unwrap()["sub"], "ivy");
    let rs = gentoken_with_key(&p("rsa.pem"), "RS256", Some("k1"), "jack");
    assert_eq!(checktoken(&cfg, &rs).unwrap()["sub"], "jack");
    // Wrong kid, another EC key, and HS256 without a configured secret.
    let wrong_kid = gentoken_with_key(&p("rsa.pem"), "RS256", Some("k2"), "jack");
    assert!(checktoken(&cfg, &wrong_kid).unwrap_err().contains("no key"));
    let other = gentoken_with_key(&p("other-ec.pem"), "ES256", None, "ivy");
    assert!(checktoken(&cfg, &other)
        .unwrap_err()
        .contains("bad signature"));
    let hs = forge(json!({"sub": "ivy", "exp": now() + 60}), SECRET.as_bytes());
    assert!(checktoken(&cfg, &hs).unwrap_err().contains("no key"));

    // And the server takes them.
    let s = Server::start(
        &unique_prefix("sec-keys"),
        &["--config", cfg.to_str().unwrap()],
    );
    let mut a = connect_with(&s, &es).await;
    a.subscribe("chat:k", None).await.unwrap();
    let mut b = s.connect().await;
    b.auth(&rs).await.unwrap();
    publish_ok(&mut b, "chat:k", json!("signed")).await;
    assert_eq!(
        read_messages(&mut a, 1, Duration::from_secs(10)).await[0].data,
        json!("signed")
    );
    assert_eq!(
        upgrade_status(&s.http, &format!("/ws?token={other}")).await,
        401
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A JWKS document served by the test, as an identity provider would: its
/// answer can be changed (keys rotated, failures) and its fetches counted.
struct Idp {
    url: String,
    answer: std::sync::Arc<std::sync::Mutex<(u16, String)>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Idp {
    async fn start() -> Idp {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let answer = std::sync::Arc::new(std::sync::Mutex::new((404, String::new())));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (a, f) = (answer.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (a, f) = (a.clone(), f.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 2048];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let (status, body) = a.lock().unwrap().clone();
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(reply.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Idp {
            url,
            answer,
            fetches,
        }
    }

    fn serve(&self, status: u16, body: String) {
        *self.answer.lock().unwrap() = (status, body);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The JWKS entry of the EC P-256 key in `pem` (x and y are the last 64
/// bytes of its DER public key).
fn ec_jwk(dir: &std::path::Path, pem: &std::path::Path, kid: &str) -> Value {
    let der = dir.join(format!("{kid}.pub.der"));
    openssl(&[
        "pkey",
        "-in",
        pem.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
        "-out",
        der.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&der).unwrap();
    let xy = &bytes[bytes.len() - 64..];
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
           "x": b64url(&xy[..32]), "y": b64url(&xy[32..])})
}

/// Keys from a JWKS URL rotate without a restart: a token with a key the
/// provider has just published is accepted on first use (one fetch for the
/// unknown `kid`), a removed key stops verifying, made-up `kid`s do not make
/// the node fetch again and again, the periodic refresh picks up changes,
/// and a provider that fails keeps the keys held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_keys_rotate_without_restart() {
    let dir = std::env::temp_dir().join(format!("herald-jwks-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = |k: &str| dir.join(format!("{k}.pem"));
    for k in ["k1", "k2", "k3"] {
        ec_key(pem(k).to_str().unwrap());
    }
    let jwks = |kids: &[&str]| {
        let keys: Vec<Value> = kids.iter().map(|k| ec_jwk(&dir, &pem(k), k)).collect();
        json!({ "keys": keys }).to_string()
    };
    let token = |k: &str, sub: &str| gentoken_with_key(&pem(k), "ES256", Some(k), sub);
    let idp = Idp::start().await;
    idp.serve(200, jwks(&["k1"]));
    let cfg = dir.join("herald.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\njwks_url = \"{}\"\njwks_refresh_secs = 3\n\n[[namespace]]\nname = \"chat\"\npartitions = 2\n",
            idp.url
        ),
    )
    .unwrap();
    // `herald checktoken` fetches the URL too.
    assert_eq!(checktoken(&cfg, &token("k1", "ann")).unwrap()["sub"], "ann");

    let s = Server::start(
        &unique_prefix("sec-jwks"),
        &["--config", cfg.to_str().unwrap()],
    );
    let mut ann = connect_with(&s, &token("k1", "ann")).await;
    ann.subscribe("chat:jwks", None).await.unwrap();

    // The provider rotates k1 out and k2 in: a k2 token is accepted at once,
    // over the upgrade and in an `auth` frame, with one fetch between them.
    idp.serve(200, jwks(&["k2"]));
    let before = idp.fetches();
    let mut bob = connect_with(&s, &token("k2", "bob")).await;
    assert_eq!(idp.fetches(), before + 1, "one fetch for the unknown kid");
    let mut cid = s.connect().await;
    cid.auth(&token("k2", "cid")).await.unwrap();
    publish_ok(&mut bob, "chat:jwks", json!("rotated")).await;
    assert_eq!(
        read_messages(&mut ann, 1, Duration::from_secs(10)).await[0].data,
        json!("rotated"),
        "a connection made with a key since removed keeps its identity until its token expires"
    );
    // k1 is gone: refused; made-up kids within the refetch interval cause
    // no fetch.
    let before = idp.fetches();
    assert_eq!(
        upgrade_status(&s.http, &format!("/ws?token={}", token("k1", "ann"))).await,
        401
    );
    for _ in 0..5 {
        let forged = gentoken_with_key(&pem("k3"), "ES256", Some("made-up"), "eve");
        assert_eq!(
            upgrade_status(&s.http, &format!("/ws?token={forged}")).await,
            401
        );
    }
    assert!(
        idp.fetches() <= before + 1,
        "{} fetches",
        idp.fetches() - before
    );

    // The periodic refresh (every 3 s) adds k3 without any token asking.
    idp.serve(200, jwks(&["k2", "k3"]));
    let before = idp.fetches();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while idp.fetches() < before + 1 {
        assert!(std::time::Instant::now() < deadline, "no periodic fetch");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The provider now fails: the keys held still verify, across failed
    // periodic fetches.
    idp.serve(500, String::new());
    let before = idp.fetches();
    while idp.fetches() < before + 1 {
        assert!(
            std::time::Instant::now() < deadline + Duration::from_secs(15),
            "no periodic fetch"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut dee = connect_with(&s, &token("k3", "dee")).await;
    dee.subscribe("chat:jwks", None).await.unwrap();
    let mut eve = connect_with(&s, &token("k2", "eve")).await;
    publish_ok(&mut eve, "chat:jwks", json!("still verified")).await;
    assert_eq!(
        read_messages(&mut dee, 1, Duration::from_secs(10)).await[0].data,
        json!("still verified")
    );
    let (_, metrics) = http_get(&s.http, "/metrics").await;
    for result in ["ok", "error"] {
        assert!(
            metrics.contains(&format!(
                "herald_auth_jwks_fetches_total{{result=\"{result}\"}}"
            )),
            "{result}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The API key is checked before the body is read: a request that declares
/// a large body and sends none of it is refused at once, not held open
/// waiting for bytes that an unauthenticated client chose to drip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_is_checked_before_the_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start("sec-api-body", 5, &[]);
    let addr = s.http.trim_start_matches("http://").trim_end_matches('/');
    for key in ["", "X-Api-Key: wrong-key-wrong-key-1\r\n"] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\n{key}Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        // No body at all.
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no answer without the body ({key:?})"))
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
}

/// A token accepted only thanks to `auth.leeway_secs` (its `exp` a moment
/// ago) lives out the leeway, like at verification, and is then closed with
/// 4003; it used to be accepted and closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_inside_the_leeway_lives_out_the_leeway() {
    let s = start("sec-leeway", 5, &[]);
    let exp = now() - 2;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": "erin", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut c = s.connect().await;
    c.auth(&token).await.expect("accepted within the leeway");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.ping().await.expect("still open inside the leeway");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let code = loop {
        match c.next_frame_within(Duration::from_secs(1)).await {
            Err(ClientError::Closed(code)) => break code,
            Err(ClientError::Timeout(_)) | Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not closed after the leeway"
        );
    };
    assert_eq!(code, Some(4003));
}
