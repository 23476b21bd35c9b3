//! `subscribe`, `unsubscribe` and `ack`: a connection's subscriptions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use herald_hub::{HubError, Interest, Outbound};
use herald_proto::{codes, Filter, Member, Position, Rewind, ServerFrame, Since};
use tokio::sync::Notify;
use tracing::debug;

use super::{error_frame, Conn};
use crate::auth::Capability;
use crate::hooks::{Hook, Verdict};

pub(super) struct Subscription {
    topic: String,
    /// Acks are stored as the client's durable cursor.
    durable: bool,
    /// The highest `seq` an ack may name: the last message written to the
    /// client on this subscription, or the position it resumed from.
    ackable: i64,
    /// Set by the subscribe task, before it tells the client, when the
    /// subscription failed: the hub registered nothing and the connection
    /// forgets it the next time it looks (a flag per subscription: a channel
    /// per connection would cost every idle connection ~1.3 KB).
    flags: Arc<SubFlags>,
    /// Made by the server (the personal channel), not asked for.
    auto: bool,
    /// The namespace sends join/leave events and its `presence` rule lets
    /// this connection see them.
    sees_presence: bool,
}

/// Set by one side, read by the other, of a subscription's task.
#[derive(Default)]
pub(super) struct SubFlags {
    failed: AtomicBool,
    /// Set before the hub is told to unsubscribe: the task must not
    /// register after that.
    cancelled: AtomicBool,
    /// Ends the subscribe task where it waits (a catch-up, a hook call).
    /// The task is not kept by a `JoinHandle`: a handle keeps the finished
    /// task's memory (~1.4 KB, sized for the whole subscribe future) for
    /// the subscription's life (docs/benchmarks.md, P3).
    stop: Notify,
    /// For a namespace with presence: whether the member was recorded.
    /// Under a lock so that the join is written before the leave.
    presence: Mutex<PresenceState>,
    /// Counted in the channel's occupancy (webhooks) from the subscribe
    /// on, before the client hears `subscribed`; uncounted once.
    occupying: AtomicBool,
}

#[derive(Default, Clone, Copy, PartialEq)]
enum PresenceState {
    /// Subscribing (or no presence).
    #[default]
    Pending,
    /// The join was written: the end of the subscription writes a leave.
    Joined,
    /// Ended before it joined.
    Ended,
}

impl SubFlags {
    /// Takes the subscription out of its channel's occupancy (once).
    fn stop_occupying(&self, ctx: &crate::ctx::Ctx, channel: &str) {
        if self.occupying.swap(false, Ordering::AcqRel) {
            crate::webhooks::occupancy::left(ctx, channel);
        }
    }

    /// After a successful subscribe: records the member unless the
    /// subscription already ended.
    fn join(&self, ctx: &crate::ctx::Ctx, channel: &str, member: Member) {
        let mut st = self.presence.lock().unwrap_or_else(|p| p.into_inner());
        if *st == PresenceState::Pending && !self.cancelled.load(Ordering::Acquire) {
            ctx.events.joined(ctx, channel, &member);
            if records_presence(ctx, channel) {
                ctx.presence.join(ctx, channel, member);
            }
            *st = PresenceState::Joined;
        }
    }
}

impl Subscription {
    pub(super) fn delivered(&mut self, seq: i64) {
        self.ackable = self.ackable.max(seq);
    }

    /// Stops the subscribe task: before the hub is told to unsubscribe.
    /// Writes the presence leave (and the webhook `leave`) when the member
    /// had joined; `member` makes it.
    fn cancel(&self, ctx: &crate::ctx::Ctx, channel: &str, member: impl FnOnce() -> Member) {
        self.flags.cancelled.store(true, Ordering::Release);
        self.flags.stop_occupying(ctx, channel);
        // A stored permit when the task is not waiting yet: it stops at
        // its first wait.
        self.flags.stop.notify_one();
        let mut st = self
            .flags
            .presence
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *st == PresenceState::Joined {
            let member = member();
            ctx.events.left(ctx, channel, &member);
            if records_presence(ctx, channel) {
                ctx.presence.leave(ctx, channel, &member.conn);
            }
        }
        *st = PresenceState::Ended;
    }

