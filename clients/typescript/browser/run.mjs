// Browser scenarios: Debian's Chromium, headless, driven by playwright-core,
// against a running herald that serves the demo (crates/herald/tests/browser.rs
// starts one and runs this file). Environment:
//   HERALD_URL      http://127.0.0.1:PORT of that herald
//   HERALD_SECRET   its auth.hs256_secret (tokens for the refresh scenario)
//   HERALD_API_KEY  its auth.api_key (publishes and a disconnect "from the backend")
//   CHROMIUM        the browser binary (default /usr/bin/chromium)
//   HERALD_SCREENSHOT  where to write a screenshot of the demo (optional)
// Exits non-zero on the first failed check.
import { chromium } from "playwright-core";
import { createHmac, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";

const URL_BASE = process.env.HERALD_URL;
const SECRET = process.env.HERALD_SECRET;
const API_KEY = process.env.HERALD_API_KEY;
assert.ok(URL_BASE, "HERALD_URL is required");
const run = randomUUID().slice(0, 8);
const CH = `chat:browser-${run}`;

const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
function mint(sub, ttlSecs) {
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub, exp: Math.floor(Date.now() / 1000) + ttlSecs });
  const sig = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

const userDataDir = mkdtempSync(join(tmpdir(), "herald-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  viewport: { width: 1000, height: 640 },
});

const failures = [];
async function scenario(name, fn) {
  const started = Date.now();
  try {
    await fn();
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    failures.push(name);
    console.log(`FAIL ${name}: ${e.stack || e}`);
  }
}

/** Opens the demo as `name` on `channel`; resolves once subscribed. */
async function openDemo(name, { channel = CH, query = "", blockWebSocket = false, init } = {}) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.log(`[${name}] page error: ${e}`));
  if (blockWebSocket) {
    // As on a network whose proxy refuses WebSocket: the page has none.
    await page.addInitScript(() => {
      delete window.WebSocket;
    });
  }
  if (init) await init(page);
  await page.goto(`${URL_BASE}/demo/?name=${name}&channel=${encodeURIComponent(channel)}${query}`);
  await subscribed(page, channel);
  return page;
}

async function subscribed(page, channel = CH) {
  await page.waitForFunction(
    // (A rewind has no position of its own before its first message.)
    (ch) => window.herald && window.herald.state === "connected" && window.heraldSubscribed?.has(ch),
    channel,
    { timeout: 20_000 },
  );
}

/** Messages the page's client handed to the application, on `channel`. */
const received = (page, channel = CH) =>
  page.evaluate((ch) => window.heraldLog.filter((m) => m.channel === ch), channel);

async function waitFor(page, channel, n) {
  await page.waitForFunction(
    ({ ch, n }) => window.heraldLog.filter((m) => m.channel === ch).length >= n,
    { ch: channel, n },
    { timeout: 20_000 },
  );
}

/** Publishes `texts` from `page`, each acked before the next. */
async function publish(page, texts, channel = CH) {
  return page.evaluate(
    async ({ ch, texts }) => {
      const seqs = [];
      for (const text of texts) seqs.push((await window.herald.publish(ch, { name: "script", text })).seq);
      return seqs;
    },
    { ch: channel, texts },
  );
}

/** Exactly `want` (texts) arrived after `before` messages, in order, once each. */
function exactlyOnce(all, before, want) {
  const after = all.slice(before);
  assert.deepEqual(
    after.map((m) => m.data.text),
    want,
    "each message exactly once and in order",
  );
  const seqs = all.map((m) => m.seq);
  for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], `seqs increase: ${seqs}`);
}

const alice = await openDemo("alice");
const bob = await openDemo("bob");

await scenario("two pages chat through the demo's form", async () => {
  await alice.fill("#text", "hello from alice");
  await alice.press("#text", "Enter");
  await waitFor(bob, CH, 1);
  await bob.waitForSelector("text=hello from alice");
  const got = await received(bob);
  assert.equal(got[0].data.text, "hello from alice");
  assert.equal(got[0].data.name, "alice");
  // The member list (presence) shows both.
  await alice.waitForFunction(() => document.querySelector("#members").textContent.includes("bob"), null, {
    timeout: 10_000,
  });
});

