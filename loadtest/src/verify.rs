//! The verifier: what was acked against what each subscriber got, per
//! channel. Every acked message must reach every subscriber of its channel
//! exactly once and in the channel's order (the `seq` each was acked with,
//! when the protocol gives one); anything else is counted as lost, duplicated or out
//! of order. [`Strict`] turns the counts into a verdict every comparison
//! exits with.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Counts for one channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelCounts {
    /// Messages the server acknowledged on the channel.
    pub acked: u64,
    /// Subscribers of the channel.
    pub subscribers: u64,
    /// Deliveries expected: acked × subscribers.
    pub expected: u64,
    /// Deliveries received (including duplicates and unacked messages).
    pub delivered: u64,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    /// Deliveries of a message a subscriber had already received.
    pub duplicated: u64,
    /// Deliveries of messages never acked: a publish whose answer never
    /// came (or was a nack) reached a subscriber anyway. A run that keeps
    /// up has none; [`Strict`] fails it.
    pub unacked_delivered: u64,
    /// Deliveries on this channel to subscribers that never subscribed to
    /// it.
    #[serde(default)]
    pub misrouted: u64,
    /// First deliveries of a message that arrived after a message acked
    /// with a higher `seq` on the channel.
    #[serde(default)]
    pub out_of_order: u64,
}

/// Collects acks and deliveries, then judges them.
#[derive(Default)]
pub struct Verifier {
    acked: HashMap<String, HashSet<Uuid>>,
    /// The `seq` messages were acked with, when known.
    seq: HashMap<Uuid, i64>,
    /// subscriber → channel → ids in arrival order.
    delivered: Vec<HashMap<String, Vec<Uuid>>>,
    subscribed: Vec<Vec<String>>,
}

impl Verifier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn acked(&mut self, channel: &str, id: Uuid) {
        self.acked.entry(channel.to_owned()).or_default().insert(id);
    }

    /// An ack with the message's `seq`: the channel's messages must be
    /// delivered in `seq` order.
    pub fn acked_seq(&mut self, channel: &str, id: Uuid, seq: i64) {
        self.acked(channel, id);
        self.seq.insert(id, seq);
    }

    /// The stream position a message was delivered with, for protocols
    /// whose acks carry none: the same on every subscriber, so the
    /// channel's messages must arrive in its order (an ack's `seq` wins).
    pub fn delivered_seq(&mut self, id: Uuid, seq: i64) {
        self.seq.entry(id).or_insert(seq);
    }

    /// Adds a subscriber with its channels and what it received.
    pub fn subscriber(&mut self, channels: Vec<String>, got: HashMap<String, Vec<Uuid>>) {
        self.subscribed.push(channels);
        self.delivered.push(got);
    }

    /// Per channel counts.
    pub fn report(&self) -> BTreeMap<String, ChannelCounts> {
        let mut out: BTreeMap<String, ChannelCounts> = BTreeMap::new();
        for (ch, ids) in &self.acked {
            out.entry(ch.clone()).or_default().acked = ids.len() as u64;
        }
        for (subs, got) in self.subscribed.iter().zip(&self.delivered) {
            for ch in subs {
                let acked = self.acked.get(ch);
                let c = out.entry(ch.clone()).or_default();
                c.subscribers += 1;
                c.expected += acked.map_or(0, |a| a.len() as u64);
                let list = got.get(ch).map(Vec::as_slice).unwrap_or_default();
                c.delivered += list.len() as u64;
                let mut seen = HashSet::with_capacity(list.len());
                let mut last_seq: Option<i64> = None;
                for id in list {
                    if !seen.insert(*id) {
                        c.duplicated += 1;
                    } else if !acked.is_some_and(|a| a.contains(id)) {
                        c.unacked_delivered += 1;
                    } else if let Some(seq) = self.seq.get(id) {
                        match last_seq {
                            Some(last) if *seq < last => c.out_of_order += 1,
                            _ => last_seq = Some(*seq),
                        }
                    }
                }
                if let Some(a) = acked {
                    c.lost += a.iter().filter(|id| !seen.contains(id)).count() as u64;
                }
            }
            // Deliveries on channels the subscriber never asked for.
            for (ch, list) in got {
                if !subs.contains(ch) {
                    let c = out.entry(ch.clone()).or_default();
                    c.delivered += list.len() as u64;
                    c.misrouted += list.len() as u64;
                }
            }
        }
        out
    }

    /// Totals over every channel.
    pub fn totals(&self) -> ChannelCounts {
        let mut t = ChannelCounts::default();
        for c in self.report().values() {
            t.acked += c.acked;
            t.subscribers += c.subscribers;
            t.expected += c.expected;
            t.delivered += c.delivered;
            t.lost += c.lost;
            t.duplicated += c.duplicated;
            t.unacked_delivered += c.unacked_delivered;
            t.out_of_order += c.out_of_order;
            t.misrouted += c.misrouted;
        }
        t
    }
}

