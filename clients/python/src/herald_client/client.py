"""The WebSocket client: one object per logical connection. It connects,
reconnects with full-jitter exponential backoff (or after the delay the
server asks for when it drains), resubscribes every channel from the last
position it processed and drops anything at or below it, so the
application sees each message once and in order per channel; publishes are
re-sent with the same id until answered, so each is appended once."""

from __future__ import annotations

import asyncio
import base64
import json
import random as _random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection

from ._state import Frame, PendingPublish, PendingRequest, ProtocolState, SubOptions
from .types import HeraldError, Message, Position, PublishResult

Listener = Callable[[Any], None]
# Nacks a publish is re-sent after (with the same id): not confirmed yet.
_RETRYABLE = {"unavailable", "rate_limited", "shutting_down"}
_END = object()
# The server closed the connection because its token was revoked.
CLOSE_TOKEN_REVOKED = 4011


def token_expiry(token: str) -> int | None:
    """A JWT's `exp` (seconds since the Unix epoch), or None."""
    try:
        part = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (IndexError, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return exp if isinstance(exp, int) else None


def backoff_delay(attempt: int, initial: float, maximum: float, rnd: Callable[[], float]) -> float:
    """Full jitter: uniformly random in [0, min(maximum, initial * 2^attempt)]."""
    return float(rnd() * min(maximum, initial * 2.0 ** min(attempt, 30)))


class Subscription:
    """The messages of one channel, in order, each once: ``async for m in
    sub``. Holds at most the client's ``queue_size`` messages; while it is
    full the client stops reading (the server then cuts the connection as a
    slow consumer and the client resumes after the last message queued
    here), so an application that falls behind loses nothing and holds
    bounded memory. Ends after ``unsubscribe`` or ``close``."""

    def __init__(self, client: Client, channel: str, durable: bool, size: int) -> None:
        self.channel = channel
        self.durable = durable
        self._client = client
        self._queue: asyncio.Queue[Any] = asyncio.Queue(size)
        self._ready = asyncio.Event()
        self._refused: HeraldError | None = None

    async def ready(self, timeout: float | None = None) -> None:
        """Returns once the server confirmed the subscription (`subscribed`):
        from then on every message published to the channel is delivered.
        Raises the server's refusal (`HeraldError`), or
        asyncio.TimeoutError after `timeout` seconds."""
        await asyncio.wait_for(self._ready.wait(), timeout)
        if self._refused is not None:
            raise self._refused

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        m = await self._queue.get()
        if m is _END:
            self._queue.put_nowait(_END)
            raise StopAsyncIteration
        assert isinstance(m, Message)
        if self.durable:
            # Handed to the application: acked (batched) as processed.
            self._client.ack(self.channel, m.seq)
        return m

    async def get(self, timeout: float | None = None) -> Message:
        """The next message (asyncio.TimeoutError after `timeout` seconds)."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    def _end(self) -> None:
        while True:
            try:
                self._queue.put_nowait(_END)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()


class Client:
    """A herald connection that survives reconnects.

    ``token`` or ``get_token`` (an async callable, asked at every connect
    and before the token expires, to ``refresh``) authenticate; without
    either the connection is anonymous (``client_id`` names its durable
    cursors)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        get_token: Callable[[], Awaitable[str]] | None = None,
        client_id: str | None = None,
        name: str | None = None,
        backoff_initial: float = 0.25,
        backoff_max: float = 10.0,
        open_timeout: float = 5.0,
        refresh_before: float = 30.0,
        ack_interval: float = 0.2,
        queue_size: int = 1024,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self._url = url
        self._token = token
        self._get_token = get_token
        self._client_id = client_id
        self._name = name
        self._backoff = (backoff_initial, backoff_max)
        self._open_timeout = open_timeout
        self._refresh_before = refresh_before
        self._ack_interval = ack_interval
        self._queue_size = queue_size
        self._random = random
        self._st = ProtocolState()
        self._subs: dict[str, Subscription] = {}
        self._listeners: dict[str, list[Listener]] = {}
        self.state = "disconnected"
        self._ws: ClientConnection | None = None
        self._out: asyncio.Queue[Frame] | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._next_delay: float | None = None
        self._stopped = False
        self._connected = asyncio.Event()

    # --- the public API ---------------------------------------------------

    def on(self, event: str, fn: Listener) -> Callable[[], None]:
        """Calls `fn` for every `event`: state, subscribed, unsubscribed,
        message (every channel's, the server's personal ones included),
        ephemeral (an `ephemeral` frame of a subscribed channel, as a dict:
        no seq), conflated (messages dropped for the newest on a conflating
        channel, as a dict), error, join, leave, authenticated, reconnect, disconnect,
        closed.
        Returns the function that removes it."""
        self._listeners.setdefault(event, []).append(fn)
        return lambda: self._listeners[event].remove(fn)

    async def connect(self) -> None:
        """Starts connecting (and reconnecting); returns once connected."""
        self._stopped = False
        if self._run_task is None or self._run_task.done():
            self._run_task = asyncio.get_running_loop().create_task(self._run())
        await self._connected.wait()

    async def close(self) -> None:
        """Closes for good: acks flushed, unanswered calls fail `closed`,
        subscriptions end."""
        self._flush_acks()
        self._stopped = True
        ws, task = self._ws, self._run_task
        if ws is not None:
            await self._drain_out()
            await ws.close()
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        for t in list(self._tasks):
            t.cancel()
        self._cancel_timers()
        self._st.fail_all(HeraldError("closed", "the client was closed"))
        for s in self._subs.values():
            s._end()
        self._set_state("closed")

    def position(self, channel: str) -> Position | None:
        """The last processed position of `channel`."""
        return self._st.positions.get(channel)

    def subscribe(
        self,
        channel: str,
        *,
        durable: bool = False,
        rewind: int | None = None,
        rewind_ms: int | None = None,
        filter: dict[str, Any] | None = None,
    ) -> Subscription:
        """Subscribes (now, and on every reconnect from the last position);
        `durable` stores the acks as the server-side cursor. A first
        subscribe without a position delivers the channel's last `rewind`
        messages (or those of the last `rewind_ms` ms) before live ones.
        `filter` (e.g. ``{"key": "kind", "in": ["goal"]}``) delivers only
        the messages whose tags pass it."""
        if channel in self._subs:
            return self._subs[channel]
        sub = Subscription(self, channel, durable, self._queue_size)
        self._subs[channel] = sub
        self._st.subs[channel] = SubOptions(durable, rewind, rewind_ms, filter)
        if self.state == "connected":
            self._send(self._st.subscribe_frame(channel))
        return sub

    def unsubscribe(self, channel: str) -> None:
        self._st.subs.pop(channel, None)
        self._st.pending_acks.pop(channel, None)
        sub = self._subs.pop(channel, None)
        if sub is not None:
            sub._end()
        if self.state == "connected":
            self._send({"type": "unsubscribe", "channel": channel})

    async def publish(
        self, channel: str, data: Any, id: str | None = None, tags: dict[str, str] | None = None
    ) -> PublishResult:
        """Publishes `data` (with `tags`, which subscriptions' filters
        read); returns its `seq` once Kafka has it. Survives reconnects: an
        unanswered publish is re-sent with the same id and `retry: true`,
        so it is appended once."""
        pid = id or str(uuid.uuid4())
        fut: asyncio.Future[tuple[int, bool]] = asyncio.get_running_loop().create_future()
        frame: dict[str, Any] = {"type": "publish", "channel": channel, "id": pid, "data": data}
        if tags:
            frame["tags"] = tags
        p = PendingPublish(frame, fut)
        self._st.publishes[pid] = p
        if self.state == "connected":
            p.sent = True
            self._send(p.frame)
        seq, duplicate = await fut
        return PublishResult(seq, duplicate)

    def send_ephemeral(self, channel: str, data: Any, tags: dict[str, str] | None = None) -> bool:
        """Sends an ephemeral message (a typing indicator, a cursor): fanned
        out to the channel's subscribers on every node, not kept, no `seq`,
        not re-sent after a reconnect (namespaces with `ephemeral = true`).
        Subscribers get an `ephemeral` event; a refusal comes back as an
        `error` event. False when not connected (nothing was sent)."""
        if self.state != "connected":
            return False
        frame: Frame = {"type": "publish", "channel": channel, "id": str(uuid.uuid4()), "data": data}
        frame["ephemeral"] = True
        if tags:
            frame["tags"] = tags
        self._send(frame)
        return True

    def ack(self, channel: str, seq: int) -> None:
        """Marks everything up to `seq` processed (durable subscriptions);
        sent in batches every `ack_interval` seconds."""
        self._st.ack(channel, seq)
        if "ack" not in self._timers:
            loop = asyncio.get_running_loop()
            self._timers["ack"] = loop.call_later(self._ack_interval, self._flush_acks)

    async def history(self, channel: str, **query: Any) -> dict[str, Any]:
        """A history page: `since_seq`, `since_time`, `before_seq`, `limit`,
        `reverse` as in docs/protocol.md; the answer's `messages`, `next`,
        `done`."""
        return await self._request({"type": "history", "channel": channel, **query}, "history")

    async def presence(self, channel: str) -> list[dict[str, Any]]:
        f = await self._request({"type": "presence", "channel": channel}, "presence")
        members = f.get("members")
        return members if isinstance(members, list) else []

    async def presence_stats(self, channel: str) -> dict[str, int]:
        f = await self._request({"type": "presence_stats", "channel": channel}, "presence_stats")
        return {"clients": int(f.get("clients", 0)), "users": int(f.get("users", 0))}

    def drop_connection(self) -> None:
        """Drops the connection as a network loss would (tests): the client
        reconnects and resumes by itself."""
        ws = self._ws
        if ws is not None:
            ws.transport.abort()

    # --- the connection's life ----------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._stopped:
            self._set_state("connecting")
            try:
                if self._get_token is not None:
                    self._token = await self._get_token()
                ws = await asyncio.wait_for(
                    websockets.connect(self._full_url(), max_size=None), self._open_timeout
                )
            except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake) as e:
                self._emit("error", {"code": "connect_failed", "reason": str(e)})
                await self._wait_reconnect(attempt)
                attempt += 1
                continue
            attempt = 0
            code, reason = await self._serve(ws)
            self._emit("closed", {"code": code, "reason": reason})
            if code == CLOSE_TOKEN_REVOKED and self._get_token is None:
                # The same token would be refused: closed for good.
                self._spawn(self.close())
                break
            if self._stopped:
                break
            await self._wait_reconnect(attempt)
            attempt += 1

    async def _wait_reconnect(self, attempt: int) -> None:
        self._set_state("disconnected")
        delay = self._next_delay
        if delay is None:
            delay = backoff_delay(attempt, *self._backoff, self._random)
        self._next_delay = None
        await asyncio.sleep(delay)

    async def _serve(self, ws: ClientConnection) -> tuple[int, str]:
        """One connection, until it closes: a writer task sends what is
        queued in order; this reads."""
        out: asyncio.Queue[Frame] = asyncio.Queue()
        self._ws, self._out = ws, out
        writer = asyncio.get_running_loop().create_task(self._write(ws, out))
        self._set_state("connected")
        self._connected.set()
        self._arm_refresh()
        for f in self._st.on_open():
            self._send(f)
        self._flush_acks()
        try:
            async for raw in ws:
                if isinstance(raw, str):
                    await self._on_frame(raw)
        except websockets.ConnectionClosed:
            pass
        finally:
            self._ws, self._out = None, None
            self._connected.clear()
            writer.cancel()
            self._cancel_timer("refresh")
            self._st.on_connection_lost()
        if ws.close_code is None:
            return (1006, "connection lost")
        return (ws.close_code, ws.close_reason or "")

    async def _write(self, ws: ClientConnection, out: asyncio.Queue[Frame]) -> None:
        try:
            while True:
                f = await out.get()
                await ws.send(json.dumps(f, separators=(",", ":")))
                out.task_done()
        except websockets.ConnectionClosed:
            pass

    async def _drain_out(self) -> None:
        out = self._out
        if out is not None:
            try:
                await asyncio.wait_for(out.join(), 2.0)
            except asyncio.TimeoutError:
                pass

    def _full_url(self) -> str:
        params = {
            k: v
            for k, v in (("token", self._token), ("client_id", self._client_id), ("name", self._name))
            if v is not None
        }
        # Several messages may come in one `batch` frame (`_on_frame`).
        params["batch"] = "true"
        u = urlsplit(self._url)
        query = "&".join(q for q in (u.query, urlencode(params)) if q)
        return urlunsplit((u.scheme, u.netloc, u.path, query, u.fragment))

    # --- frames ---------------------------------------------------------------

    def _send(self, f: Frame) -> None:
        if self._out is not None:
            self._out.put_nowait(f)

    async def _request(self, frame: Frame, answer: str) -> Frame:
        rid = str(uuid.uuid4())
        full = {**frame, "id": rid}
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._st.requests[rid] = PendingRequest(full, answer, fut)
        if self.state == "connected":
            self._send(full)
        return await fut

    def _flush_acks(self) -> None:
        self._cancel_timer("ack")
        if self.state == "connected":
            for a in self._st.take_acks():
                self._send(a)

    async def _on_frame(self, raw: str) -> None:
        try:
            f = json.loads(raw)
        except ValueError:
            return
        if not isinstance(f, dict):
            return
        if f.get("type") == "batch" and isinstance(f.get("frames"), list):
            for inner in f["frames"]:
                if isinstance(inner, dict):
                    await self._handle(inner)
            return
        await self._handle(f)

    async def _handle(self, f: dict[str, Any]) -> None:
        kind = f.get("type")
        if kind == "message":
            if self._st.accept(f):
                tags = f.get("tags")
                m = Message(
                    f["channel"],
                    f["seq"],
                    f["epoch"],
                    str(f.get("id", "")),
                    int(f.get("ts", 0)),
                    f.get("data"),
                    dict(tags) if isinstance(tags, dict) else {},
                )
                self._emit("message", m)
                sub = self._subs.get(m.channel)
                if sub is not None:
                    # Blocks while the application is behind: backpressure.
                    await sub._queue.put(m)
        elif kind == "subscribed":
            if self._st.on_subscribed(f):
                sub = self._subs.get(str(f.get("channel")))
                if sub is not None:
                    sub._refused = None
                    sub._ready.set()
                self._emit("subscribed", f)
        elif kind == "unsubscribed":
            ch = f.get("channel")
            if isinstance(ch, str):
                self._st.subs.pop(ch, None)
                sub = self._subs.pop(ch, None)
                if sub is not None:
                    sub._end()
            self._emit("unsubscribed", f)
        elif kind == "publish_ack":
            p = self._st.publishes.pop(str(f.get("id")), None)
            if p is not None and not p.future.done():
                p.future.set_result((int(f["seq"]), f.get("duplicate") is True))
        elif kind == "publish_nack":
            self._on_nack(f)
        elif kind == "conflated":
            # Behind on a conflating channel: dropped for the newest, which
            # follows (history has them).
            self._emit("conflated", f)
        elif kind == "ephemeral":
            if f.get("channel") in self._st.subs:
                self._emit("ephemeral", f)
        elif kind in ("history", "presence", "presence_stats", "error"):
            r = self._st.requests.pop(str(f.get("id")), None) if "id" in f else None
            if r is not None:
                if r.future.done():
                    pass
                elif kind == r.answer:
                    r.future.set_result(f)
                else:
                    r.future.set_exception(HeraldError(str(f.get("code", "internal")), str(f.get("reason", ""))))
            elif kind == "error":
                ch = f.get("channel")
                if isinstance(ch, str):
                    self._st.resuming.discard(ch)
                    sub = self._subs.get(ch)
                    if sub is not None and not sub._ready.is_set():
                        # A refused subscribe: `ready()` raises it.
                        sub._refused = HeraldError(str(f.get("code", "")), str(f.get("reason", "")))
                        sub._ready.set()
                self._emit("error", f)
        elif kind in ("join", "leave", "authenticated"):
            self._emit(kind, f)
        elif kind == "reconnect":
            after = f.get("after_ms") or 0
            self._next_delay = float(after) / 1000
            self._emit("reconnect", f)
        elif kind == "disconnect":
            if f.get("reconnect") is False:
                self._emit("disconnect", f)
                self._stopped = True
                self._spawn(self.close())
        # pong, and frame types this client does not know: ignored.

    def _on_nack(self, f: Frame) -> None:
        pid = str(f.get("id"))
        p = self._st.publishes.get(pid)
        if p is None:
            # An ephemeral message (nothing pending): the refusal is an error.
            self._emit("error", f)
            return
        code = str(f.get("code", ""))
        if code in _RETRYABLE:
            # Not confirmed: re-sent with the same id, so it lands once.
            p.frame["retry"] = True
            delay = (f.get("retry_after_ms") or 500) / 1000

            def resend() -> None:
                if self._st.publishes.get(pid) is p and self.state == "connected":
                    p.sent = True
                    self._send(p.frame)

            asyncio.get_running_loop().call_later(delay, resend)
            return
        del self._st.publishes[pid]
        if not p.future.done():
            p.future.set_exception(HeraldError(code, str(f.get("reason", ""))))

    # --- tokens -----------------------------------------------------------

    def _arm_refresh(self) -> None:
        self._cancel_timer("refresh")
        if self._get_token is None or self._token is None:
            return
        exp = token_expiry(self._token)
        if exp is None:
            return
        delay = max(1.0, exp - time.time() - self._refresh_before)
        loop = asyncio.get_running_loop()
        self._timers["refresh"] = loop.call_later(delay, lambda: self._spawn(self._refresh()))

    async def _refresh(self) -> None:
        self._timers.pop("refresh", None)
        if self._get_token is None or self.state != "connected":
            return
        try:
            token = await self._get_token()
        except Exception:
            # Again shortly; at expiry the server closes (4003) and the
            # reconnect asks for a token again.
            loop = asyncio.get_running_loop()
            self._timers["refresh"] = loop.call_later(5.0, lambda: self._spawn(self._refresh()))
            return
        self._token = token
        self._send({"type": "refresh", "token": token})
        self._arm_refresh()

    # --- helpers ----------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _cancel_timer(self, name: str) -> None:
        t = self._timers.pop(name, None)
        if t is not None:
            t.cancel()

    def _cancel_timers(self) -> None:
        for name in list(self._timers):
            self._cancel_timer(name)

    def _set_state(self, s: str) -> None:
        if self.state != s:
            self.state = s
            self._emit("state", s)

    def _emit(self, event: str, value: Any) -> None:
        for fn in list(self._listeners.get(event, ())):
            try:
                fn(value)
            except Exception:  # a listener's failure is not the client's
                pass
