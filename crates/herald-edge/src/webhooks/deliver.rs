//! Delivering events to one endpoint: this node's member of the endpoint's
//! consumer group reads the events topic (and the topics of the namespaces
//! whose messages it wants), POSTs each wanted event, signed, with at most
//! `max_in_flight` POSTs at once, tries again with jittered exponential
//! backoff, and after the last try writes the event to the dead-letter
//! topic. A record is marked handled (its offset may be committed) only
//! once it was delivered, or dead-lettered, or is not for this endpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_log::{GroupRead, Record};
use herald_proto::envelope::EnvelopeRef;
use http_body_util::Full;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::{Endpoint, EventKind};
use crate::ctx::Ctx;

/// Largest answer body read from an endpoint (it is not used).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The fields of a node's event the dispatcher looks at.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    id: Option<&'a str>,
    #[serde(default)]
    channel: Option<&'a str>,
}

/// An event ready to POST.
struct Outgoing {
    id: String,
    kind: EventKind,
    body: Bytes,
}

/// Starts this node's member of every endpoint's group.
pub fn start(ctx: &Arc<Ctx>, dead_topic: String) {
    for ep in ctx.events.endpoints() {
        let ep = Arc::new(ep.clone());
        let mut topics = vec![ctx.events.topic().to_owned()];
        if ep.events.contains(&EventKind::Message) {
            for ns in &ep.namespaces {
                if let Some(t) = ctx.topics.get(ns) {
                    topics.push(t.clone());
                }
            }
        }
        let group = format!("{}webhooks.{}", ctx.log.config().topic_prefix, ep.name);
        let reader: Arc<dyn GroupRead> = match ctx.log.group_reader(&group, &topics) {
            Ok(r) => Arc::from(r),
            Err(e) => {
                warn!(endpoint = %ep.name, %e, "Webhooks for this endpoint are not delivered");
                continue;
            }
        };
        info!(endpoint = %ep.name, url = %ep.url, group, "Delivering webhooks");
        tokio::spawn(run(ctx.clone(), ep, reader, dead_topic.clone()));
    }
}

async fn run(ctx: Arc<Ctx>, ep: Arc<Endpoint>, reader: Arc<dyn GroupRead>, dead_topic: String) {
    let client = crate::http_client::client(ep.timeout);
    let permits = Arc::new(Semaphore::new(ep.max_in_flight.max(1)));
    let name = ep.name.clone();
    let mut shutdown = ctx.shutdown.signal();
    let mut lag_every = tokio::time::interval(Duration::from_secs(5));
    loop {
        let r = tokio::select! {
            () = shutdown.closing() => break,
            _ = lag_every.tick() => {
                metrics::gauge!("herald_webhook_lag_events", "endpoint" => name.clone())
                    .set(reader.lag() as f64);
                continue;
            }
            r = reader.next() => r,
        };
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                warn!(endpoint = %name, %e, "Reading webhook events failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(out) = outgoing(&ctx, &ep, &r) else {
            reader.handled(&r.topic, r.partition, r.offset);
            continue;
        };
        let permit = tokio::select! {
            () = shutdown.closing() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (ctx, ep, reader, client, dead) = (
            ctx.clone(),
            ep.clone(),
            reader.clone(),
            client.clone(),
            dead_topic.clone(),
        );
        metrics::gauge!("herald_webhook_in_flight", "endpoint" => name.clone()).increment(1.0);
        tokio::spawn(async move {
            let done = deliver(&ctx, &ep, &client, &out, &dead).await;
            metrics::gauge!("herald_webhook_in_flight", "endpoint" => ep.name.clone())
                .decrement(1.0);
            if done {
                reader.handled(&r.topic, r.partition, r.offset);
            }
            drop(permit);
        });
    }
    debug!(endpoint = %name, "Webhook delivery stopped (shutdown)");
}

/// What `r` is for this endpoint, if it wants it.
fn outgoing(ctx: &Ctx, ep: &Endpoint, r: &Record) -> Option<Outgoing> {
    let value = r.value.as_deref()?;
    if *r.topic == *ctx.events.topic() {
        let head: Head<'_> = match serde_json::from_slice(value) {
            Ok(h) => h,
            Err(e) => {
                metrics::counter!("herald_webhook_event_errors_total", "type" => "decode")
                    .increment(1);
                debug!(%e, "Skipping an unreadable webhook event");
                return None;
            }
        };
        let kind = EventKind::parse(head.kind)?;
        if kind == EventKind::Message || !ep.wants(kind, head.channel) {
            return None;
        }
        return Some(Outgoing {
            id: head.id?.to_owned(),
            kind,
            body: Bytes::copy_from_slice(value),
        });
    }
    // A namespace topic's record: a message.
    let env = EnvelopeRef::decode(value, r.key.as_deref()).ok()?;
    if !ep.wants(EventKind::Message, Some(&env.channel)) {
        return None;
    }
    let epoch = ctx.hub.epoch(&r.topic).ok()?;
    let id = format!("message-{}", env.id);
    let message = env.message_json(r.offset, &epoch);
    let body = format!(
        r#"{{"id":{},"type":"message","time":{},"channel":{},"message":{}}}"#,
        serde_json::to_string(&id).ok()?,
        env.ts,
        serde_json::to_string(env.channel.as_ref()).ok()?,
        message
    );
    Some(Outgoing {
        id,
        kind: EventKind::Message,
        body: Bytes::from(body),
    })
}

