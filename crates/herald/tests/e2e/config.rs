//! The configuration commands and start-up checks, run as an operator would.

use crate::common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn herald(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running herald")
}

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!(
        "herald-cfg-{}-{name}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn genconfig_output_passes_checkconfig_and_errors_have_paths() {
    let out = herald(&["genconfig"], &[]);
    assert!(out.status.success());
    let file = write("gen.toml", &String::from_utf8_lossy(&out.stdout));
    let out = herald(&["checkconfig", file.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = write(
        "bad.toml",
        "[server]\nlisten = \"nowhere\"\n[limits]\npublish_rate = -1\nqueue_bytes = 0\n[[namespace]]\nname = \"chat\"\npublish = \"everyone\"\n",
    );
    let out = herald(&["checkconfig", bad.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // The negative rate is a type error (u32): reported first, alone.
    assert!(err.contains("limits.publish_rate"), "{err}");
    let bad = write(
        "bad2.toml",
        "[server]\nlisten = \"nowhere\"\ncolour = 1\n[limits]\nqueue_bytes = 0\n[[namespace]]\nname = \"chat\"\npublish = \"everyone\"\n",
    );
    let out = herald(&["checkconfig", bad.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.colour: unknown key"), "{err}");
    let bad = write(
        "bad3.toml",
        "[server]\nlisten = \"nowhere\"\n[limits]\nqueue_bytes = 0\n[[namespace]]\nname = \"chat\"\npublish = \"everyone\"\n",
    );
    let out = herald(&["checkconfig", bad.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    for path in [
        "server.listen",
        "limits.queue_bytes",
        "namespace[0].publish",
    ] {
        assert!(err.contains(path), "`{path}` missing in: {err}");
    }
    // The environment is checked too, and named.
    let out = herald(
        &["checkconfig", file.to_str().unwrap()],
        &[("HERALD_LIMITS_QUEUE_BYTES", "lots")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("HERALD_LIMITS_QUEUE_BYTES (limits.queue_bytes)"));
    for f in [file, bad] {
        let _ = std::fs::remove_file(f);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_mismatch_and_bad_config_stop_the_start() {
    let prefix = unique_prefix("cfg-mismatch");
    // Creates {prefix}chat with 4 partitions.
    let s = Server::start(&prefix, &[]);
    drop(s);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking({
            let prefix = prefix.clone();
            move || {
                herald(
                    &[
                        "serve",
                        "--listen",
                        "127.0.0.1:0",
                        "--kafka-brokers",
                        &brokers(),
                        "--topic-prefix",
                        &prefix,
                        "--namespaces",
                        "chat=8",
                    ],
                    &[],
                )
            }
        }),
    )
    .await
    .expect("herald serve should exit, not run")
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has 4 partitions but the configuration says 8"),
        "{err}"
    );

    let bad = write(
        "unknown.toml",
        "[kafka]\nbrokers = \"127.0.0.1:1\"\nbroker = \"typo\"\n",
    );
    let out = herald(&["serve", "--config", bad.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("kafka.broker: unknown key"));
    let _ = std::fs::remove_file(bad);
}
