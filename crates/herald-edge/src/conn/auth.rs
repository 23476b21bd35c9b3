//! `auth` and `refresh`, and the access check every channel frame makes.

use herald_hub::Outbound;
use herald_proto::{codes, Channel, ServerFrame};

use super::{error_frame, Conn};
use crate::auth::{authorize, Capability};
use crate::ctx::Refusal;

impl Conn {
    /// True when a revocation covers this connection's token.
    pub(super) fn is_revoked(&self) -> bool {
        self.identity
            .as_ref()
            .is_some_and(|id| self.ctx.auth.revocations().covers(id))
    }

    /// The channel and its topic, when the name is valid, the namespace
    /// configured, and the namespace's rule lets this connection use `cap`.
    pub(super) fn resolve(
        &self,
        name: &str,
        cap: Capability,
    ) -> Result<(Channel, String), Refusal> {
        let (channel, ns, topic) = self.ctx.resolve(name)?;
        authorize(ns.rule(cap), self.identity.as_ref(), &channel, cap)?;
        Ok((channel, topic.to_owned()))
    }

    pub(super) async fn authenticate(&mut self, token: &str, refresh: bool) {
        let per_minute = self.ctx.cfg.limits.auth_per_minute.max(1);
        let limiter = self.auth_limiter.get_or_insert_with(|| {
            let n = std::num::NonZeroU32::new(per_minute).unwrap_or(std::num::NonZeroU32::MIN);
            Box::new(governor::RateLimiter::direct(governor::Quota::per_minute(
                n,
            )))
        });
        if limiter.check().is_err() {
            metrics::counter!("herald_auth_failures_total", "reason" => "rate_limited")
                .increment(1);
            return self.reply(error_frame(
                codes::RATE_LIMITED,
                format!("more than {per_minute} auth/refresh frames per minute on this connection"),
                None,
            ));
        }
        let id = match self.ctx.auth.verify_fresh(token).await {
            Ok(id) => id,
            Err(e) => {
                metrics::counter!("herald_auth_failures_total", "reason" => "bad_token")
                    .increment(1);
                return self.reply(error_frame(codes::BAD_TOKEN, e.to_string(), None));
            }
        };
        match (&self.identity, refresh) {
            (Some(_), false) => {
                return self.reply(error_frame(
                    codes::BAD_FRAME,
                    "already authenticated; send `refresh` to replace the token",
                    None,
                ))
            }
            (None, true) => {
                return self.reply(error_frame(
                    codes::BAD_FRAME,
                    "not authenticated; send `auth` first",
                    None,
                ))
            }
            (Some(old), true) if old.sub != id.sub => {
                metrics::counter!("herald_auth_failures_total", "reason" => "other_sub")
                    .increment(1);
                return self.reply(error_frame(
                    codes::BAD_TOKEN,
                    "a refresh token must be for the same `sub`",
                    None,
                ));
            }
            _ => {}
        }
        metrics::counter!("herald_auth_total", "kind" => if refresh { "refresh" } else { "auth" })
            .increment(1);
        let reply = ServerFrame::Authenticated {
            sub: id.sub.to_string(),
            expires_at: id.exp,
        };
        let first = self.identity.is_none();
        if first && crate::ctx::user_at_limit(&self.ctx, &id.sub) {
            return self.reply(error_frame(
                codes::RATE_LIMITED,
                format!(
                    "`{}` holds limits.max_connections_per_user ({}) connections already",
                    id.sub, self.ctx.cfg.limits.max_connections_per_user
                ),
                None,
            ));
        }
        self.client_id = Some(id.sub.clone());
        if first {
            self.ctx.users.add(&id.sub, self.id, &self.outbox);
        }
        self.identity = Some(id);
        self.reply(Outbound::Frame(reply.to_json()));
        if first {
            self.subscribe_personal();
        }
        if refresh {
            // The new token may grant less: drop what it no longer allows.
            // (The personal channel stays: the `sub` is the same.)
            let lost: Vec<String> = self
                .subs
                .iter()
                .filter(|(name, s)| {
                    !s.is_auto() && self.resolve(name, Capability::Subscribe).is_err()
                })
                .map(|(name, _)| name.clone())
                .collect();
            for name in lost {
                self.reply(error_frame(
                    codes::UNAUTHORIZED,
                    "the refreshed token does not allow this subscription",
                    Some(&name),
                ));
                self.unsubscribe(name);
            }
        }
    }
}
