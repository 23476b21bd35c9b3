// Unit tests of the client's logic against a scripted transport (the real
// transports are tested in a real browser against a real herald: browser/).
import { test } from "node:test";
import assert from "node:assert/strict";
import { HeraldClient, backoffDelay, tokenExpiry } from "../dist/index.js";

/** A transport factory whose transports the test opens, feeds and closes. */
function scripted() {
  const made = [];
  const factory = (name, params, handlers) => {
    const t = {
      name,
      params,
      handlers,
      sent: [],
      closed: false,
      send(f) {
        this.sent.push(JSON.parse(JSON.stringify(f)));
      },
      close() {
        this.closed = true;
      },
      open() {
        handlers.open();
      },
      frame(f) {
        handlers.frame(f);
      },
      fail(code = 1006, opened = true) {
        handlers.close(code, "test", opened);
      },
    };
    made.push(t);
    return t;
  };
  return { made, factory };
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));
const msg = (channel, seq, epoch = "e1") => ({ type: "message", channel, seq, epoch, id: `id-${seq}`, ts: 0, data: { seq } });

function client(s, extra = {}) {
  return new HeraldClient({
    url: "http://herald.test",
    transportFactory: s.factory,
    backoffInitialMs: 1,
    backoffMaxMs: 2,
    ...extra,
  });
}

test("messages at or below the last processed seq are dropped", async () => {
  const s = scripted();
  const c = client(s);
  const got = [];
  c.on("message", (m) => got.push(m.seq));
  c.subscribe("chat:a");
  c.connect();
  await tick();
  s.made[0].open();
  s.made[0].frame({ type: "subscribed", channel: "chat:a", position: { seq: 3, epoch: "e1" }, recovered: false });
  for (const seq of [4, 5, 5, 4, 7, 6, 8]) s.made[0].frame(msg("chat:a", seq));
  assert.deepEqual(got, [4, 5, 7, 8]);
  assert.deepEqual(c.position("chat:a"), { seq: 8, epoch: "e1" });
  // A new epoch (the topic was re-created) starts over.
  s.made[0].frame(msg("chat:a", 0, "e2"));
  assert.deepEqual(got, [4, 5, 7, 8, 0]);
  c.close();
});

test("a rewind applies to the first subscribe; a reconnect resumes from the position", async () => {
  const s = scripted();
  const c = client(s);
  c.subscribe("chat:r", { rewind: 3 });
  c.connect();
  await tick();
  s.made[0].open();
  assert.deepEqual(s.made[0].sent[0], { type: "subscribe", channel: "chat:r", rewind: 3 });
  s.made[0].frame({ type: "subscribed", channel: "chat:r", position: { seq: 6, epoch: "e1" }, recovered: true });
  s.made[0].frame(msg("chat:r", 7));
  s.made[0].fail(1006, true);
  await tick(20);
  s.made[1].open();
  assert.deepEqual(s.made[1].sent[0], { type: "subscribe", channel: "chat:r", since: { seq: 7, epoch: "e1" } });
  c.close();
});

test("a filter goes with every subscribe of the channel; a publish carries its tags", async () => {
  const s = scripted();
  const c = client(s);
  const filter = { or: [{ key: "kind", eq: "goal" }, { not: { key: "team", exists: true } }] };
  c.subscribe("chat:f", { filter, rewind: 2 });
  c.connect();
  await tick();
  s.made[0].open();
  assert.deepEqual(s.made[0].sent[0], { type: "subscribe", channel: "chat:f", rewind: 2, filter });
  s.made[0].frame({ type: "subscribed", channel: "chat:f", position: { seq: 6, epoch: "e1" }, recovered: true });
  s.made[0].frame(msg("chat:f", 9));
  const id = "22222222-2222-4222-8222-222222222222";
  const p = c.publish("chat:f", { t: 1 }, { id, tags: { kind: "goal" } });
  assert.deepEqual(s.made[0].sent.at(-1), { type: "publish", channel: "chat:f", id, data: { t: 1 }, tags: { kind: "goal" } });
  c.publish("chat:f", 2, { tags: {} }).catch(() => {}); // rejected by the close below
  assert.equal(s.made[0].sent.at(-1).tags, undefined, "empty tags are not sent");
  s.made[0].fail(1006, true);
  await tick(20);
  s.made[1].open();
  assert.deepEqual(s.made[1].sent[0], { type: "subscribe", channel: "chat:f", since: { seq: 9, epoch: "e1" }, filter });
  assert.deepEqual(s.made[1].sent[1], { type: "publish", channel: "chat:f", id, data: { t: 1 }, tags: { kind: "goal" }, retry: true });
  s.made[1].frame({ type: "publish_ack", id, channel: "chat:f", seq: 10 });
  assert.deepEqual(await p, { seq: 10, duplicate: false });
  c.close();
});

