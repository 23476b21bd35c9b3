//! Opens N idle WebSocket connections and holds them until Ctrl-C: for
//! measuring the server's memory per idle connection. With a channel count
//! C, connection i subscribes to `chat:idle-{i % C}`, then one message is
//! published to every channel and each connection waits for its own, so the
//! connections held are subscribed ones that have delivered a message.
//!
//! cargo run -p herald-client --example idle -- ws://127.0.0.1:8080/ws 5000 [C]

use std::time::Duration;

use herald_client::{Connection, Frame};
use uuid::Uuid;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .first()
        .map_or("ws://127.0.0.1:8080/ws", String::as_str);
    let n: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let channels: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = Connection::connect(url).await?;
        if channels > 0 {
            c.subscribe(&format!("chat:idle-{}", i % channels), None)
                .await?;
        }
        conns.push(c);
        if (i + 1) % 1000 == 0 {
            eprintln!("{} connections", i + 1);
        }
    }
    if channels > 0 {
        let mut publisher = Connection::connect(url).await?;
        for ch in 0..channels {
            let data = serde_json::json!({ "hello": ch });
            publisher
                .publish(&format!("chat:idle-{ch}"), Uuid::new_v4(), &data)
                .await?;
        }
        for c in &mut conns {
            loop {
                if let Frame::Message(_) = c.next_frame_within(Duration::from_secs(30)).await? {
                    break;
                }
            }
        }
        println!("open {n} subscribed to {channels} channels, one message delivered to each");
    } else {
        println!("open {n}");
    }
    tokio::time::sleep(Duration::from_secs(3600)).await;
    drop(conns);
    Ok(())
}
