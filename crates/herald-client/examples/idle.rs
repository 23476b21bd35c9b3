//! Opens N idle WebSocket connections and holds them until Ctrl-C: for
//! measuring the server's memory per idle connection.
//!
//! cargo run -p herald-client --example idle -- ws://127.0.0.1:8080/ws 5000

use std::time::Duration;

use herald_client::Connection;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(Connection::connect(&url).await?);
        if (i + 1) % 1000 == 0 {
            eprintln!("{} connections", i + 1);
        }
    }
    println!("open {n}");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    drop(conns);
    Ok(())
}
