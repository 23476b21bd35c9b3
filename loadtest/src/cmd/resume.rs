//! `resume`: P4, a resume against a raw Kafka read.

use std::path::PathBuf;

use clap::Args;

/// P4: a client N messages behind resumes through herald, against
/// reading the same N records straight from Kafka.
#[derive(Args)]
pub struct ResumeArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Resume on this node (a cold one) instead of --url.
    #[arg(long)]
    pub resume_url: Option<String>,
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// herald's kafka.topic_prefix.
    #[arg(long, default_value = "herald.")]
    pub topic_prefix: String,
    #[arg(long, default_value_t = 10_000)]
    pub messages: usize,
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    #[arg(long, default_value_t = 10)]
    pub fetch_wait_max_ms: u32,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `resume`.
pub async fn resume(a: ResumeArgs) -> anyhow::Result<()> {
    let r = herald_loadtest::resume::run(herald_loadtest::resume::ResumeConfig {
        url: a.url,
        resume_url: a.resume_url,
        brokers: a.brokers,
        topic_prefix: a.topic_prefix,
        messages: a.messages,
        size: a.size,
        fetch_wait_max_ms: a.fetch_wait_max_ms,
    })
    .await?;
    println!(
        "resume of {} messages: herald {:.3} s, raw Kafka {:.3} s, ratio {}",
        r.messages, r.herald_secs, r.kafka_secs, r.ratio
    );
    if let Some(p) = a.json {
        std::fs::write(&p, serde_json::to_string_pretty(&r)?)?;
    }
    Ok(())
}
