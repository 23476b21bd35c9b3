//! `publish`: the connection's own limits (size, rate, in-flight permits),
//! then the node's publish pipeline ([`herald_hub::publish`]). Publishes
//! are started in the order the client sent them; their answers are
//! polled by the connection's loop ([`next_answer`]) and go out through
//! the outbound queue.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};

use herald_hub::publish::refused;
use herald_hub::{Outbound, PublishOutcome, PublishRequest};
use herald_proto::{codes, Envelope, ServerFrame, Tags};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{Conn, Limiter};
use crate::auth::Capability;
use crate::hooks::{Hook, Verdict};

impl Conn {
    pub(super) async fn publish(
        &mut self,
        name: String,
        id: Uuid,
        data: Box<RawValue>,
        retry: bool,
        tags: Option<Tags>,
        ephemeral: bool,
    ) {
        let started = Instant::now();
        let (channel, topic) = match self.resolve(&name, Capability::Publish) {
            Ok(x) => x,
            Err((code, reason)) => return self.reply(nack(id, &name, code, reason, None)),
        };
        let ns = self.ctx.namespaces.get(channel.namespace());
        if ephemeral && !ns.is_some_and(|n| n.ephemeral) {
            let reason = format!(
                "namespace `{}` does not take ephemeral messages (its `ephemeral` option is off)",
                channel.namespace()
            );
            return self.reply(nack(id, &name, codes::BAD_FRAME, reason, None));
        }
        let max_bytes = ns
            .and_then(|n| n.max_message_bytes)
            .unwrap_or(self.ctx.cfg.limits.max_message_bytes);
        if data.get().len() > max_bytes {
            let reason = format!(
                "data is {} bytes; the limit is {max_bytes}",
                data.get().len()
            );
            return self.reply(nack(id, &name, codes::TOO_LARGE, reason, None));
        }
        // A namespace with its own rate has its own bucket per connection.
        let (limiter, rate) = match ns.and_then(|n| n.publish_rate) {
            Some(rate) => {
                let l = self
                    .ns_limiters
                    .entry(channel.namespace().to_owned())
                    .or_insert_with(|| {
                        let r =
                            std::num::NonZeroU32::new(rate).unwrap_or(std::num::NonZeroU32::MIN);
                        governor::RateLimiter::direct(governor::Quota::per_second(r))
                    });
                (Some(&*l as &Limiter), rate)
            }
            None => (self.limiter.as_ref(), self.ctx.cfg.limits.publish_rate),
        };
        if let Some(limiter) = limiter {
            if let Err(not_until) = limiter.check() {
                use governor::clock::{Clock, DefaultClock};
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let reason = format!("more than {rate} publishes per second on this connection");
                let after = Some(wait.as_millis() as u64 + 1);
                return self.reply(nack(id, &name, codes::RATE_LIMITED, reason, after));
            }
        }
        if self.ctx.shutdown.is_draining() {
            let reason = "server is shutting down; reconnect and retry with the same id";
            return self.reply(nack(id, &name, codes::SHUTTING_DOWN, reason, None));
        }
        // The application's publish hook, awaited here so that publishes
        // still start in the order the client sent them.
        let data = if self.ctx.hooks.has(Hook::Publish) {
            let body = serde_json::json!({
                "channel": &name,
                "id": id,
                "sub": self.identity.as_ref().map(|i| &i.sub),
                "client": self.client_id.as_deref(),
                "data": serde_json::from_str::<serde_json::Value>(data.get()).unwrap_or_default(),
            });
            let headers = self.hook_headers.clone().unwrap_or_else(|| Arc::from([]));
            match self.ctx.hooks.call(Hook::Publish, &body, &headers).await {
                Some(Verdict::Refuse { code, reason }) => {
                    return self.reply(nack(id, &name, code, reason, None))
                }
                Some(Verdict::Allow(answer)) => match answer.data {
                    Some(d) if d.get().len() > max_bytes => {
                        let reason = format!(
                            "the application's publish hook answered {} bytes; the limit is {max_bytes}",
                            d.get().len()
                        );
                        return self.reply(nack(id, &name, codes::TOO_LARGE, reason, None));
                    }
                    Some(d) => d,
                    None => data,
                },
                None => data,
            }
        } else {
            data
        };
        let partition = match self.ctx.hub.partition_of(&topic, channel.as_str()) {
            Ok(p) => p,
            Err(e) => return self.reply(nack(id, &name, codes::INTERNAL, e.to_string(), None)),
        };
        if ephemeral {
            // Fanned out through Kafka, not kept: no dedup, no permit, no
            // answer unless refused.
            let mut env = Envelope::new(id, name, Some(self.publisher_name()), data);
            env.tags = tags;
            let eph = self
                .ctx
                .log
                .config()
                .ephemeral_topic_for(channel.namespace());
            let outcome = match self.ctx.log.append_ephemeral(&eph, partition, &env) {
                Ok(()) => "sent",
                Err(e) => {
                    let reason = format!("the ephemeral message was not sent: {e}");
                    self.reply(nack(id, &env.channel, codes::UNAVAILABLE, reason, None));
                    "refused"
                }
            };
            metrics::counter!("herald_ephemeral_publishes_total", "outcome" => outcome)
                .increment(1);
            return;
        }
        // Bounded in-flight publishes per connection: waiting here stops
        // reading from this client, which is the backpressure it gets. The
        // answers are what frees permits, so they are polled meanwhile.
        let permits = self.publish_permits();
        let permit = loop {
            tokio::select! {
                biased;
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => break p,
                    Err(_) => return,
                },
                answer = next_answer(&mut self.answers) => self.reply(answer),
            }
        };
        let publisher = self.publisher_name();
        let answer = self.ctx.publisher.start(
            PublishRequest {
                topic,
                partition,
                channel: name,
                id,
                data,
                publisher: Some(publisher),
                retry,
                replayed: None,
                tags,
                started,
            },
            permit,
        );
        let channel = channel.as_str().to_owned();
        self.answers
            .get_or_insert_with(Default::default)
            .push(Box::pin(
                async move { answer_frame(id, channel, answer.await) },
            ));
    }
}

