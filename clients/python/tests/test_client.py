"""The Python client against a real herald node on the real broker: every
test counts what was acked and what was delivered ("all of it, once")."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from herald_client import ApiError, Client, HeraldError, Message, ServerApi

from conftest import API_KEY, Herald


async def take(sub: Any, n: int, timeout: float = 20.0) -> list[Message]:
    return [await sub.get(timeout) for _ in range(n)]


async def test_publishes_are_delivered_once_in_order_with_their_acked_seqs(herald: Herald) -> None:
    ch = herald.channel()
    sub_client, pub_client = Client(herald.url), Client(herald.url)
    await sub_client.connect()
    await pub_client.connect()
    sub = sub_client.subscribe(ch)
    await sub.ready(20)
    acked = [await pub_client.publish(ch, {"n": i}) for i in range(30)]
    got = await take(sub, 30)
    assert [m.data["n"] for m in got] == list(range(30))
    assert [m.seq for m in got] == [a.seq for a in acked]
    assert not any(a.duplicate for a in acked)
    with pytest.raises(asyncio.TimeoutError):
        await sub.get(0.5)  # nothing twice
    await sub_client.close()
    await pub_client.close()


async def test_a_dropped_connection_resumes_with_nothing_lost_or_repeated(herald: Herald) -> None:
    ch = herald.channel()
    # A fixed one-second reconnect delay: the publishes below land while
    # the client is away.
    c = Client(herald.url, backoff_initial=1.0, random=lambda: 1.0)
    await c.connect()
    sub = c.subscribe(ch)
    await sub.ready(20)
    async with ServerApi(herald.http, API_KEY) as api:
        first = [await api.publish(ch, {"n": i}) for i in range(5)]
        assert [m.seq for m in await take(sub, 5)] == [a["seq"] for a in first]
        closed = asyncio.Event()
        c.on("closed", lambda _: closed.set())
        c.drop_connection()
        await asyncio.wait_for(closed.wait(), 5)
        assert c.state != "connected"
        during = [await api.publish(ch, {"n": 5 + i}) for i in range(10)]
    got = await take(sub, 10)
    assert [m.seq for m in got] == [a["seq"] for a in during]
    assert [m.data["n"] for m in got] == list(range(5, 15))
    with pytest.raises(asyncio.TimeoutError):
        await sub.get(0.5)
    await c.close()


async def test_a_rewind_delivers_the_recent_messages_then_resumes_from_its_position(
    herald: Herald,
) -> None:
    ch = herald.channel()
    c = Client(herald.url, backoff_initial=1.0, random=lambda: 1.0)
    async with ServerApi(herald.http, API_KEY) as api:
        before = [await api.publish(ch, {"n": i}) for i in range(8)]
        await c.connect()
        sub = c.subscribe(ch, rewind=3)
        await sub.ready(20)
        assert [m.seq for m in await take(sub, 3)] == [a["seq"] for a in before[5:]]
        # A reconnect resumes from the last message, not from a new rewind.
        closed = asyncio.Event()
        c.on("closed", lambda _: closed.set())
        c.drop_connection()
        await asyncio.wait_for(closed.wait(), 5)
        during = [await api.publish(ch, {"n": 8 + i}) for i in range(2)]
    assert [m.seq for m in await take(sub, 2)] == [a["seq"] for a in during]
    with pytest.raises(asyncio.TimeoutError):
        await sub.get(0.5)
    await c.close()


async def test_a_filtered_subscription_gets_only_tagged_matches_across_a_reconnect(herald: Herald) -> None:
    ch = herald.channel()
    c = Client(herald.url, backoff_initial=1.0, random=lambda: 1.0)
    await c.connect()
    sub = c.subscribe(ch, filter={"key": "kind", "in": ["goal", "card"]})
    await sub.ready(20)
    kinds = ["goal", "chat", "card", None, "goal"]

    async def publish_round(api: ServerApi, base: int) -> list[int]:
        want = []
        for i, kind in enumerate(kinds):
            tags = {"kind": kind} if kind else None
            if i % 2 == 0:
                r = await api.publish(ch, {"n": base + i}, tags=tags)
                seq = r["seq"]
            else:
                seq = (await c.publish(ch, {"n": base + i}, tags=tags)).seq
            if kind in ("goal", "card"):
                want.append(seq)
        return want

    async with ServerApi(herald.http, API_KEY) as api:
        want = await publish_round(api, 0)
        got = await take(sub, len(want))
        assert [m.seq for m in got] == want
        assert [m.tags for m in got] == [{"kind": "goal"}, {"kind": "card"}, {"kind": "goal"}]
        # Dropped and resumed from the last delivered seq: the filter goes
        # with the resume, and what it passed over stays passed over.
        closed = asyncio.Event()
        c.on("closed", lambda _: closed.set())
        c.drop_connection()
        await asyncio.wait_for(closed.wait(), 5)
        want = await publish_round(api, 10)
    assert [m.seq for m in await take(sub, len(want))] == want
    with pytest.raises(asyncio.TimeoutError):
        await sub.get(0.5)
    await c.close()


async def test_ephemeral_messages_reach_subscribers_as_events_and_are_not_kept(herald: Herald) -> None:
    ch = herald.channel()
    sender = Client(herald.url)
    receiver = Client(herald.url)
    assert sender.send_ephemeral(ch, {"typing": True}) is False, "not connected: not sent"
    await sender.connect()
    await receiver.connect()
    got: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    receiver.on("ephemeral", got.put_nowait)
    sub = receiver.subscribe(ch)
    await sub.ready(20)
    errors: list[dict[str, object]] = []
    sender.on("error", errors.append)
    for i in range(5):
        assert sender.send_ephemeral(ch, {"typing": i}, tags={"who": "ann"})
    frames = [await asyncio.wait_for(got.get(), 10) for _ in range(5)]
    assert [f["data"] for f in frames] == [{"typing": i} for i in range(5)]
    assert all("seq" not in f and f["tags"] == {"who": "ann"} for f in frames)
    # Nothing durable: no message, no history.
    with pytest.raises(asyncio.TimeoutError):
        await sub.get(0.5)
    page = await sender.history(ch, since_seq=-1)
    assert page["messages"] == []
    # A refused one (here: nobody may publish there) is an `error` event.
    sender.send_ephemeral("user:nobody", {"x": 1})
    deadline = asyncio.get_running_loop().time() + 10
    while not errors and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert errors and errors[0]["type"] == "publish_nack", errors
    await sender.close()
    await receiver.close()


async def test_a_publish_made_while_away_is_sent_on_reconnect_and_stored_once(herald: Herald) -> None:
    ch = herald.channel()
    c = Client(herald.url, backoff_initial=0.5, random=lambda: 1.0)
    await c.connect()
    closed = asyncio.Event()
    c.on("closed", lambda _: closed.set())
    c.drop_connection()
    await asyncio.wait_for(closed.wait(), 5)
    pid = str(uuid.uuid4())
    r = await asyncio.wait_for(c.publish(ch, {"away": True}, id=pid), 20)
    again = await c.publish(ch, {"away": True}, id=pid)
    assert (again.seq, again.duplicate) == (r.seq, True)
    page = await c.history(ch, since_seq=-1)
    assert [m["id"] for m in page["messages"]] == [pid]
    assert page["messages"][0]["seq"] == r.seq
    await c.close()


async def test_a_durable_cursor_resumes_on_a_new_client_after_what_was_processed(herald: Herald) -> None:
    ch = herald.channel()
    client_id = f"py-{uuid.uuid4().hex}"
    async with ServerApi(herald.http, API_KEY) as api:
        c = Client(herald.url, client_id=client_id, ack_interval=0.05)
        await c.connect()
        sub = c.subscribe(ch, durable=True)
        await sub.ready(20)
        first = [await api.publish(ch, {"n": i}) for i in range(5)]
        got = await take(sub, 5)
        assert [m.seq for m in got] == [a["seq"] for a in first]
        await asyncio.sleep(0.3)  # the batched ack is sent
        await c.close()
        await asyncio.sleep(0.5)  # and the node's cursor flush (100 ms here)
        later = [await api.publish(ch, {"n": 5 + i}) for i in range(5)]
    # A new client (no local positions) with the same id: from the cursor.
    c2 = Client(herald.url, client_id=client_id)
    await c2.connect()
    sub2 = c2.subscribe(ch, durable=True)
    got2 = await take(sub2, 5)
    assert [m.seq for m in got2] == [a["seq"] for a in later]
    with pytest.raises(asyncio.TimeoutError):
        await sub2.get(0.5)
    await c2.close()


async def test_history_presence_and_refusals(herald: Herald) -> None:
    ch = herald.channel()
    c = Client(herald.url, name="ada")
    await c.connect()
    await c.subscribe(ch).ready(20)
    seqs = [(await c.publish(ch, i)).seq for i in range(3)]
    page = await c.history(ch, since_seq=-1, limit=2)
    assert [m["seq"] for m in page["messages"]] == seqs[:2]
    assert page["done"] is False
    rest = await c.history(ch, since_seq=page["next"])
    assert [m["seq"] for m in rest["messages"]] == seqs[2:]
    members: list[dict[str, Any]] = []
    for _ in range(100):  # the member goes through Kafka's presence topic
        members = await c.presence(ch)
        if members:
            break
        await asyncio.sleep(0.1)
    assert [m.get("name") for m in members] == ["ada"]
    assert (await c.presence_stats(ch))["clients"] == 1
    with pytest.raises(HeraldError) as e:
        await c.publish("nowhere:x", 1)
    assert e.value.code == "unknown_namespace"
    with pytest.raises(HeraldError) as e:
        await c.history("user:someone-else")
    assert e.value.code == "unauthorized"
    with pytest.raises(HeraldError) as e:
        await c.subscribe("user:someone-else").ready(20)
    assert e.value.code == "unauthorized"
    await c.close()


async def test_a_refreshed_token_keeps_the_connection_past_the_first_tokens_expiry(herald: Herald) -> None:
    issued = []

    async def get_token() -> str:
        issued.append(1)
        return herald.token("py-refresh", ttl_secs=3)

    c = Client(herald.url, get_token=get_token, refresh_before=2.0)
    closes: list[Any] = []
    c.on("closed", closes.append)
    await c.connect()
    ch = herald.channel()
    sub = c.subscribe(ch)
    await sub.ready(20)
    await asyncio.sleep(4.5)  # past the first token's exp (leeway 0 here)
    assert closes == [] and c.state == "connected"
    assert len(issued) >= 2
    async with ServerApi(herald.http, API_KEY) as api:
        r = await api.publish(ch, {"dm": 1})
    m = await sub.get(10)
    assert m.seq == r["seq"]
    await c.close()


async def test_a_backend_disconnect_without_reconnect_closes_the_client(herald: Herald) -> None:
    c = Client(herald.url, token=herald.token("py-cut"))
    told: list[Any] = []
    c.on("disconnect", told.append)
    await c.connect()
    async with ServerApi(herald.http, API_KEY) as api:
        r = await api.disconnect("py-cut", reason="bye", reconnect=False)
    assert r["connections"] == 1
    await closed_within(c, 5)
    assert told and told[0]["reason"] == "bye"


async def test_a_revoked_token_closes_the_client_for_good(herald: Herald) -> None:
    c = Client(herald.url, token=herald.token("py-revoked"))
    closes: list[Any] = []
    c.on("closed", closes.append)
    await c.connect()
    async with ServerApi(herald.http, API_KEY) as api:
        r = await api.revoke(user="py-revoked")
    assert r["revoked"] == "user"
    await closed_within(c, 5)
    assert [x["code"] for x in closes] == [4011]


async def test_the_server_api(herald: Herald) -> None:
    ch = herald.channel()
    async with ServerApi(herald.http, API_KEY) as api:
        pid = str(uuid.uuid4())
        a = await api.publish(ch, {"x": 1}, id=pid)
        b = await api.publish(ch, {"x": 1}, id=pid, retry=True)
        assert (b["seq"], b["duplicate"]) == (a["seq"], True)
        pos = await api.position(ch)
        assert pos["position"]["seq"] == a["seq"]
        page = await api.history(ch, since_seq=-1)
        assert [m["id"] for m in page["messages"]] == [pid]
        other = herald.channel()
        bc = await api.broadcast([ch, other], {"all": True})
        assert bc["acked"] == 2 and bc["failed"] == 0
        nodes = await api.nodes()
        assert len(nodes["nodes"]) == 1
        with pytest.raises(ApiError) as e:
            await api.publish("bad channel", 1)
        assert (e.value.status, e.value.code) == (400, "bad_channel")
    async with ServerApi(herald.http, "wrong-key") as bad:
        with pytest.raises(ApiError) as e:
            await bad.nodes()
        assert e.value.status == 401


async def closed_within(c: Client, seconds: float) -> None:
    """Waits until the client closed for good."""
    for _ in range(int(seconds / 0.05)):
        if c.state == "closed":
            return
        await asyncio.sleep(0.05)
    assert c.state == "closed"


async def test_a_batch_frame_is_unpacked_in_order_and_batches_are_asked_for() -> None:
    c = Client("ws://herald.test/ws?x=1", client_id="c1")
    assert c._full_url() == "ws://herald.test/ws?x=1&client_id=c1&batch=true"
    sub = c.subscribe("chat:b")
    seen: list[Any] = []
    c.on("message", lambda m: seen.append(m.seq))
    c.on("join", lambda f: seen.append(f["type"]))

    def msg(seq: int) -> dict[str, Any]:
        return {"type": "message", "channel": "chat:b", "seq": seq, "epoch": "e", "id": "x", "ts": 0, "data": seq}

    join = {"type": "join", "channel": "chat:b", "member": {"conn": "n/1"}}
    await c._on_frame(json.dumps({"type": "batch", "frames": [msg(1), join, msg(2), msg(2)]}))
    await c._on_frame(json.dumps(msg(3)))
    assert seen == [1, "join", 2, 3], "in order, the repeated seq dropped"
    assert [(await sub.get(1)).seq for _ in range(3)] == [1, 2, 3]