/// Tries `out` until the endpoint takes it or the attempts run out (then a
/// dead letter). False when the node is shutting down first: the event is
/// left to the group's next reader.
async fn deliver(
    ctx: &Ctx,
    ep: &Endpoint,
    client: &crate::http_client::HttpClient,
    out: &Outgoing,
    dead_topic: &str,
) -> bool {
    let mut wait = ep.backoff;
    let mut why = String::new();
    for attempt in 1..=ep.attempts.max(1) {
        if ctx.shutdown.is_draining() {
            return false;
        }
        let started = Instant::now();
        let r = tokio::time::timeout(ep.timeout, post(ep, client, out)).await;
        metrics::histogram!("herald_webhook_duration_seconds", "endpoint" => ep.name.clone())
            .record(started.elapsed().as_secs_f64());
        why = match r {
            Ok(Ok(status)) if status.is_success() => {
                metrics::counter!("herald_webhook_deliveries_total",
                    "endpoint" => ep.name.clone(), "result" => "ok")
                .increment(1);
                return true;
            }
            Ok(Ok(status)) => format!("answered {status}"),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {:?}", ep.timeout),
        };
        metrics::counter!("herald_webhook_deliveries_total",
            "endpoint" => ep.name.clone(), "result" => "failed")
        .increment(1);
        debug!(endpoint = %ep.name, id = %out.id, attempt, %why, "Webhook delivery failed");
        if attempt < ep.attempts {
            // Jittered: between half the wait and the whole of it.
            let ms = wait.as_millis().max(2) as u64;
            let jittered = ms / 2 + (uuid::Uuid::new_v4().as_u128() % (ms / 2 + 1) as u128) as u64;
            tokio::time::sleep(Duration::from_millis(jittered)).await;
            wait = (wait * 2).min(ep.max_backoff);
        }
    }
    warn!(endpoint = %ep.name, id = %out.id, kind = out.kind.as_str(), %why,
        "Webhook event dead-lettered after its last attempt");
    dead_letter(ctx, ep, out, &why, dead_topic).await
}

/// One POST of `out`, signed.
async fn post(
    ep: &Endpoint,
    client: &crate::http_client::HttpClient,
    out: &Outgoing,
) -> Result<hyper::StatusCode, String> {
    let ts = crate::revocations::now_secs().to_string();
    let req = hyper::Request::post(ep.url.clone())
        .header("content-type", "application/json")
        .header("user-agent", "herald-webhooks")
        .header("webhook-id", &out.id)
        .header("webhook-timestamp", &ts)
        .header(
            "webhook-signature",
            sign(&ep.secret, &out.id, &ts, &out.body),
        )
        .body(Full::new(out.body.clone()))
        .map_err(|e| format!("building the request: {e}"))?;
    crate::http_client::send(client, req, MAX_ANSWER_BYTES)
        .await
        .map(|(status, _)| status)
}

/// The `webhook-signature` header (Standard Webhooks): `v1,` and the
/// base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
pub fn sign(key: &[u8], id: &str, ts: &str, body: &[u8]) -> String {
    use base64::Engine;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(ts.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

/// Writes the dead letter, trying until Kafka confirms it (an event is
/// never both undelivered and marked handled) or the node shuts down.
async fn dead_letter(ctx: &Ctx, ep: &Endpoint, out: &Outgoing, why: &str, topic: &str) -> bool {
    let event =
        serde_json::value::RawValue::from_string(String::from_utf8_lossy(&out.body).into_owned())
            .ok();
    let value = serde_json::json!({
        "endpoint": ep.name,
        "id": out.id,
        "type": out.kind.as_str(),
        "attempts": ep.attempts,
        "error": why,
        "time": herald_proto::envelope::now_ms(),
        "event": event,
    });
    let value = value.to_string();
    loop {
        let r = match ctx
            .log
            .append_record(topic, 0, ep.name.as_bytes(), value.as_bytes(), &[])
        {
            Ok(pending) => pending.await.map(|_| ()),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => {
                metrics::counter!("herald_webhook_dead_letters_total", "endpoint" => ep.name.clone())
                    .increment(1);
                return true;
            }
            Err(e) => {
                warn!(endpoint = %ep.name, %e, "Writing a webhook dead letter failed; retrying");
                if ctx.shutdown.is_draining() {
                    return false;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        let key = super::super::secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
