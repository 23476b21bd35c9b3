//! The browser client and the demo in a real browser: Debian's Chromium,
//! headless, driven by playwright-core (`clients/typescript/browser/run.mjs`)
//! against a real herald node on the real broker. Two pages chat; a page
//! offline, a reloaded page and a page without WebSocket (SSE fallback)
//! each get every message once and in order; long-polling works; a token
//! expiring mid-session is refreshed. `infra/dev/test.sh` installs Chromium
//! and the npm packages and builds the client first.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

const SECRET: &str = "browser-test-secret-0123456789-abcdefghij";
const API_KEY: &str = "browser-test-api-key-0123456789";

#[test]
fn browser_scenarios_pass_in_chromium() {
    let client = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../clients/typescript");
    let client = client.canonicalize().expect("clients/typescript");
    assert!(
        client.join("node_modules/playwright-core").is_dir() && client.join("dist/index.js").is_file(),
        "clients/typescript is not installed and built: run `npm ci && npm run build` there (infra/dev/test.sh does)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install chromium (infra/dev/test.sh does)"
    );
    let prefix = unique_prefix("browser");
    let cfg = config_file(
        &prefix,
        &format!(
            r#"
[server]
demo_dir = "{}"

[auth]
hs256_secret = "{SECRET}"
api_key = "{API_KEY}"
leeway_secs = 0

{OPEN_CHAT}
presence = "anonymous"
join_leave = true
ephemeral = true

[[namespace]]
name = "room"
partitions = 1
"#,
            client.display()
        ),
    );
    let s = Server::start(
        &prefix,
        &[
            "--config",
            cfg.to_str().expect("path"),
            "--publish-rate",
            "0",
        ],
    );
    let shot = std::env::temp_dir().join(format!("herald-demo-{prefix}.png"));
    let out = Command::new("node")
        .arg(client.join("browser/run.mjs"))
        .env("HERALD_URL", &s.http)
        .env("HERALD_SECRET", SECRET)
        .env("HERALD_API_KEY", API_KEY)
        .env("CHROMIUM", &chromium)
        .env("HERALD_SCREENSHOT", &shot)
        .current_dir(&client)
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "browser scenarios failed:\n{stdout}");
    assert!(stdout.contains("all browser scenarios passed"));
    eprintln!("demo screenshot: {}", shot.display());
}