    pub(super) fn is_auto(&self) -> bool {
        self.auto
    }

    pub(super) fn sees_presence(&self) -> bool {
        self.sees_presence
    }

    fn failed(&self) -> bool {
        self.flags.failed.load(Ordering::Acquire)
    }
}

impl Conn {
    /// A client's subscribe: messages of `name` after `since` that pass
    /// `filter`.
    pub(super) fn subscribe(
        &mut self,
        name: String,
        since: Option<Since>,
        durable: bool,
        filter: Option<Filter>,
    ) {
        self.subscribe_as(name, since, durable, false, filter);
    }

    /// Subscribes the connection to its personal channel in every namespace
    /// with `personal = true` (`ns:{sub}`), once it has an identity.
    pub(super) fn subscribe_personal(&mut self) {
        let Some(sub) = self.identity.as_ref().map(|i| i.sub.clone()) else {
            return;
        };
        let names: Vec<String> = self
            .ctx
            .namespaces
            .iter()
            .filter(|(_, ns)| ns.personal)
            .map(|(ns, _)| format!("{ns}:{sub}"))
            .collect();
        for name in names {
            if !self.subs.contains_key(&name) {
                metrics::counter!("herald_edge_personal_subscriptions_total").increment(1);
                self.subscribe_as(name, None, false, true, None);
            }
        }
    }