await scenario("a page offline misses nothing and sees nothing twice", async () => {
  const before = (await received(bob)).length;
  await bob.check("#offline");
  await bob.waitForFunction(() => window.herald.state === "disconnected");
  const texts = ["o1", "o2", "o3", "o4", "o5"];
  await publish(alice, texts);
  await bob.uncheck("#offline");
  await waitFor(bob, CH, before + texts.length);
  await new Promise((r) => setTimeout(r, 500)); // anything extra would show now
  exactlyOnce(await received(bob), before, texts);
});

if (process.env.HERALD_SCREENSHOT) {
  await alice.screenshot({ path: process.env.HERALD_SCREENSHOT });
}

await scenario("a reloaded page resumes from the positions it stored", async () => {
  await bob.evaluate(() => window.herald.disconnect());
  const stored = await bob.evaluate(() => window.localStorage.getItem("herald:positions:bob"));
  assert.ok(stored && stored.includes(CH), `positions stored: ${stored}`);
  const texts = ["r1", "r2", "r3"];
  await publish(alice, texts);
  await bob.reload();
  await subscribed(bob);
  await waitFor(bob, CH, texts.length);
  await new Promise((r) => setTimeout(r, 500));
  exactlyOnce(await received(bob), 0, texts);
});

await scenario("WebSocket blocked: the client falls back to SSE, publishes and resumes", async () => {
  const carol = await openDemo("carol", { blockWebSocket: true });
  assert.equal(await carol.evaluate(() => window.herald.transportName), "sse");
  await carol.waitForSelector("#transport:text('sse')");
  const before = (await received(alice)).length;
  await carol.fill("#text", "from carol over sse");
  await carol.press("#text", "Enter");
  await waitFor(alice, CH, before + 1);
  assert.equal((await received(alice)).at(-1).data.text, "from carol over sse");
  // Offline and back, over SSE.
  const mine = (await received(carol)).length;
  await carol.check("#offline");
  await carol.waitForFunction(() => window.herald.state === "disconnected");
  const texts = ["s1", "s2", "s3"];
  await publish(alice, texts);
  await carol.uncheck("#offline");
  await waitFor(carol, CH, mine + texts.length);
  await new Promise((r) => setTimeout(r, 500));
  exactlyOnce(await received(carol), mine, texts);
  assert.equal(await carol.evaluate(() => window.herald.transportName), "sse");
  await carol.close();
});

