"""The protocol state's rules, without a server."""

from __future__ import annotations

import base64
import json

from herald_client import Position, backoff_delay, token_expiry
from herald_client._state import ProtocolState, SubOptions


def msg(ch: str, seq: int, epoch: str = "e1") -> dict[str, object]:
    return {"type": "message", "channel": ch, "seq": seq, "epoch": epoch, "id": "x", "ts": 0, "data": None}


def test_messages_at_or_below_the_position_are_dropped() -> None:
    st = ProtocolState()
    assert st.accept(msg("c:a", 5))
    assert not st.accept(msg("c:a", 5))
    assert not st.accept(msg("c:a", 3))
    assert st.accept(msg("c:a", 9))
    assert st.positions["c:a"] == Position(9, "e1")
    # Another epoch (a re-created topic) is new.
    assert st.accept(msg("c:a", 1, "e2"))


def test_a_resume_drops_messages_until_its_answer_and_then_resumes_after_the_position() -> None:
    st = ProtocolState()
    st.subs["c:a"] = SubOptions()
    st.positions["c:a"] = Position(4, "e1")
    f = st.on_open()
    assert f == [{"type": "subscribe", "channel": "c:a", "since": {"seq": 4, "epoch": "e1"}}]
    assert not st.accept(msg("c:a", 6))  # before the answer: the resume sends it again
    # The server's own (auto) subscription does not end the resume.
    assert not st.on_subscribed({"channel": "c:a", "auto": True, "recovered": False, "position": {"seq": 7, "epoch": "e1"}})
    assert st.on_subscribed({"channel": "c:a", "recovered": True, "position": {"seq": 7, "epoch": "e1"}})
    assert st.accept(msg("c:a", 5)) and st.accept(msg("c:a", 6))


def test_a_durable_subscription_without_a_position_resumes_from_the_cursor() -> None:
    st = ProtocolState()
    st.subs["c:d"] = SubOptions(durable=True)
    assert st.subscribe_frame("c:d") == {"type": "subscribe", "channel": "c:d", "since": "cursor", "durable": True}


def test_a_rewind_applies_until_the_channel_has_a_position() -> None:
    st = ProtocolState()
    st.subs["c:r"] = SubOptions(rewind=5)
    assert st.subscribe_frame("c:r") == {"type": "subscribe", "channel": "c:r", "rewind": 5}
    assert "c:r" in st.resuming
    st.subs["c:t"] = SubOptions(rewind_ms=60_000)
    assert st.subscribe_frame("c:t") == {"type": "subscribe", "channel": "c:t", "rewind_ms": 60_000}
    st.positions["c:r"] = Position(9, "e1")
    assert st.subscribe_frame("c:r") == {"type": "subscribe", "channel": "c:r", "since": {"seq": 9, "epoch": "e1"}}


def test_an_unrecovered_subscribe_sets_the_live_position_only_for_an_unknown_epoch() -> None:
    st = ProtocolState()
    st.on_subscribed({"channel": "c:a", "recovered": False, "position": {"seq": 10, "epoch": "e1"}})
    assert st.positions["c:a"] == Position(10, "e1")
    st.positions["c:a"] = Position(12, "e1")
    st.on_subscribed({"channel": "c:a", "recovered": False, "position": {"seq": 11, "epoch": "e1"}})
    assert st.positions["c:a"] == Position(12, "e1")


def test_acks_are_cumulative_per_channel_and_only_for_subscribed_channels() -> None:
    st = ProtocolState()
    st.subs["c:a"] = SubOptions(durable=True)
    st.ack("c:a", 3)
    st.ack("c:a", 9)
    st.ack("c:a", 5)
    st.ack("c:gone", 1)
    assert st.take_acks() == [{"type": "ack", "channel": "c:a", "seq": 9}]
    assert st.take_acks() == []


def test_backoff_is_full_jitter_capped() -> None:
    assert backoff_delay(0, 0.25, 10, lambda: 1.0) == 0.25
    assert backoff_delay(3, 0.25, 10, lambda: 1.0) == 2.0
    assert backoff_delay(40, 0.25, 10, lambda: 1.0) == 10
    assert backoff_delay(5, 0.25, 10, lambda: 0.0) == 0


def test_token_expiry_reads_exp_and_tolerates_junk() -> None:
    claims = base64.urlsafe_b64encode(json.dumps({"exp": 123}).encode()).rstrip(b"=").decode()
    assert token_expiry(f"h.{claims}.s") == 123
    assert token_expiry("not-a-jwt") is None
    assert token_expiry("a.%%%.b") is None


def test_a_filter_goes_with_every_subscribe_of_the_channel() -> None:
    st = ProtocolState()
    f = {"not": {"key": "kind", "eq": "chat"}}
    st.subs["c:f"] = SubOptions(rewind=2, filter=f)
    assert st.subscribe_frame("c:f") == {"type": "subscribe", "channel": "c:f", "rewind": 2, "filter": f}
    st.positions["c:f"] = Position(7, "e")
    assert st.subscribe_frame("c:f") == {
        "type": "subscribe",
        "channel": "c:f",
        "since": {"seq": 7, "epoch": "e"},
        "filter": f,
    }
