//! `subscribe`, `unsubscribe` and `ack`: a connection's subscriptions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use herald_hub::{HubError, Outbound};
use herald_proto::{codes, Position, ServerFrame, Since};
use tokio::task::JoinHandle;
use tracing::debug;

use super::{error_frame, Conn};
use crate::auth::Capability;

pub(super) struct Subscription {
    topic: String,
    /// Acks are stored as the client's durable cursor.
    durable: bool,
    /// The subscribe task while it is still catching up.
    task: Option<JoinHandle<()>>,
    /// The highest `seq` an ack may name: the last message written to the
    /// client on this subscription, or the position it resumed from.
    ackable: i64,
    /// Set by the subscribe task, before it tells the client, when the
    /// subscription failed: the hub registered nothing and the connection
    /// forgets it the next time it looks (a flag per subscription: a channel
    /// per connection would cost every idle connection ~1.3 KB).
    flags: Arc<SubFlags>,
}

/// Set by one side, read by the other, of a subscription's task.
#[derive(Default)]
pub(super) struct SubFlags {
    failed: AtomicBool,
    /// Set before the hub is told to unsubscribe: the task must not
    /// register after that.
    cancelled: AtomicBool,
}

impl Subscription {
    pub(super) fn delivered(&mut self, seq: i64) {
        self.ackable = self.ackable.max(seq);
    }

    /// Stops the subscribe task: before the hub is told to unsubscribe.
    fn cancel(&self) {
        self.flags.cancelled.store(true, Ordering::Release);
        if let Some(t) = &self.task {
            t.abort();
        }
    }

    fn failed(&self) -> bool {
        self.flags.failed.load(Ordering::Acquire)
    }
}

impl Conn {
    pub(super) fn subscribe(&mut self, name: String, since: Option<Since>, durable: bool) {
        let (channel, topic) = match self.resolve(&name, Capability::Subscribe) {
            Ok(x) => x,
            Err((code, reason)) => return self.reply(error_frame(code, reason, Some(&name))),
        };
        self.subs.retain(|_, s| !s.failed());
        if self.subs.contains_key(&name) {
            return self.reply(error_frame(
                codes::ALREADY_SUBSCRIBED,
                "already subscribed to this channel",
                Some(&name),
            ));
        }
        if self.subs.len() >= self.ctx.cfg.max_subscriptions {
            return self.reply(error_frame(
                codes::TOO_MANY_SUBSCRIPTIONS,
                format!(
                    "at most {} subscriptions per connection",
                    self.ctx.cfg.max_subscriptions
                ),
                Some(&name),
            ));
        }
        // A namespace may make every subscription of an identified client
        // durable; asking for it explicitly still needs an identity.
        let ns_durable = self
            .ctx
            .namespaces
            .get(channel.namespace())
            .is_some_and(|n| n.durable);
        let durable = durable || (ns_durable && self.client_id.is_some());
        let client = match (durable, &self.client_id) {
            (false, _) => None,
            (true, Some(c)) => Some(c.clone()),
            (true, None) => {
                return self.reply(error_frame(
                    codes::IDENTITY_REQUIRED,
                    "durable subscriptions and since \"cursor\" need a client id: connect to /ws?client_id=...",
                    Some(&name),
                ))
            }
        };
        // A resume may re-ack its own position; beyond it, only what it gets.
        let ackable = match &since {
            Some(Since::Position(p)) => p.seq.max(-1),
            _ => -1,
        };
        let ctx = self.ctx.clone();
        let catchups = self.catchups.clone();
        let outbox = self.outbox.clone();
        let flags = Arc::new(SubFlags::default());
        let task_flags = flags.clone();
        let t = topic.clone();
        let conn = self.id;
        let task = tokio::spawn(async move {
            // A resume reads the log until it is live: a few per connection
            // at once (a subscription from now reads nothing).
            let _catchup = match since {
                Some(_) => catchups.acquire_owned().await.ok(),
                None => None,
            };
            let since = match (since, &client) {
                (Some(Since::Position(p)), _) => Ok(Some(p)),
                (Some(Since::Cursor), Some(client)) => async {
                    // The node's share for cursor lookups (see `ReadBudget`).
                    let _node = ctx.reads.lookups.acquire().await;
                    ctx.cursors.lookup(client, channel.as_str()).await
                }
                .await
                .map(|c| {
                    c.map(|c| Position {
                        seq: c.seq,
                        epoch: c.epoch,
                    })
                })
                .map_err(HubError::from),
                (_, _) => Ok(None),
            };
            let res = match since {
                Ok(since) => {
                    ctx.hub
                        .subscribe_until(
                            &outbox,
                            &t,
                            channel.as_str(),
                            since.as_ref(),
                            &task_flags.cancelled,
                        )
                        .await
                }
                Err(e) => Err(e),
            };
            match res {
                Ok(out) => {
                    debug!(conn, channel = %channel, recovered = out.recovered, caught_up = out.caught_up, "Subscribed");
                }
                // The connection is being cut (4008) or is gone.
                Err(HubError::SlowConsumer) | Err(HubError::Closed) | Err(HubError::Gap { .. }) => {
                }
                Err(e) => {
                    tracing::warn!(conn, channel = %channel, %e, "Subscribe failed");
                    // The hub registered nothing: the connection forgets the
                    // subscription (flagged before the client hears of it,
                    // so its retry is not refused as already subscribed).
                    task_flags.failed.store(true, Ordering::Release);
                    let _ = outbox.try_push(error_frame(
                        codes::UNAVAILABLE,
                        format!("subscribe failed: {e}; retry"),
                        Some(channel.as_str()),
                    ));
                }
            }
        });
        self.subs.insert(
            name,
            Subscription {
                topic,
                durable,
                task: Some(task),
                ackable,
                flags,
            },
        );
    }