test("an ephemeral message is sent once, never re-sent; received ones are events without a position", async () => {
  const s = scripted();
  const c = client(s);
  const got = [];
  const errors = [];
  c.on("ephemeral", (m) => got.push(m));
  c.on("error", (e) => errors.push(e));
  assert.equal(c.sendEphemeral("chat:e", { typing: true }), false, "not connected: not sent");
  c.subscribe("chat:e");
  c.connect();
  await tick();
  s.made[0].open();
  assert.equal(c.sendEphemeral("chat:e", { typing: true }, { tags: { kind: "typing" } }), true);
  const sent = s.made[0].sent.at(-1);
  assert.equal(sent.ephemeral, true);
  assert.deepEqual(sent.tags, { kind: "typing" });
  s.made[0].frame({ type: "subscribed", channel: "chat:e", position: { seq: 3, epoch: "e1" }, recovered: false });
  s.made[0].frame({ type: "ephemeral", channel: "chat:e", id: "x", ts: 1, data: { typing: "bob" } });
  s.made[0].frame({ type: "ephemeral", channel: "chat:other", id: "y", ts: 1, data: {} });
  assert.deepEqual(got, [{ channel: "chat:e", id: "x", ts: 1, data: { typing: "bob" } }]);
  assert.equal(c.position("chat:e").seq, 3, "an ephemeral message moves no position");
  s.made[0].frame({ type: "publish_nack", id: sent.id, channel: "chat:e", code: "bad_frame", reason: "off" });
  assert.deepEqual(errors, [{ code: "bad_frame", reason: "off", channel: "chat:e" }]);
  s.made[0].fail(1006, true);
  await tick(20);
  s.made[1].open();
  assert.equal(s.made[1].sent.filter((f) => f.type === "publish").length, 0, "not re-sent");
  c.close();
});

test("a reconnect resubscribes from the stored position and re-sends unanswered publishes once", async () => {
  const s = scripted();
  const c = client(s);
  c.subscribe("chat:a");
  c.subscribe("chat:d", { durable: true });
  c.connect();
  await tick();
  const t0 = s.made[0];
  t0.open();
  assert.deepEqual(t0.sent.slice(0, 2), [
    { type: "subscribe", channel: "chat:a" },
    { type: "subscribe", channel: "chat:d", since: "cursor", durable: true },
  ]);
  t0.frame({ type: "subscribed", channel: "chat:a", position: { seq: 9, epoch: "e1" }, recovered: false });
  t0.frame(msg("chat:a", 12));
  const p = c.publish("chat:a", { hello: 1 }, "11111111-1111-4111-8111-111111111111");
  assert.equal(t0.sent.at(-1).type, "publish");
  assert.equal(t0.sent.at(-1).retry, undefined);
  const states = [];
  c.on("state", (st) => states.push(st));
  t0.fail(1006, true);
  await tick(20);
  const t1 = s.made[1];
  assert.equal(t1.name, "websocket", "an opened transport is kept");
  t1.open();
  assert.deepEqual(t1.sent[0], { type: "subscribe", channel: "chat:a", since: { seq: 12, epoch: "e1" } });
  const again = t1.sent.find((f) => f.type === "publish");
  assert.equal(again.id, "11111111-1111-4111-8111-111111111111");
  assert.equal(again.retry, true);
  t1.frame({ type: "publish_ack", id: again.id, channel: "chat:a", seq: 13, duplicate: true });
  assert.deepEqual(await p, { seq: 13, duplicate: true });
  assert.deepEqual(states, ["disconnected", "connecting", "connected"]);
  c.close();
});

test("a personal channel's resume drops what the server's own subscription delivered first", async () => {
  const s = scripted();
  const c = client(s);
  const got = [];
  const subscribed = [];
  c.on("message", (m) => got.push(m.seq));
  c.on("subscribed", (e) => subscribed.push([e.recovered, e.auto]));
  c.subscribe("dm:alice");
  c.connect();
  await tick();
  const t0 = s.made[0];
  t0.open();
  t0.frame({ type: "subscribed", channel: "dm:alice", position: { seq: 1, epoch: "e1" }, recovered: false });
  t0.frame(msg("dm:alice", 2));
  t0.fail(1006, true);
  await tick(20);
  const t1 = s.made[1];
  t1.open();
  assert.deepEqual(t1.sent[0], { type: "subscribe", channel: "dm:alice", since: { seq: 2, epoch: "e1" } });
  // The server subscribed us itself (live, at 3) before reading our resume,
  // and delivered 4 live: 3 was published while we were away.
  t1.frame({ type: "subscribed", channel: "dm:alice", position: { seq: 3, epoch: "e1" }, recovered: false, auto: true });
  t1.frame(msg("dm:alice", 4));
  // Our resume's answer, then everything after 2, in order.
  t1.frame({ type: "subscribed", channel: "dm:alice", position: { seq: 4, epoch: "e1" }, recovered: true });
  for (const seq of [3, 4, 5]) t1.frame(msg("dm:alice", seq));
  assert.deepEqual(got, [2, 3, 4, 5]);
  assert.deepEqual(subscribed, [[false, false], [true, false]]);
  c.close();
});

