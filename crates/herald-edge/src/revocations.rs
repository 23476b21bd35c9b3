//! Cutting a user off: token revocations, kept in herald's compacted topic
//! `{prefix}revocations` (one partition) and held in memory by every node.
//!
//! Records (JSON values):
//! - key `jti:{jti}`: `{"v":1,"kind":"jti","jti":..,"user":..?,"until":S}`:
//!   the token with that `jti` is refused until `until` (s since the Unix
//!   epoch: its expiry, past which it is refused anyway);
//! - key `user:{sub}`: `{"v":1,"kind":"user","user":..,"before":S}`: every
//!   token of `sub` issued at or before `before` (its `iat`; a token without
//!   one counts as issued at 0) is refused; a later record for the same user
//!   moves the cutoff, never back.
//!
//! Every check goes through one place: [`crate::auth::Auth`] verifies a
//! token and refuses a revoked one, at connect (HTTP 401), `auth` and
//! `refresh` alike. A connection already open is told by its node when the
//! record arrives (every node follows the topic, so within the tail's fetch
//! wait, ~100 ms): it checks its own identity and closes with 4011 when
//! covered. A node reads the whole topic before it serves, so a node that
//! starts after a revocation never accepts the token.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use herald_hub::ConnCommand;
use herald_log::{LogError, Record};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::auth::Identity;
use crate::ctx::Ctx;

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    (herald_proto::envelope::now_ms() / 1000).max(0) as u64
}

/// One revocation, as written to the topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Revocation {
    /// The token with this `jti`, until it expires.
    Jti {
        jti: String,
        /// The token's user, when the caller named it (only that user's
        /// connections are then asked to check).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        until: u64,
    },
    /// Every token of `user` issued at or before `before`.
    User { user: String, before: u64 },
}

#[derive(Serialize, Deserialize)]
struct RevocationRecord {
    v: u32,
    #[serde(flatten)]
    revocation: Revocation,
}

impl Revocation {
    /// The record's key: one per jti, one per user (compaction keeps the
    /// latest).
    pub fn key(&self) -> String {
        match self {
            Revocation::Jti { jti, .. } => format!("jti:{jti}"),
            Revocation::User { user, .. } => format!("user:{user}"),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&RevocationRecord {
            v: 1,
            revocation: self.clone(),
        })
        .unwrap_or_default()
    }
}

/// What this node holds: revoked `jti`s (until when) and users' cutoffs.
#[derive(Default)]
pub struct Revocations {
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    jti: HashMap<String, u64>,
    users: HashMap<String, u64>,
}

impl Revocations {
    /// True when `id` is revoked: its `jti` is (and not past its `until`),
    /// or its user has a cutoff at or after its `iat`.
    pub fn covers(&self, id: &Identity) -> bool {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        if st.jti.is_empty() && st.users.is_empty() {
            return false;
        }
        let by_jti = id
            .jti
            .as_deref()
            .and_then(|j| st.jti.get(j))
            .is_some_and(|until| now_secs() <= *until);
        by_jti
            || st
                .users
                .get(&*id.sub)
                .is_some_and(|before| id.iat <= *before)
    }

    /// Takes a revocation in; a user's cutoff and a jti's end only move
    /// later.
    pub fn apply(&self, r: &Revocation) {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let (map, k, v) = match r {
            Revocation::Jti { jti, until, .. } => (&mut st.jti, jti, *until),
            Revocation::User { user, before } => (&mut st.users, user, *before),
        };
        let e = map.entry(k.clone()).or_insert(v);
        *e = (*e).max(v);
        // Expired jtis are dropped (their tokens are refused anyway).
        let now = now_secs();
        st.jti.retain(|_, until| *until >= now);
        metrics::gauge!("herald_revocations").set((st.jti.len() + st.users.len()) as f64);
    }
}

/// Follows the revocations topic from its start and returns once this node
/// has read everything written before it started (within `within`), so it
/// never serves a token revoked before. Later records are applied as they
/// come, and the connections they may cover are told to check.
pub async fn start(
    ctx: Arc<Ctx>,
    topic: String,
    mut records: mpsc::UnboundedReceiver<Record>,
    within: Duration,
) -> Result<(), LogError> {
    let wm = crate::cluster::watermarks_when_ready(&*ctx.log, &topic, 0).await?;
    let (read_to, mut caught_up) = watch::channel(wm.low);
    ctx.log.follow(&topic, 0, wm.low)?;
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            while let Some(r) = records.recv().await {
                on_record(&ctx, &r);
                read_to.send_replace(r.offset + 1);
            }
        });
    }
    // Records up to the end at start are read (a compacted topic may skip
    // offsets, so the end is reached when a record at or after end - 1 is
    // seen; an empty topic is caught up at once).
    let caught = tokio::time::timeout(
        within,
        caught_up.wait_for(|next| wm.high <= wm.low || *next >= wm.high),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if caught {
        Ok(())
    } else {
        Err(LogError::Other(format!(
            "the revocations topic {topic} was not read to its end ({}) within {} s",
            wm.high,
            within.as_secs()
        )))
    }
}