    /// `auto`: the server's own subscription to the personal channel, made
    /// without the namespace's subscribe rule; the client may replace it by
    /// subscribing itself (to resume with `since`), under the rule.
    fn subscribe_as(
        &mut self,
        name: String,
        since: Option<Since>,
        durable: bool,
        auto: bool,
        filter: Option<Filter>,
    ) {
        let cap = Capability::Subscribe;
        let resolved = if auto {
            self.ctx.resolve(&name).map(|(c, _, t)| (c, t.to_owned()))
        } else {
            self.resolve(&name, cap)
        };
        let (channel, topic) = match resolved {
            Ok(x) => x,
            Err((code, reason)) => return self.reply(error_frame(code, reason, Some(&name))),
        };
        self.subs.retain(|_, s| !s.failed());
        if !auto && self.subs.get(&name).is_some_and(|s| s.auto) {
            // The client takes over its personal channel (say, to resume
            // it): the server's subscription ends without an answer.
            if let Some(sub) = self.subs.remove(&name) {
                sub.cancel(&self.ctx, &name, || self.member());
                self.ctx.hub.unsubscribe(&self.outbox, &sub.topic, &name);
            }
        }
        if self.subs.contains_key(&name) {
            return self.reply(error_frame(
                codes::ALREADY_SUBSCRIBED,
                "already subscribed to this channel",
                Some(&name),
            ));
        }
        if self.subs.len() >= self.ctx.cfg.limits.max_subscriptions {
            return self.reply(error_frame(
                codes::TOO_MANY_SUBSCRIPTIONS,
                format!(
                    "at most {} subscriptions per connection",
                    self.ctx.cfg.limits.max_subscriptions
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
        if let Some(Since::Rewind(Rewind::Last(n))) = since {
            let max = self.ctx.cfg.history_max_limit;
            if n as usize > max {
                return self.reply(error_frame(
                    codes::BAD_FRAME,
                    format!("`rewind` is at most {max}"),
                    Some(&name),
                ));
            }
        }
        // A resume may re-ack its own position; beyond it, only what it gets.
        let ackable = match &since {
            Some(Since::Position(p)) => p.seq.max(-1),
            _ => -1,
        };
        let ctx = self.ctx.clone();
        let ns = ctx.namespaces.get(channel.namespace());
        let member = (ns.is_some_and(|n| n.records_presence())
            || ctx.events.watches_subscriptions(channel.as_str()))
        .then(|| self.member());
        // Each subscribe here writes a join and a leave to Kafka (presence,
        // webhook events) and sends them to every member: limited per
        // connection.
        if member.is_some() && !self.within_churn_budget() {
            return self.reply(error_frame(
                codes::RATE_LIMITED,
                format!(
                    "more than {} subscribes to channels with presence per minute on this connection",
                    self.ctx.cfg.limits.presence_churn_per_minute
                ),
                Some(&name),
            ));
        }
        let sees_presence = ns.is_some_and(|n| {
            n.join_leave
                && crate::auth::permits(
                    n.presence,
                    self.identity.as_ref(),
                    &channel,
                    Capability::Presence,
                )
        });
        // The application's subscribe hook (not for the server's own
        // personal subscription), called from the task.
        let hook = (!auto && self.ctx.hooks.has(Hook::Subscribe)).then(|| {
            let body = serde_json::json!({
                "channel": &name,
                "sub": self.identity.as_ref().map(|i| &i.sub),
                "client": self.client_id.as_deref(),
                "conn": member_conn(&self.ctx, self.id),
                "resume": since.is_some(),
            });
            let headers = self.hook_headers.clone().unwrap_or_else(|| Arc::from([]));
            (body, headers)
        });
        let ctx = self.ctx.clone();
        let want = Interest {
            channel: Arc::from(channel.as_str()),
            filter: filter.map(Arc::new),
            conflate: ns.is_some_and(|n| n.conflate),
        };
        let catchups = since.is_some().then(|| self.catchups());
        let outbox = self.outbox.clone();
        let flags = Arc::new(SubFlags::default());
        let occupancy = crate::webhooks::occupancy::joined(&ctx, channel.as_str());
        if occupancy.is_some() {
            flags.occupying.store(true, Ordering::Release);
        }
        let task_flags = flags.clone();
        let t = topic.clone();
        let conn = self.id;
        let stop_flags = flags.clone();
        let work = async move {
            if let Some((body, headers)) = hook {
                if let Some(Verdict::Refuse { code, reason }) =
                    ctx.hooks.call(Hook::Subscribe, &body, &headers).await
                {
                    // Nothing registered: forgotten like a failed subscribe.
                    task_flags.stop_occupying(&ctx, channel.as_str());
                    task_flags.failed.store(true, Ordering::Release);
                    let _ = outbox.try_push(error_frame(code, reason, Some(channel.as_str())));
                    return;
                }
            }
            // The channel's occupancy record (webhooks) is in Kafka before
            // the client hears `subscribed`.
            if let Some(mut stored) = occupancy {
                let within = ctx.log.config().publish_timeout;
                let _ = tokio::time::timeout(within, stored.wait_for(|s| *s)).await;
            }
            // A resume reads the log until it is live: a few per connection
            // at once (a subscription from now reads nothing).
            let _catchup = match catchups {
                Some(c) => c.acquire_owned().await.ok(),
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
                (Some(Since::Rewind(r)), _) => {
                    super::history::rewind_position(&ctx, &t, channel.as_str(), r)
                        .await
                        .map(Some)
                }
                (_, _) => Ok(None),
            };
            let res = match since {
                Ok(since) => {
                    ctx.hub
                        .subscribe_until(
                            &outbox,
                            &t,
                            &want,
                            since.as_ref(),
                            auto,
                            &task_flags.cancelled,
                        )
                        .await
                }
                Err(e) => Err(e),
            };
            match res {
                Ok(out) => {
                    debug!(conn, channel = %channel, recovered = out.recovered, caught_up = out.caught_up, "Subscribed");
                    if let Some(member) = member {
                        task_flags.join(&ctx, channel.as_str(), member);
                    }
                }
                // The connection is being cut (4008) or is gone.
                Err(HubError::SlowConsumer) | Err(HubError::Closed) | Err(HubError::Gap { .. }) => {
                }
                Err(e) => {
                    tracing::warn!(conn, channel = %channel, %e, "Subscribe failed");
                    // The hub registered nothing: the connection forgets the
                    // subscription (flagged before the client hears of it,
                    // so its retry is not refused as already subscribed).
                    task_flags.stop_occupying(&ctx, channel.as_str());
                    task_flags.failed.store(true, Ordering::Release);
                    let _ = outbox.try_push(error_frame(
                        codes::UNAVAILABLE,
                        format!("subscribe failed: {e}; retry"),
                        Some(channel.as_str()),
                    ));
                }
            }
        };
        tokio::spawn(async move {
            tokio::select! {
                biased;
                () = stop_flags.stop.notified() => {}
                () = work => {}
            }
        });
        self.subs.insert(
            name,
            Subscription {
                topic,
                durable,
                ackable,
                flags,
                auto,
                sees_presence,
            },
        );
    }

    pub(super) fn unsubscribe(&mut self, name: String) {
        match self.subs.remove(&name) {
            Some(sub) if !sub.failed() => {
                sub.cancel(&self.ctx, &name, || self.member());
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

    /// This connection as a member of a channel's presence.
    fn member(&self) -> Member {
        let id = self.identity.as_ref();
        Member {
            conn: member_conn(&self.ctx, self.id),
            user: id.map(|i| i.sub.to_string()),
            client: self
                .client_id
                .as_deref()
                .map(|c| crate::presence::shown_client(c, id.is_some())),
            name: self.name.as_deref().map(str::to_owned),
            info: id
                .and_then(|i| i.info.as_deref())
                .and_then(|i| serde_json::value::RawValue::from_string(i.to_owned()).ok()),
        }
    }

    /// Answers `presence` / `presence_stats`.
    pub(super) fn presence(&mut self, id: Option<String>, name: String, stats: bool) {
        let refuse = |code, reason: String| {
            Outbound::Frame(
                ServerFrame::Error {
                    code,
                    reason,
                    id: id.clone(),
                    channel: Some(name.clone()),
                }
                .to_json(),
            )
        };
        let channel = match self.resolve(&name, Capability::Presence) {
            Ok((c, _)) => c,
            Err((code, reason)) => {
                metrics::counter!("herald_edge_errors_total", "code" => code).increment(1);
                return self.reply(refuse(code, reason));
            }
        };
        // A namespace's `presence` rule other than `nobody` records it.
        let ctx = &self.ctx;
        let frame = if stats {
            let (clients, users) = ctx.presence.stats(ctx, channel.as_str());
            ServerFrame::PresenceStats {
                id,
                channel: name,
                clients,
                users,
            }
        } else {
            let max = ctx.cfg.limits.presence_max_members;
            let (members, truncated) = ctx.presence.members(ctx, channel.as_str(), max);
            ServerFrame::Presence {
                id,
                members,
                channel: name,
                truncated,
            }
        };
        self.reply(Outbound::Frame(frame.to_json()));
    }

    /// Counts one subscribe to a channel with presence against the
    /// connection's `presence_churn_per_minute`.
    fn within_churn_budget(&mut self) -> bool {
        let Some(n) = std::num::NonZeroU32::new(self.ctx.cfg.limits.presence_churn_per_minute)
        else {
            return true;
        };
        let limiter = self.churn_limiter.get_or_insert_with(|| {
            Box::new(governor::RateLimiter::direct(governor::Quota::per_minute(
                n,
            )))
        });
        if limiter.check().is_ok() {
            return true;
        }
        metrics::counter!("herald_presence_churn_refused_total").increment(1);
        false
    }

    /// Ends every subscription (the connection is closing).
    pub(super) fn unsubscribe_all(&mut self) {
        let subs = std::mem::take(&mut self.subs);
        for (channel, sub) in subs {
            sub.cancel(&self.ctx, &channel, || self.member());
            self.ctx.hub.unsubscribe(&self.outbox, &sub.topic, &channel);
        }
    }
}

/// Whether `channel`'s namespace records presence.
fn records_presence(ctx: &crate::ctx::Ctx, channel: &str) -> bool {
    let ns = channel.split(':').next().unwrap_or_default();
    ctx.namespaces.get(ns).is_some_and(|n| n.records_presence())
}

/// A connection's name in presence: unique in the cluster.
fn member_conn(ctx: &crate::ctx::Ctx, conn: u64) -> String {
    format!("{}/{conn}", ctx.cluster.node)
}
