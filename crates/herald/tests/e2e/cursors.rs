//! Durable cursors against the real broker: ack, lose the server (gracefully
//! and by SIGKILL), start a new one, resume a new device from the stored
//! cursor: nothing lost, nothing delivered twice beyond the unacked tail.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use herald_client::{ClientError, Connection, Msg, Start};
use serde_json::json;

const CH: &str = "chat:cursor";

async fn connect_as(server: &Server, client: &str) -> Connection {
    Connection::connect(&format!("{}?client_id={client}", server.url))
        .await
        .expect("connect")
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the server committed at least `n` cursors and has none
/// pending: every ack it has taken is in Kafka.
async fn wait_for_commits(server: &Server, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = http_get(&server.http, "/metrics").await;
        let commits = metric(&body, "herald_cursor_commits_total");
        let pending = metric(&body, "herald_cursor_pending");
        if commits >= n as f64 && pending == 0.0 {
            return;
        }
        assert!(Instant::now() < deadline, "no cursor commit within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes `n` messages numbered from `first` and returns their seqs.
async fn publish_run(server: &Server, first: i64, n: i64) -> Vec<i64> {
    let mut p = server.connect().await;
    let mut seqs = Vec::new();
    for i in first..first + n {
        seqs.push(publish_ok(&mut p, CH, json!({ "n": i })).await.1);
    }
    seqs
}

fn numbers(msgs: &[Msg]) -> Vec<i64> {
    msgs.iter().map(|m| m.data["n"].as_i64().unwrap()).collect()
}

/// Ack 12 of 20, stop the node (`kill`: SIGKILL after the commit was seen,
/// else SIGTERM), publish 10 more on a new node, resume a second device.
async fn resume_after_losing_the_node(name: &str, kill: bool) {
    let prefix = unique_prefix(name);
    let flags = ["--publish-rate", "0", "--cursor-flush-ms", "100"];
    let first = Server::start(&prefix, &flags);
    let mut phone = connect_as(&first, "alice").await;
    let (_, recovered) = phone.subscribe_from(CH, Start::Live, true).await.unwrap();
    assert!(!recovered);
    let seqs = publish_run(&first, 0, 20).await;
    let got = read_messages(&mut phone, 20, Duration::from_secs(10)).await;
    assert_eq!(numbers(&got), (0..20).collect::<Vec<_>>());
    // Cumulative acks, out of order and repeated: the cursor is the highest.
    phone.ack(CH, seqs[5]).await.unwrap();
    phone.ack(CH, seqs[11]).await.unwrap();
    phone.ack(CH, seqs[3]).await.unwrap();
    phone.ping().await.unwrap();
    if kill {
        wait_for_commits(&first, 1).await;
        first.kill();
    } else {
        first.stop();
    }
    drop(phone);

    let second = Server::start(&prefix, &flags);
    publish_run(&second, 20, 10).await;
    let mut laptop = connect_as(&second, "alice").await;
    let (_, recovered) = laptop
        .subscribe_from(CH, Start::Cursor, true)
        .await
        .unwrap();
    assert!(recovered, "a stored cursor resumes");
    let got = read_messages(&mut laptop, 18, Duration::from_secs(10)).await;
    assert_eq!(numbers(&got), (12..30).collect::<Vec<_>>());
    assert_no_message(&mut laptop, Duration::from_millis(500)).await;
    eprintln!("CURSOR-REPORT {name}: acked through n=11; new device got n=12..29 (18), lost=0 duplicated=0");

    // Another client's cursor is its own: bob has none and starts live.
    let mut bob = connect_as(&second, "bob").await;
    let (_, recovered) = bob.subscribe_from(CH, Start::Cursor, true).await.unwrap();
    assert!(!recovered);
    assert_no_message(&mut bob, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn cursor_resumes_after_graceful_restart() {
    resume_after_losing_the_node("cursor-term", false).await;
}

#[tokio::test]
async fn cursor_resumes_after_sigkill_once_committed() {
    resume_after_losing_the_node("cursor-kill", true).await;
}

#[tokio::test]
async fn durable_needs_an_id_and_plain_acks_are_not_stored() {
    let prefix = unique_prefix("cursor-rules");
    let server = Server::start(&prefix, &["--publish-rate", "0", "--cursor-flush-ms", "50"]);
    // No client id: refused with identity_required, the connection lives on.
    let mut anon = server.connect().await;
    for start in [Start::Cursor, Start::Live] {
        let err = anon.subscribe_from(CH, start, true).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Server { code, .. } if code == "identity_required"),
            "{err}"
        );
    }
    anon.ping().await.unwrap();
    // A bad client id is refused at the handshake.
    assert!(
        Connection::connect(&format!("{}?client_id=a%20b", server.url))
            .await
            .is_err()
    );

    // A non-durable subscription's acks do not become a cursor.
    let mut carol = connect_as(&server, "carol").await;
    carol.subscribe(CH, None).await.unwrap();
    let seqs = publish_run(&server, 0, 3).await;
    read_messages(&mut carol, 3, Duration::from_secs(10)).await;
    carol.ack(CH, seqs[2]).await.unwrap();
    carol.ping().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = connect_as(&server, "carol").await;
    let (_, recovered) = again.subscribe_from(CH, Start::Cursor, true).await.unwrap();
    assert!(!recovered, "plain acks are not stored");
    // This durable one is; a third device resumes after it.
    let more = publish_run(&server, 3, 2).await;
    let got = read_messages(&mut again, 2, Duration::from_secs(10)).await;
    assert_eq!(numbers(&got), vec![3, 4]);
    again.ack(CH, more[0]).await.unwrap();
    again.ping().await.unwrap();
    wait_for_commits(&server, 1).await;
    let mut third = connect_as(&server, "carol").await;
    let (_, recovered) = third.subscribe_from(CH, Start::Cursor, true).await.unwrap();
    assert!(recovered);
    let got = read_messages(&mut third, 1, Duration::from_secs(10)).await;
    assert_eq!(numbers(&got), vec![4]);
}

#[tokio::test]
async fn a_durable_namespace_stores_acks_without_the_flag() {
    let prefix = unique_prefix("cursor-ns");
    let cfg = std::env::temp_dir().join(format!("herald-{prefix}toml"));
    std::fs::write(
        &cfg,
        "[[namespace]]\nname = \"chat\"\npartitions = 4\nsubscribe = \"anonymous\"\npublish = \"anonymous\"\nhistory = \"anonymous\"\ndurable = true\n",
    )
    .unwrap();
    let server = Server::start(
        &prefix,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--publish-rate",
            "0",
            "--cursor-flush-ms",
            "50",
        ],
    );
    // An anonymous connection without a client id is not refused: nothing to store.
    let mut anon = server.connect().await;
    anon.subscribe(CH, None).await.unwrap();
    // With a client id, a plain subscribe is durable.
    let mut kim = connect_as(&server, "kim").await;
    kim.subscribe(CH, None).await.unwrap();
    let seqs = publish_run(&server, 0, 4).await;
    read_messages(&mut kim, 4, Duration::from_secs(10)).await;
    kim.ack(CH, seqs[1]).await.unwrap();
    kim.ping().await.unwrap();
    wait_for_commits(&server, 1).await;
    let mut tablet = connect_as(&server, "kim").await;
    let (_, recovered) = tablet
        .subscribe_from(CH, Start::Cursor, true)
        .await
        .unwrap();
    assert!(recovered);
    let got = read_messages(&mut tablet, 2, Duration::from_secs(10)).await;
    assert_eq!(numbers(&got), vec![2, 3]);
    let _ = std::fs::remove_file(cfg);
}