fn on_record(ctx: &Ctx, r: &Record) {
    let Some(value) = r.value.as_deref() else {
        return;
    };
    let rec: RevocationRecord = match serde_json::from_slice(value) {
        Ok(rec) => rec,
        Err(e) => {
            metrics::counter!("herald_revocation_errors_total").increment(1);
            return warn!(%e, offset = r.offset, "Could not decode a revocation record; skipped");
        }
    };
    let revocation = rec.revocation;
    ctx.auth.revocations().apply(&revocation);
    // The connections it may cover check their own identity.
    let told = match &revocation {
        Revocation::User { user, .. }
        | Revocation::Jti {
            user: Some(user), ..
        } => ctx.users.tell(user, |_| Some(ConnCommand::CheckRevoked)),
        Revocation::Jti { user: None, .. } => ctx.users.tell_all(ConnCommand::CheckRevoked),
    };
    tracing::debug!(key = revocation.key(), told, "Revocation applied");
}

/// The body of `POST /api/revoke`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    #[serde(default)]
    pub jti: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub before: Option<u64>,
    #[serde(default)]
    pub until: Option<u64>,
}

/// How long a `jti` revocation is kept when the caller does not say (its
/// token's expiry): longer than any token herald would mint by default.
pub const DEFAULT_JTI_DAYS: u64 = 30;

impl RevokeBody {
    /// The revocation this body asks for, or why it is refused.
    pub fn revocation(self) -> Result<Revocation, String> {
        let user = match self.user {
            Some(u) if u.is_empty() || u.len() > 128 => {
                return Err("`user` must be 1-128 bytes".into())
            }
            u => u,
        };
        match (self.jti, user) {
            (Some(jti), user) => {
                if jti.is_empty() || jti.len() > crate::auth::MAX_JTI_BYTES {
                    return Err(format!(
                        "`jti` must be 1-{} bytes",
                        crate::auth::MAX_JTI_BYTES
                    ));
                }
                if self.before.is_some() {
                    return Err("`before` goes with `user` alone, not with `jti`".into());
                }
                let until = self
                    .until
                    .unwrap_or_else(|| now_secs() + DEFAULT_JTI_DAYS * 86_400);
                Ok(Revocation::Jti { jti, user, until })
            }
            (None, Some(user)) => {
                if self.until.is_some() {
                    return Err("`until` goes with `jti`".into());
                }
                Ok(Revocation::User {
                    user,
                    before: self.before.unwrap_or_else(now_secs),
                })
            }
            (None, None) => Err("name a `jti` or a `user`".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sub: &str, jti: Option<&str>, iat: u64) -> Identity {
        crate::auth::test_identity(sub, jti, iat)
    }

    #[test]
    fn a_jti_is_revoked_until_its_end_and_a_user_up_to_the_cutoff() {
        let r = Revocations::default();
        let now = now_secs();
        assert!(!r.covers(&id("alice", Some("t1"), now)));
        r.apply(&Revocation::Jti {
            jti: "t1".into(),
            user: None,
            until: now + 60,
        });
        assert!(r.covers(&id("alice", Some("t1"), now)));
        assert!(!r.covers(&id("alice", Some("t2"), now)));
        r.apply(&Revocation::User {
            user: "bob".into(),
            before: now,
        });
        assert!(r.covers(&id("bob", None, now)));
        assert!(r.covers(&id("bob", None, 0)), "no iat: covered");
        assert!(!r.covers(&id("bob", None, now + 1)), "issued after");
        assert!(!r.covers(&id("carol", None, 0)));
        // A cutoff only moves later.
        r.apply(&Revocation::User {
            user: "bob".into(),
            before: now - 100,
        });
        assert!(r.covers(&id("bob", None, now)));
        // An expired jti is forgotten.
        r.apply(&Revocation::Jti {
            jti: "old".into(),
            user: None,
            until: now - 1,
        });
        assert!(!r.covers(&id("alice", Some("old"), now)));
    }

    #[test]
    fn bodies_are_checked() {
        let body = |v: serde_json::Value| {
            serde_json::from_value::<RevokeBody>(v)
                .map_err(|e| e.to_string())
                .and_then(RevokeBody::revocation)
        };
        assert!(matches!(
            body(serde_json::json!({"user": "a"})),
            Ok(Revocation::User { .. })
        ));
        assert!(matches!(
            body(serde_json::json!({"jti": "x", "until": 5})),
            Ok(Revocation::Jti { until: 5, .. })
        ));
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"user": ""}),
            serde_json::json!({"jti": "x", "before": 1}),
            serde_json::json!({"user": "a", "until": 1}),
            serde_json::json!({"jti": "x".repeat(300)}),
            serde_json::json!({"user": "a", "other": 1}),
        ] {
            assert!(body(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn records_round_trip() {
        let r = Revocation::User {
            user: "a".into(),
            before: 7,
        };
        let back: RevocationRecord = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(back.revocation, r);
        assert_eq!(r.key(), "user:a");
    }
}
