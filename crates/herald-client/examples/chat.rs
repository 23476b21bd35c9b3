//! A terminal chat on one channel: lines you type are published, messages on
//! the channel are printed with their seq. Reconnects and resumes from the
//! last seq it printed, so nothing is missed or shown twice.
//!
//! cargo run -p herald-client --example chat -- ws://127.0.0.1:8080/ws chat:lobby

use std::time::Duration;

use herald_client::{ChannelCursor, Connection, Frame};
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let channel = args.next().unwrap_or_else(|| "chat:lobby".into());
    let mut cursor = ChannelCursor::default();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_done = false;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let mut conn = match Connection::connect(&url).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("connect {url}: {e}; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (pos, recovered) = conn.subscribe(&channel, cursor.since(&channel)).await?;
        cursor.on_subscribed(&channel, &pos, recovered);
        eprintln!(
            "subscribed to {channel} at seq {} (recovered: {recovered}); type to publish",
            pos.seq
        );
        loop {
            tokio::select! {
                line = lines.next_line(), if !stdin_done => {
                    let Some(line) = line? else {
                        // Input ended (e.g. piped): show what arrives for a
                        // moment longer, then stop.
                        stdin_done = true;
                        deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                        continue;
                    };
                    let id = Uuid::new_v4();
                    conn.send_publish(&channel, id, &serde_json::json!({ "text": line })).await?;
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                    return Ok(());
                }
                frame = conn.next_frame_within(Duration::from_secs(3600)) => match frame {
                    Ok(Frame::Message(m)) => {
                        if cursor.accept(&m) {
                            println!("[{}] {}", m.seq, m.data);
                        }
                    }
                    Ok(Frame::PublishNack { code, reason, .. }) => eprintln!("not published: {code}: {reason}"),
                    Ok(Frame::Error { code, reason, .. }) => eprintln!("error: {code}: {reason}"),
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("disconnected: {e}; resuming");
                        break;
                    }
                },
            }
        }
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}