test("a transport that never opens falls back to the next at once", async () => {
  const s = scripted();
  const c = client(s);
  const transports = [];
  c.on("transport", (n) => transports.push(n));
  c.connect();
  await tick();
  s.made[0].fail(4000, false);
  await tick();
  assert.equal(s.made[1].name, "sse");
  s.made[1].open();
  assert.equal(c.transportName, "sse");
  assert.deepEqual(transports, ["sse"]);
  // Later drops keep SSE.
  s.made[1].fail(1006, true);
  await tick(20);
  assert.equal(s.made[2].name, "sse");
  c.close();
});

test("every transport failing backs off, then starts the round again", async () => {
  const s = scripted();
  const c = client(s, { transports: ["websocket", "sse"], backoffInitialMs: 30, backoffMaxMs: 30, random: () => 1 });
  c.connect();
  await tick();
  s.made[0].fail(4000, false);
  await tick();
  s.made[1].fail(4000, false);
  await tick(5);
  assert.equal(s.made.length, 2, "waits before the next round");
  await tick(50);
  assert.equal(s.made[2].name, "websocket");
  c.close();
});

test("backoff is full jitter under an exponential ceiling", () => {
  assert.equal(backoffDelay(0, 100, 10_000, () => 0.999999), 99);
  assert.equal(backoffDelay(3, 100, 10_000, () => 0.5), 400);
  assert.equal(backoffDelay(20, 100, 10_000, () => 0.5), 5000);
  assert.equal(backoffDelay(5, 100, 10_000, () => 0), 0);
});

test("the server's reconnect hint sets the next delay", async () => {
  const s = scripted();
  const c = client(s, { backoffInitialMs: 10_000, backoffMaxMs: 10_000, random: () => 1 });
  const hints = [];
  c.on("reconnect", (h) => hints.push(h.after_ms));
  c.connect();
  await tick();
  s.made[0].open();
  s.made[0].frame({ type: "reconnect", after_ms: 5 });
  s.made[0].fail(1001, true);
  await tick(40);
  assert.deepEqual(hints, [5]);
  assert.equal(s.made.length, 2, "reconnected after the hint, not the 10 s backoff");
  c.close();
});

test("positions persist in storage and a new client resumes from them", async () => {
  const store = new Map();
  const storage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v) };
  const s = scripted();
  const c = client(s, { storage });
  c.subscribe("chat:p");
  c.connect();
  await tick();
  s.made[0].open();
  s.made[0].frame({ type: "subscribed", channel: "chat:p", position: { seq: 1, epoch: "e1" }, recovered: false });
  s.made[0].frame(msg("chat:p", 2));
  c.close();
  const s2 = scripted();
  const c2 = client(s2, { storage });
  c2.subscribe("chat:p");
  c2.connect();
  await tick();
  s2.made[0].open();
  assert.deepEqual(s2.made[0].sent[0], { type: "subscribe", channel: "chat:p", since: { seq: 2, epoch: "e1" } });
  // A recovered subscribe keeps our position (its `position` is the live end).
  s2.made[0].frame({ type: "subscribed", channel: "chat:p", position: { seq: 40, epoch: "e1" }, recovered: true });
  assert.deepEqual(c2.position("chat:p"), { seq: 2, epoch: "e1" });
  c2.close();
});

test("durable subscriptions ack what was processed, batched", async () => {
  const s = scripted();
  const c = client(s, { ackIntervalMs: 10 });
  c.subscribe("chat:d", { durable: true });
  c.connect();
  await tick();
  s.made[0].open();
  s.made[0].frame({ type: "subscribed", channel: "chat:d", position: { seq: 3, epoch: "e1" }, recovered: true });
  for (const seq of [1, 2, 3]) s.made[0].frame(msg("chat:d", seq));
  await tick(30);
  assert.deepEqual(
    s.made[0].sent.filter((f) => f.type === "ack"),
    [{ type: "ack", channel: "chat:d", seq: 3 }],
  );
  c.close();
});