await scenario("a bare EventSource's own reconnect (Last-Event-ID) resumes every channel", async () => {
  // No herald client here: the browser's EventSource alone, on two
  // channels. The server ends the stream (an admin disconnect of the user,
  // reconnects allowed); the browser reconnects by itself with
  // Last-Event-ID and the stream resumes where it stopped.
  assert.ok(SECRET && API_KEY, "HERALD_SECRET and HERALD_API_KEY are required");
  const [c1, c2] = [`${CH}-es1`, `${CH}-es2`];
  const page = await context.newPage();
  await page.goto(`${URL_BASE}/demo/dist/index.js`);
  const token = mint("frank", 600);
  await page.evaluate(
    ({ c1, c2, token }) => {
      window.got = [];
      window.opens = 0;
      window.subscribed = 0;
      const es = new EventSource(`/sse?channel=${c1}&channel=${c2}&token=${token}`);
      es.onopen = () => (window.opens += 1);
      es.onmessage = (ev) => {
        const f = JSON.parse(ev.data);
        if (f.type === "message") window.got.push({ channel: f.channel, seq: f.seq, text: f.data.text });
        if (f.type === "subscribed") window.subscribed += 1;
      };
    },
    { c1, c2, token },
  );
  await page.waitForFunction(() => window.subscribed >= 2, null, { timeout: 10_000 });
  const api = async (path, body) => {
    const res = await fetch(`${URL_BASE}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-api-key": API_KEY },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    assert.equal(res.status, 200, `${path}: ${text}`);
    return JSON.parse(text);
  };
  const sent = [];
  const send = async (i) => {
    const channel = i % 2 ? c2 : c1;
    const r = await api("/api/publish", { channel, data: { text: `e${i}` } });
    sent.push({ channel, seq: r.seq, text: `e${i}` });
  };
  for (let i = 0; i < 6; i++) await send(i);
  await page.waitForFunction(() => window.got.length >= 6, null, { timeout: 10_000 });
  await api("/api/disconnect", { user: "frank", code: 4000, reconnect: true });
  // While the browser is away (it waits `retry`, 1 s), more messages.
  for (let i = 6; i < 12; i++) await send(i);
  await page.waitForFunction(() => window.got.length >= 12 && window.opens >= 2, null, { timeout: 15_000 });
  await new Promise((r) => setTimeout(r, 500));
  const got = await page.evaluate(() => window.got);
  for (const ch of [c1, c2]) {
    assert.deepEqual(
      got.filter((m) => m.channel === ch),
      sent.filter((m) => m.channel === ch),
      `${ch}: every message once, in order, across the reconnect`,
    );
  }
  await page.close();
});

await scenario("long-polling carries the same protocol", async () => {
  const dave = await openDemo("dave", { query: "&transports=poll" });
  assert.equal(await dave.evaluate(() => window.herald.transportName), "poll");
  const before = (await received(dave)).length;
  const texts = ["p1", "p2"];
  await publish(alice, texts);
  await waitFor(dave, CH, before + texts.length);
  exactlyOnce(await received(dave), before, texts);
  const seq = (await publish(dave, ["from dave over poll"]))[0];
  assert.ok(seq >= 0);
  await dave.close();
});

await scenario("a first visit to a room shows its recent messages (rewind), then live ones", async () => {
  const channel = `chat:rewind-${run}`;
  const texts = ["earlier 1", "earlier 2", "earlier 3"];
  await publish(alice, texts, channel);
  const frank = await openDemo("frank", { channel });
  await waitFor(frank, channel, texts.length);
  await frank.waitForSelector("text=earlier 3");
  await publish(alice, ["live"], channel);
  await waitFor(frank, channel, texts.length + 1);
  await new Promise((r) => setTimeout(r, 500));
  exactlyOnce(await received(frank, channel), 0, [...texts, "live"]);
  await frank.close();
});

await scenario("typing shows an indicator on the other page (ephemeral), and nothing is kept", async () => {
  const before = (await received(bob)).length;
  await alice.type("#text", "typing…");
  await bob.waitForFunction(() => document.querySelector("#typing").textContent.includes("alice"), null, {
    timeout: 10_000,
  });
  const eph = await bob.evaluate(() => window.heraldEphemeral.filter((m) => m.data?.name === "alice"));
  assert.ok(eph.length >= 1, "an ephemeral frame arrived");
  assert.equal(eph[0].seq, undefined, "it has no seq");
  await alice.fill("#text", "");
  // No message, no history: the indicator went through as ephemeral only.
  assert.equal((await received(bob)).length, before);
  const page = await alice.evaluate((ch) => window.herald.history(ch, { limit: 100 }), CH);
  assert.ok(!page.messages.some((m) => m.data?.typing), "not in history");
});

await scenario("a token expiring mid-session is refreshed without a reconnect", async () => {
  assert.ok(SECRET, "HERALD_SECRET is required");
  let minted = 0;
  const channel = `room:vip-${run}`;
  const erin = await openDemo("erin", {
    channel,
    // 4 s tokens, refreshed 2.5 s before they expire.
    query: "&refresh_before_ms=2500",
    init: async (page) => {
      await page.exposeFunction("heraldMintToken", () => {
        minted += 1;
        return mint("erin", 4);
      });
      await page.addInitScript(() => {
        window.heraldGetToken = () => window.heraldMintToken();
        window.heraldStates = [];
      });
    },
  });
  await erin.evaluate(() => window.herald.on("state", (s) => window.heraldStates.push(s)));
  // Well past the first token's expiry (the server has no leeway here).
  await new Promise((r) => setTimeout(r, 7_000));
  assert.deepEqual(await erin.evaluate(() => window.heraldStates), [], "no reconnect");
  assert.ok(minted >= 3, `tokens minted: ${minted}`);
  const seq = (await publish(erin, ["still here"], channel))[0];
  await waitFor(erin, channel, 1);
  assert.equal((await received(erin, channel))[0].seq, seq);
  await erin.close();
});

await context.close();
rmSync(userDataDir, { recursive: true, force: true });
if (failures.length > 0) {
  console.log(`${failures.length} browser scenario(s) failed: ${failures.join(", ")}`);
  process.exit(1);
}
console.log("all browser scenarios passed");
