//! The herald nodes a chaos run or a soak starts, kills and restarts on
//! fixed ports, their namespaces, and the cluster script that faults
//! brokers.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A herald node the run starts, kills and restarts on a fixed port.
pub(crate) struct Node {
    pub(crate) port: u16,
    pub(crate) args: Vec<String>,
    pub(crate) bin: PathBuf,
    pub(crate) child: Option<Child>,
}

impl Node {
    pub(crate) fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// Starts the node and waits until it listens. A node that exits while
    /// starting (say, a freshly started cluster still loading past herald's
    /// request timeout) is started again, up to three times, as a process
    /// supervisor would; every start shares one 90 s deadline.
    pub(crate) fn start(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        for attempt in 1..=3 {
            match self.start_once(deadline)? {
                true => return Ok(()),
                false if attempt < 3 && Instant::now() < deadline => {
                    eprintln!(
                        "chaos: herald on port {} exited while starting (attempt {attempt}); starting it again",
                        self.port
                    );
                    std::thread::sleep(Duration::from_secs(2));
                }
                false => break,
            }
        }
        self.kill();
        bail!("herald on port {} did not start within 90 s", self.port);
    }

    /// One start: `Ok(true)` listening, `Ok(false)` exited or out of time.
    fn start_once(&mut self, deadline: Instant) -> anyhow::Result<bool> {
        let mut child = Command::new(&self.bin)
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.args)
            .env(
                "HERALD_LOG",
                std::env::var("HERALD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("herald listening on ") {
                    let _ = tx.send(());
                }
            }
        });
        self.child = Some(child);
        // Disconnected: stdout closed, the process is gone.
        let left = deadline.saturating_duration_since(Instant::now());
        if rx.recv_timeout(left).is_ok() {
            return Ok(true);
        }
        self.kill();
        Ok(false)
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn cluster(script: &PathBuf, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(script)
        .args(args)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} {args:?}: {}{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The nodes' namespaces: `chat` (the checked channels, 4 partitions) and
/// `room` (presence with join/leave events, for a soak's churn), open to
/// anonymous clients; written to a file named after the run's prefix.
pub(crate) fn namespaces_file(prefix: &str) -> anyhow::Result<String> {
    let path = std::env::temp_dir().join(format!("herald-chaos-{prefix}toml"));
    let open = r#"subscribe = "anonymous"
publish = "anonymous"
history = "anonymous"
"#;
    std::fs::write(
        &path,
        format!(
            "[[namespace]]\nname = \"chat\"\npartitions = 4\n{open}\n\
             [[namespace]]\nname = \"room\"\npartitions = 2\n{open}presence = \"anonymous\"\njoin_leave = true\n"
        ),
    )
    .context("writing the nodes' configuration")?;
    Ok(path.to_string_lossy().into_owned())
}
