"""What the client keeps across connections: the subscriptions, the last
position processed per channel, the resumes not yet answered, the publishes
and requests not yet answered and the acks not yet sent. No I/O and no
timers: the client (``client.py``) sends what this returns. The same rules
as the TypeScript client's ``protocol.ts``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from .types import HeraldError, Position

Frame = dict[str, Any]


@dataclass
class PendingPublish:
    frame: Frame
    future: asyncio.Future[tuple[int, bool]]
    sent: bool = False


@dataclass
class PendingRequest:
    frame: Frame
    answer: str
    future: asyncio.Future[Frame]


@dataclass
class SubOptions:
    durable: bool = False
    # A first subscribe (no position, not durable): the channel's last
    # `rewind` messages, or those of the last `rewind_ms`, before live ones.
    rewind: int | None = None
    rewind_ms: int | None = None
    # Only the messages whose tags pass it (docs/protocol.md, "Tags and
    # filters"), on every (re)subscribe.
    filter: dict[str, Any] | None = None


@dataclass
class ProtocolState:
    subs: dict[str, SubOptions] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)
    # Channels whose resume (`subscribe` with `since`) is not answered yet:
    # their messages are dropped until it is, as the resume delivers them
    # again in order (a personal channel's server subscription may deliver
    # newer ones first).
    resuming: set[str] = field(default_factory=set)
    pending_acks: dict[str, int] = field(default_factory=dict)
    publishes: dict[str, PendingPublish] = field(default_factory=dict)
    requests: dict[str, PendingRequest] = field(default_factory=dict)

    def subscribe_frame(self, channel: str) -> Frame:
        """The `subscribe` for `channel`: from the last position processed,
        else from the durable cursor when the subscription is durable, else
        with its rewind."""
        o = self.subs.get(channel, SubOptions())
        p = self.positions.get(channel)
        frame: Frame = {"type": "subscribe", "channel": channel}
        if p is not None:
            frame["since"] = {"seq": p.seq, "epoch": p.epoch}
        elif o.durable:
            frame["since"] = "cursor"
        elif o.rewind is not None:
            frame["rewind"] = o.rewind
        elif o.rewind_ms is not None:
            frame["rewind_ms"] = o.rewind_ms
        if o.durable:
            frame["durable"] = True
        if o.filter is not None:
            frame["filter"] = o.filter
        if any(k in frame for k in ("since", "rewind", "rewind_ms")):
            self.resuming.add(channel)
        return frame

    def on_open(self) -> list[Frame]:
        """Everything to send on a fresh connection, in order: every
        subscription, every unanswered publish and request."""
        self.resuming.clear()
        out = [self.subscribe_frame(ch) for ch in self.subs]
        for p in self.publishes.values():
            p.sent = True
            out.append(p.frame)
        out.extend(r.frame for r in self.requests.values())
        return out

    def on_connection_lost(self) -> None:
        """A publish sent on the lost connection may have been appended: it
        is re-sent with `retry: true`."""
        for p in self.publishes.values():
            if p.sent:
                p.frame["retry"] = True

    def take_acks(self) -> list[Frame]:
        out = [
            {"type": "ack", "channel": ch, "seq": seq}
            for ch, seq in self.pending_acks.items()
            if ch in self.subs
        ]
        self.pending_acks.clear()
        return out

    def ack(self, channel: str, seq: int) -> None:
        prev = self.pending_acks.get(channel)
        if prev is None or seq > prev:
            self.pending_acks[channel] = seq

    def accept(self, m: Frame) -> bool:
        """Whether a message is new to the application (and if so, it is now
        the channel's position)."""
        channel, seq, epoch = m.get("channel"), m.get("seq"), m.get("epoch")
        if not isinstance(channel, str) or not isinstance(seq, int) or not isinstance(epoch, str):
            return False
        if channel in self.resuming:
            return False  # the resume delivers it again
        last = self.positions.get(channel)
        if last is not None and last.epoch == epoch and seq <= last.seq:
            return False  # seen already
        self.positions[channel] = Position(seq, epoch)
        return True

    def on_subscribed(self, f: Frame) -> bool:
        """A `subscribed` answer; False when it is the server's own
        subscription that a pending resume replaces (ignored)."""
        channel = f.get("channel")
        if not isinstance(channel, str):
            return False
        auto = f.get("auto") is True
        if auto and channel in self.resuming:
            return False
        if not auto:
            self.resuming.discard(channel)
        # Where live starts, when the server could not resume us and we know
        # nothing of this epoch; a recovered reply's catch-up follows.
        pos = f.get("position") or {}
        known = self.positions.get(channel)
        if (
            not f.get("recovered")
            and isinstance(pos.get("seq"), int)
            and isinstance(pos.get("epoch"), str)
            and (known is None or known.epoch != pos["epoch"])
        ):
            self.positions[channel] = Position(pos["seq"], pos["epoch"])
        return True

    def fail_all(self, e: HeraldError) -> None:
        for p in self.publishes.values():
            if not p.future.done():
                p.future.set_exception(e)
        self.publishes.clear()
        for r in self.requests.values():
            if not r.future.done():
                r.future.set_exception(e)
        self.requests.clear()
