//! Cutting a user off, across two real herald nodes on the real broker:
//! `POST /api/revoke` by `jti` and by user closes the covered connections on
//! every node within a second (close 4011), leaves the others open, and the
//! revoked tokens are refused at connect (401) and in `auth`, also by a node
//! started after the revocation; and the per-user connection limit counts
//! a user's connections on every node.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use herald_client::{Connection, Frame};
use serde_json::{json, Value};

use crate::admin::{api, conforms, expect_close, expect_frame, nodes, token_with, wait_nodes};
use crate::security::upgrade_status;

fn now_s() -> u64 {
    now_ms() as u64 / 1000
}

async fn connect(s: &Server, token: &str) -> Connection {
    let mut c = Connection::connect(&format!("{}?token={token}", s.url))
        .await
        .expect("connect with a token");
    // A round trip: the connection is registered on its node.
    c.ping().await.expect("ping");
    c
}

/// The `error` (code, reason) an `auth` frame with `token` gets on a fresh
/// anonymous connection.
async fn auth_refusal(s: &Server, token: &str) -> (String, String) {
    let mut anon = Connection::connect(&s.url).await.expect("connect");
    anon.send_text(json!({ "type": "auth", "token": token }).to_string())
        .await
        .expect("send auth");
    match expect_frame(&mut anon, "the auth refusal", |f| {
        matches!(f, Frame::Error { .. })
    })
    .await
    {
        Frame::Error { code, reason, .. } => (code, reason),
        other => panic!("not an error: {other:?}"),
    }
}

/// Closes of `conns`, each with when it arrived after `from`.
async fn closes(conns: Vec<Connection>, from: Instant) -> Vec<(Option<u16>, Duration)> {
    let mut out = Vec::new();
    for mut c in conns {
        let (code, _) = expect_close(&mut c).await;
        out.push((code, from.elapsed()));
    }
    out
}

fn assert_cut(what: &str, got: &[(Option<u16>, Duration)]) {
    for (code, after) in got {
        assert_eq!(*code, Some(4011), "{what}: {got:?}");
        assert!(
            *after < Duration::from_secs(1),
            "{what}: closed {after:?} after the revocation was confirmed"
        );
    }
    eprintln!(
        "{what}: closed after {:?}",
        got.iter().map(|g| g.1).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_jti_is_cut_off_on_every_node_within_a_second() {
    let prefix = unique_prefix("revoke-jti");
    let ns = nodes(&prefix, 2);
    for n in &ns {
        wait_nodes(n, 2).await;
    }
    let iat = now_s();
    let revoked = token_with("alice", json!({ "jti": "t-revoked", "iat": iat }));
    let other = token_with("alice", json!({ "jti": "t-kept", "iat": iat }));
    let cut = vec![
        connect(&ns[0], &revoked).await,
        connect(&ns[1], &revoked).await,
    ];
    let mut kept = connect(&ns[1], &other).await;

    let (status, v) = api(
        &ns[0],
        "POST",
        "/api/revoke",
        Some(json!({ "jti": "t-revoked", "until": iat + 3600 })),
    )
    .await;
    let confirmed = Instant::now();
    assert_eq!(status, 200, "{v}");
    conforms("RevokeResponse", &v);
    assert_eq!(v["revoked"], "jti");
    assert_cut("jti", &closes(cut, confirmed).await);

    // The user's other token is untouched.
    kept.ping()
        .await
        .expect("the other token's connection stays");
    // The revoked one is refused at connect on both nodes, and in `auth`.
    for n in &ns {
        assert_eq!(
            upgrade_status(&n.http, &format!("/ws?token={revoked}")).await,
            401
        );
    }
    assert_eq!(
        auth_refusal(&ns[1], &revoked).await,
        ("bad_token".to_owned(), "token revoked".to_owned())
    );
    // A node started after the revocation read it before serving.
    let late = Server::start(
        &prefix,
        &[
            "--config",
            crate::admin::config_with(&prefix, "")
                .to_str()
                .expect("path"),
        ],
    );
    assert_eq!(
        upgrade_status(&late.http, &format!("/ws?token={revoked}")).await,
        401
    );
    connect(&late, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_cutoff_ends_their_older_tokens_everywhere_and_admits_newer_ones() {
    let prefix = unique_prefix("revoke-user");
    let ns = nodes(&prefix, 2);
    for n in &ns {
        wait_nodes(n, 2).await;
    }
    let old = token_with("bob", json!({ "iat": now_s() - 10 }));
    let no_iat = token_with("bob", json!({}));
    let cut = vec![
        connect(&ns[0], &old).await,
        connect(&ns[1], &old).await,
        connect(&ns[1], &no_iat).await,
    ];
    let mut carol = connect(&ns[0], &token_with("carol", json!({ "iat": now_s() - 10 }))).await;

    let (status, v) = api(
        &ns[1],
        "POST",
        "/api/revoke",
        Some(json!({ "user": "bob" })),
    )
    .await;
    let confirmed = Instant::now();
    assert_eq!(status, 200, "{v}");
    conforms("RevokeResponse", &v);
    let before = v["before"].as_u64().expect("before");
    assert_cut("user", &closes(cut, confirmed).await);
    carol.ping().await.expect("another user stays");

    for n in &ns {
        for t in [&old, &no_iat] {
            assert_eq!(
                upgrade_status(&n.http, &format!("/ws?token={t}")).await,
                401
            );
        }
    }
    // A token issued after the cutoff is welcome.
    let newer = token_with("bob", json!({ "iat": before + 1 }));
    let mut c = connect(&ns[0], &newer).await;
    c.ping().await.expect("a newer token connects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_counts_the_users_connections_on_every_node() {
    let prefix = unique_prefix("user-limit");
    let cfg = crate::admin::config_with(&prefix, "");
    let cfg = cfg.to_str().expect("path");
    let args = ["--config", cfg, "--max-connections-per-user", "2"];
    let ns = [Server::start(&prefix, &args), Server::start(&prefix, &args)];
    for n in &ns {
        wait_nodes(n, 2).await;
    }
    let alice = token_with("alice", json!({}));
    let on_a = connect(&ns[0], &alice).await;
    let _on_b = connect(&ns[1], &alice).await;
    // Node 0 learns of node 1's connection from its next heartbeat (every
    // 300 ms here): a third connection is refused though node 0 holds one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        Connection::connect(&format!("{}?token={alice}", ns[0].url))
            .await
            .is_err(),
        "a third connection of alice got in"
    );
    assert_eq!(
        upgrade_status(&ns[0].http, &format!("/ws?token={alice}")).await,
        429
    );
    // The same through an `auth` frame on an anonymous connection.
    assert_eq!(auth_refusal(&ns[0], &alice).await.0, "rate_limited");
    // Another user is not counted with alice, and a closed connection frees
    // its place.
    connect(&ns[0], &token_with("bob", json!({}))).await;
    drop(on_a);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = Connection::connect(&format!("{}?token={alice}", ns[0].url)).await;
        if c.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice's freed place never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_bodies_are_checked() {
    let prefix = unique_prefix("revoke-bad");
    let ns = nodes(&prefix, 1);
    for body in [
        json!({}),
        json!({ "user": "" }),
        json!({ "jti": "x", "before": 5 }),
        json!({ "user": "a", "until": 5 }),
        json!({ "jti": "x".repeat(300) }),
        json!({ "user": "a", "extra": true }),
    ] {
        let (status, v): (u16, Value) =
            api(&ns[0], "POST", "/api/revoke", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["code"], "bad_frame", "{body}: {v}");
    }
}