test("tokens: fetched per connect, refreshed before expiry", async () => {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  let n = 0;
  const exp = Math.floor(Date.now() / 1000) + 2;
  const getToken = () => `${b64({ alg: "HS256" })}.${b64({ sub: "u", exp, n: n++ })}.sig`;
  assert.equal(tokenExpiry(getToken()), exp);
  assert.equal(tokenExpiry("garbage"), null);
  const s = scripted();
  const c = client(s, { getToken, refreshBeforeMs: 1_000_000 });
  c.connect();
  await tick();
  assert.match(s.made[0].params.token, /\./);
  s.made[0].open();
  await tick(1_100);
  const refresh = s.made[0].sent.find((f) => f.type === "refresh");
  assert.ok(refresh, "a refresh frame was sent");
  assert.notEqual(refresh.token, s.made[0].params.token);
  c.close();
});

test("requests are answered by id; a refusal rejects with its code", async () => {
  const s = scripted();
  const c = client(s);
  c.connect();
  await tick();
  s.made[0].open();
  const h = c.history("chat:h", { limit: 2 });
  const req = s.made[0].sent.at(-1);
  assert.equal(req.type, "history");
  assert.equal(req.limit, 2);
  s.made[0].frame({ type: "history", id: req.id, channel: "chat:h", epoch: "e1", messages: [], next: null, done: true });
  assert.equal((await h).done, true);
  const pr = c.presence("chat:x");
  const preq = s.made[0].sent.at(-1);
  s.made[0].frame({ type: "error", id: preq.id, code: "unauthorized", reason: "no" });
  await assert.rejects(pr, (e) => e.code === "unauthorized");
  const pub = c.publish("chat:x", 1);
  const pf = s.made[0].sent.at(-1);
  s.made[0].frame({ type: "publish_nack", id: pf.id, channel: "chat:x", code: "too_large", reason: "big" });
  await assert.rejects(pub, (e) => e.code === "too_large");
  c.close();
});

test("a disconnect frame without reconnect closes for good", async () => {
  const s = scripted();
  const c = client(s);
  const seen = [];
  c.on("disconnect", (d) => seen.push(d.code));
  c.connect();
  await tick();
  s.made[0].open();
  s.made[0].frame({ type: "disconnect", code: 4010, reason: "banned", reconnect: false });
  s.made[0].fail(4010, true);
  await tick(20);
  assert.deepEqual(seen, [4010]);
  assert.equal(c.state, "closed");
  assert.equal(s.made.length, 1);
});

test("a revoked token (close 4011) closes for good, unless getToken can give a new one", async () => {
  const s = scripted();
  const c = client(s);
  c.connect();
  await tick();
  s.made[0].open();
  s.made[0].fail(4011, true);
  await tick(20);
  assert.equal(c.state, "closed");
  assert.equal(s.made.length, 1);

  const s2 = scripted();
  let asked = 0;
  const c2 = client(s2, { getToken: async () => `t${++asked}` });
  c2.connect();
  await tick();
  s2.made[0].open();
  s2.made[0].fail(4011, true);
  await tick(20);
  assert.equal(s2.made.length, 2, "reconnected with a new token");
  assert.equal(asked, 2);
  c2.close();
});

test("options given as undefined keep their defaults", async () => {
  const s = scripted();
  const c = client(s, { transports: undefined, openTimeoutMs: undefined });
  c.connect();
  await tick();
  assert.equal(s.made[0].name, "websocket");
  assert.equal(s.made[0].params.openTimeoutMs, 5000);
  c.close();
});

test("the WebSocket transport asks for batches and hands their frames over one by one, in order", async () => {
  const { webSocketTransport } = await import("../dist/transport.js");
  const made = [];
  globalThis.WebSocket = class {
    constructor(url) {
      this.url = url;
      this.readyState = 1;
      made.push(this);
    }
    send() {}
    close() {}
  };
  try {
    const frames = [];
    const t = webSocketTransport(
      { url: "http://herald.test", clientId: "c1", openTimeoutMs: 1000 },
      { open() {}, frame: (f) => frames.push(f), close() {} },
    );
    const ws = made[0];
    assert.match(ws.url, /^ws:\/\/herald\.test\/ws\?batch=true&client_id=c1$/);
    ws.onopen();
    ws.onmessage({ data: JSON.stringify({ type: "batch", frames: [msg("chat:a", 1), { type: "join", channel: "chat:a", member: { conn: "n/1" } }, msg("chat:a", 2)] }) });
    ws.onmessage({ data: JSON.stringify(msg("chat:a", 3)) });
    assert.deepEqual(frames.map((f) => f.seq ?? f.type), [1, "join", 2, 3]);
    t.close();
  } finally {
    delete globalThis.WebSocket;
  }
});