/// What a run counted, as a verdict reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Publishes sent, and how they were answered.
    pub sent: u64,
    pub acked: u64,
    pub nacked: u64,
    /// Expected deliveries that never arrived, second deliveries, and
    /// deliveries out of their channel's order.
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Deliveries of messages never acked, and deliveries on a channel the
    /// subscriber did not subscribe to.
    pub unacked_delivered: u64,
    pub misrouted: u64,
}

impl Counts {
    /// Publishes that got no answer by the end of the run's drain.
    pub fn unanswered(&self) -> u64 {
        self.sent.saturating_sub(self.acked + self.nacked)
    }
}

/// The verdict a comparison exits with: it fails on any loss, duplicate or
/// out-of-order delivery, and when fewer publishes were acked than the run
/// needs to mean anything (a run with nothing acked has nothing lost).
#[derive(Clone, Copy, Debug)]
pub struct Strict {
    pub min_acked: u64,
}

impl Strict {
    /// `Err` with every reason the run fails.
    pub fn judge(&self, who: &str, c: Counts) -> Result<(), String> {
        let Counts {
            acked,
            nacked,
            lost,
            duplicated,
            out_of_order,
            unacked_delivered,
            misrouted,
            ..
        } = c;
        let unanswered = c.unanswered();
        let mut why = Vec::new();
        if acked < self.min_acked {
            why.push(format!(
                "only {acked} publishes acked (at least {} expected)",
                self.min_acked
            ));
        }
        if lost > 0 {
            why.push(format!("{lost} lost"));
        }
        if duplicated > 0 {
            why.push(format!("{duplicated} duplicated"));
        }
        if out_of_order > 0 {
            why.push(format!("{out_of_order} out of order"));
        }
        if nacked > 0 {
            why.push(format!("{nacked} publishes nacked"));
        }
        if unanswered > 0 {
            why.push(format!("{unanswered} publishes unanswered"));
        }
        if unacked_delivered > 0 {
            why.push(format!(
                "{unacked_delivered} deliveries of messages never acked"
            ));
        }
        if misrouted > 0 {
            why.push(format!(
                "{misrouted} deliveries on channels not subscribed to"
            ));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(format!("{who}: {}", why.join(", ")))
        }
    }