    pub(super) fn unsubscribe(&mut self, name: String) {
        match self.subs.remove(&name) {
            Some(sub) if !sub.failed() => {
                sub.cancel();
                self.ctx.hub.unsubscribe(&self.outbox, &sub.topic, &name);
                self.reply(Outbound::Frame(
                    ServerFrame::Unsubscribed { channel: name }.to_json(),
                ));
            }
            _ => self.reply(error_frame(
                codes::NOT_SUBSCRIBED,
                "not subscribed to this channel",
                Some(&name),
            )),
        }
    }

    /// Ends a subscription on the server's initiative (admin `unsubscribe`):
    /// the client hears `unsubscribed`; nothing when not subscribed.
    pub(super) fn server_unsubscribe(&mut self, name: String) {
        if self.subs.contains_key(&name) {
            metrics::counter!("herald_edge_server_unsubscribes_total").increment(1);
            self.unsubscribe(name);
        }
    }

    pub(super) fn ack(&mut self, channel: String, seq: i64) {
        if self.subs.get(&channel).is_some_and(Subscription::failed) {
            self.subs.remove(&channel);
        }
        let Some(sub) = self.subs.get(&channel) else {
            return self.reply(error_frame(
                codes::NOT_SUBSCRIBED,
                "ack for a channel this connection does not subscribe to",
                Some(&channel),
            ));
        };
        metrics::counter!("herald_edge_client_acks_total").increment(1);
        if seq > sub.ackable {
            metrics::counter!("herald_cursor_acks_refused_total").increment(1);
            let reason = format!(
                "ack of seq {seq} is beyond the last message delivered on this subscription ({})",
                sub.ackable
            );
            return self.reply(error_frame(codes::BAD_FRAME, reason, Some(&channel)));
        }
        if !sub.durable {
            return;
        }
        // A durable subscription always has a client id (checked at subscribe).
        let (Some(client), Ok(epoch)) = (&self.client_id, self.ctx.hub.epoch(&sub.topic)) else {
            return;
        };
        if self.ctx.cursors.ack(client, &channel, seq, &epoch) {
            metrics::counter!("herald_cursor_acks_total").increment(1);
            // Records of the partition behind this client's cursor (an upper
            // bound on its unacked messages of the channel).
            if let Some(tail) = self.ctx.hub.tail_seq(&sub.topic, &channel) {
                metrics::histogram!("herald_cursor_lag_records").record((tail - seq).max(0) as f64);
            }
        }
    }

    /// Ends every subscription (the connection is closing).
    pub(super) fn unsubscribe_all(&mut self) {
        for (channel, sub) in self.subs.drain() {
            sub.cancel();
            self.ctx.hub.unsubscribe(&self.outbox, &sub.topic, &channel);
        }
    }
}