impl Conn {
    /// Who publishes, as the envelope says: the token's `sub`, or
    /// `conn:{id}` on an anonymous connection.
    fn publisher_name(&self) -> Arc<str> {
        match &self.identity {
            Some(who) => who.sub.clone(),
            None => (self.anonymous)
                .get_or_init(|| Arc::from(format!("conn:{}", self.id)))
                .clone(),
        }
    }
}

/// Publishes in flight on a connection: each resolves to its answer.
pub(super) type Answers = FuturesUnordered<BoxFuture<'static, Outbound>>;

/// The next answer of a publish in flight; never, while there is none.
pub(super) async fn next_answer(answers: &mut Option<Box<Answers>>) -> Outbound {
    match answers {
        Some(a) if !a.is_empty() => match a.next().await {
            Some(answer) => answer,
            None => std::future::pending().await,
        },
        _ => std::future::pending().await,
    }
}

/// A connection ends with publishes in flight: they still settle (their
/// dedup claims and permits), in a task of their own; nobody hears the
/// answers.
pub(super) fn settle_orphans(answers: Option<Box<Answers>>) {
    if let Some(mut a) = answers.filter(|a| !a.is_empty()) {
        tokio::spawn(async move { while a.next().await.is_some() {} });
    }
}

/// The `publish_ack` or `publish_nack` of a pipeline outcome (counted there).
fn answer_frame(id: Uuid, channel: String, outcome: PublishOutcome) -> Outbound {
    let frame = match outcome {
        PublishOutcome::Acked { seq, duplicate } => ServerFrame::PublishAck {
            id,
            channel,
            seq,
            duplicate,
        },
        PublishOutcome::Nacked { code, reason } => ServerFrame::PublishNack {
            id,
            channel,
            code,
            reason,
            retry_after_ms: None,
        },
    };
    Outbound::Frame(frame.to_json())
}

/// A publish refused before the pipeline, counted like the pipeline's nacks.
fn nack(
    id: Uuid,
    channel: &str,
    code: &'static str,
    reason: impl Into<String>,
    retry_after_ms: Option<u64>,
) -> Outbound {
    refused(code);
    Outbound::Frame(
        ServerFrame::PublishNack {
            id,
            channel: channel.to_owned(),
            code,
            reason: reason.into(),
            retry_after_ms,
        }
        .to_json(),
    )
}