    /// The verdict on a baseline driven past what it can take (a point of a
    /// sweep beyond its saturation): acking fewer than the minimum is then
    /// the measurement, not a failure, so it is `Ok(Some(note))`, as long as
    /// it acked something and delivered all of that once, in order. Loss,
    /// duplicates, disorder or nothing acked still fail.
    pub fn judge_saturated(&self, who: &str, c: Counts) -> Result<Option<String>, String> {
        // Past saturation a publish may be nacked, or answered after the
        // drain (and delivered before its answer came): noted, not failed.
        let kept = Counts {
            sent: c.acked,
            nacked: 0,
            unacked_delivered: 0,
            ..c
        };
        Strict { min_acked: 1 }.judge(who, kept)?;
        let acked = c.acked;
        Ok((acked < self.min_acked).then(|| {
            format!(
                "{who}: saturated, {acked} publishes acked (the minimum for a run that keeps up is {})",
                self.min_acked
            )
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(acked: u64, lost: u64, duplicated: u64, out_of_order: u64) -> Counts {
        Counts {
            sent: acked,
            acked,
            lost,
            duplicated,
            out_of_order,
            ..Counts::default()
        }
    }

    #[test]
    fn nacks_silence_never_acked_and_misrouted_deliveries_fail_a_run() {
        let s = Strict { min_acked: 10 };
        let ok = counts(100, 0, 0, 0);
        assert!(s.judge("x", ok).is_ok());
        for (bad, says) in [
            (
                Counts {
                    nacked: 1,
                    sent: 101,
                    ..ok
                },
                "1 publishes nacked",
            ),
            (Counts { sent: 149, ..ok }, "49 publishes unanswered"),
            (
                Counts {
                    unacked_delivered: 2,
                    ..ok
                },
                "2 deliveries of messages never acked",
            ),
            (
                Counts { misrouted: 3, ..ok },
                "3 deliveries on channels not subscribed to",
            ),
        ] {
            let e = s.judge("x", bad).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        // A saturated baseline may leave publishes unanswered or nacked.
        let s = Strict { min_acked: 200 };
        let behind = Counts {
            sent: 150,
            nacked: 10,
            unacked_delivered: 5,
            ..ok
        };
        assert!(s.judge_saturated("b", behind).unwrap().is_some());
        assert!(s
            .judge_saturated(
                "b",
                Counts {
                    misrouted: 1,
                    ..behind
                }
            )
            .is_err());
    }

    #[test]
    fn a_delivery_on_a_channel_not_subscribed_to_is_misrouted() {
        let a = ids(2);
        let mut v = Verifier::new();
        for id in &a {
            v.acked("c:1", *id);
        }
        v.subscriber(
            vec!["c:1".into()],
            HashMap::from([("c:1".into(), a.clone()), ("c:2".into(), vec![a[0]])]),
        );
        assert_eq!(v.totals().misrouted, 1);
        assert_eq!(v.totals().lost, 0);
    }

    #[test]
    fn a_saturated_baseline_is_noted_but_loss_still_fails() {
        let s = Strict { min_acked: 100 };
        assert_eq!(s.judge_saturated("b", counts(150, 0, 0, 0)), Ok(None));
        assert!(s
            .judge_saturated("b", counts(40, 0, 0, 0))
            .unwrap()
            .is_some());
        assert!(s.judge("b", counts(40, 0, 0, 0)).is_err());
        assert!(s.judge_saturated("b", counts(0, 0, 0, 0)).is_err());
        assert!(s.judge_saturated("b", counts(40, 1, 0, 0)).is_err());
        assert!(s.judge_saturated("b", counts(40, 0, 1, 0)).is_err());
        assert!(s.judge_saturated("b", counts(40, 0, 0, 1)).is_err());
    }

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::new_v4()).collect()
    }

    #[test]
    fn all_of_it_once() {
        let a = ids(5);
        let mut v = Verifier::new();
        for id in &a {
            v.acked("c:1", *id);
        }
        for _ in 0..3 {
            v.subscriber(
                vec!["c:1".into()],
                HashMap::from([("c:1".into(), a.clone())]),
            );
        }
        let t = v.totals();
        assert_eq!(
            (t.acked, t.expected, t.delivered, t.lost, t.duplicated),
            (5, 15, 15, 0, 0)
        );
    }

    #[test]
    fn counts_loss_duplicates_and_unacked() {
        let a = ids(4);
        let extra = Uuid::new_v4();
        let mut v = Verifier::new();
        for id in &a {
            v.acked("c:1", *id);
        }
        // Missing a[3], a[0] twice, one unacked message.
        v.subscriber(
            vec!["c:1".into()],
            HashMap::from([("c:1".into(), vec![a[0], a[1], a[0], a[2], extra])]),
        );
        // A subscriber that got nothing.
        v.subscriber(vec!["c:1".into()], HashMap::new());
        let r = v.report();
        let c = &r["c:1"];
        assert_eq!(c.expected, 8);
        assert_eq!(c.lost, 1 + 4);
        assert_eq!(c.duplicated, 1);
        assert_eq!(c.unacked_delivered, 1);
        assert_eq!(c.delivered, 5);
    }

    #[test]
    fn order_is_judged_by_seq() {
        let a = ids(5);
        let mut v = Verifier::new();
        // Acks may arrive in any order; the seq says the channel's order.
        for (i, seq) in [(0, 10), (2, 12), (1, 11), (3, 13), (4, 14)] {
            v.acked_seq("c:1", a[i], seq);
        }
        v.subscriber(
            vec!["c:1".into()],
            HashMap::from([("c:1".into(), a.clone())]),
        );
        assert_eq!(v.totals().out_of_order, 0);
        // a[2] before a[1]: one out of order (a[1] arrives behind a later one).
        v.subscriber(
            vec!["c:1".into()],
            HashMap::from([("c:1".into(), vec![a[0], a[2], a[1], a[3], a[4]])]),
        );
        let t = v.totals();
        assert_eq!((t.out_of_order, t.lost, t.duplicated), (1, 0, 0));
    }

    #[test]
    fn order_is_judged_by_the_delivered_position_when_acks_carry_none() {
        // Centrifugo / Socket.IO: acks without seq, deliveries with the
        // stream's offset.
        let a = ids(3);
        let mut v = Verifier::new();
        for id in &a {
            v.acked("c:1", *id);
        }
        for (i, off) in [(0, 7), (1, 8), (2, 9)] {
            v.delivered_seq(a[i], off);
        }
        v.subscriber(
            vec!["c:1".into()],
            HashMap::from([("c:1".into(), vec![a[0], a[2], a[1]])]),
        );
        assert_eq!(v.totals().out_of_order, 1);
        // An ack's seq wins over a delivered position.
        let mut w = Verifier::new();
        w.acked_seq("c:1", a[0], 2);
        w.acked_seq("c:1", a[1], 1);
        w.delivered_seq(a[0], 1);
        w.delivered_seq(a[1], 2);
        w.subscriber(
            vec!["c:1".into()],
            HashMap::from([("c:1".into(), vec![a[1], a[0]])]),
        );
        assert_eq!(w.totals().out_of_order, 0);
    }

    #[test]
    fn the_strict_verdict_fails_on_anything_wrong_or_too_little() {
        let s = Strict { min_acked: 10 };
        assert!(s.judge("x", counts(10, 0, 0, 0)).is_ok());
        let e = s.judge("x", counts(0, 0, 0, 0)).unwrap_err();
        assert!(e.contains("only 0 publishes acked"), "{e}");
        for (l, d, o) in [(1, 0, 0), (0, 1, 0), (0, 0, 1)] {
            assert!(s.judge("x", counts(100, l, d, o)).is_err());
        }
    }

    #[test]
    fn channels_are_judged_separately() {
        let (a, b) = (ids(2), ids(3));
        let mut v = Verifier::new();
        a.iter().for_each(|id| v.acked("c:a", *id));
        b.iter().for_each(|id| v.acked("c:b", *id));
        // Subscribed to a only, but got b's messages too (a routing bug).
        v.subscriber(
            vec!["c:a".into()],
            HashMap::from([("c:a".into(), a.clone()), ("c:b".into(), b.clone())]),
        );
        let r = v.report();
        assert_eq!(r["c:a"].lost, 0);
        assert_eq!(r["c:b"].subscribers, 0);
        assert_eq!(r["c:b"].delivered, 3, "stray deliveries are visible");
        assert_eq!(r["c:b"].expected, 0);
    }
}
