// herald's browser client. One object per page: it connects over WebSocket
// (falling back to Server-Sent Events, then long-polling, by itself),
// reconnects with full-jitter exponential backoff, resubscribes every channel
// from the last position it processed and drops anything at or below it, so
// the application sees each message once and in order per channel.
//
// Files: transport.ts (WebSocket, SSE, long-poll), protocol.ts (what is kept
// across connections: positions, pending publishes and requests), types.ts
// (the public types), frames.*.ts (the frames, generated from schemas/),
// this file (the connection's life and the public API).

import type { CHistory, ClientFrame, CPresence, CPresenceStats, CPublish } from "./frames.client.js";
import type { ServerFrame } from "./frames.server.js";
import { ProtocolState, type PendingPublish } from "./protocol.js";
import { defaultTransportFactory, type Frame, type Transport, type TransportName } from "./transport.js";
import {
  HeraldError,
  type Events,
  type HistoryPage,
  type HistoryQuery,
  type Member,
  type Options,
  type Position,
  type PublishOptions,
  type State,
  type SubscribeOptions,
} from "./types.js";

export type { Frame, Transport, TransportFactory, TransportName } from "./transport.js";
export type { ClientFrame, CFilter as Filter, CTags as Tags } from "./frames.client.js";
export type { ServerFrame } from "./frames.server.js";
export * from "./types.js";

type Listener<T> = (v: T) => void;

/** Close code: the connection's token was revoked (`POST /api/revoke`). */
export const CLOSE_TOKEN_REVOKED = 4011;

/** Decodes a JWT's `exp` (seconds), or null. */
export function tokenExpiry(token: string): number | null {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const json = JSON.parse(atob(padded));
    return typeof json.exp === "number" ? json.exp : null;
  } catch {
    return null;
  }
}

/** Full jitter: uniformly random in [0, min(max, initial * 2^attempt)]. */
export function backoffDelay(attempt: number, initialMs: number, maxMs: number, random: () => number): number {
  const ceiling = Math.min(maxMs, initialMs * Math.pow(2, Math.min(attempt, 30)));
  return Math.floor(random() * ceiling);
}

function uuid(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const b = new Uint8Array(16);
  for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export class HeraldClient {
  private opts: Required<Omit<Options, "getToken" | "clientId" | "name" | "storage" | "transportFactory">> & Options;
  private listeners = new Map<keyof Events, Set<Listener<unknown>>>();
  private transport: Transport | null = null;
  private _state: State = "disconnected";
  private _transportName: TransportName | null = null;
  /** Index into `transports` of the one being tried. */
  private tIndex = 0;
  /** Failed attempts since the last open. */
  private attempt = 0;
  private failedInRound = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  private ackTimer: ReturnType<typeof setTimeout> | null = null;
  private nextDelayMs: number | null = null;
  private st: ProtocolState;
  private token: string | undefined;
  private stopped = false;

  constructor(options: Options) {
    this.opts = {
      transports: ["websocket", "sse", "poll"],
      backoffInitialMs: 250,
      backoffMaxMs: 10_000,
      openTimeoutMs: 5_000,
      refreshBeforeMs: 30_000,
      storageKey: "herald:positions",
      ackIntervalMs: 200,
      random: Math.random,
      // Options given as `undefined` keep their defaults.
      ...(Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as Options),
    };
    this.st = new ProtocolState(this.opts.storage, this.opts.storageKey);
  }

  get state(): State {
    return this._state;
  }

  /** The transport in use (or last used). */
  get transportName(): TransportName | null {
    return this._transportName;
  }

  /** The last processed position of each channel. */
  position(channel: string): Position | undefined {
    const p = this.st.positions.get(channel);
    return p ? { ...p } : undefined;
  }

  on<K extends keyof Events>(event: K, fn: Listener<Events[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(fn as Listener<unknown>);
    return () => set!.delete(fn as Listener<unknown>);
  }

  private emit<K extends keyof Events>(event: K, value: Events[K]) {
    for (const fn of this.listeners.get(event) ?? []) {
      try {
        fn(value);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  private setState(s: State) {
    if (this._state === s) return;
    this._state = s;
    this.emit("state", s);
  }

  connect(): void {
    this.stopped = false;
    if (this.transport || this.reconnectTimer) return;
    void this.open();
  }

  /** Closes for good; pending publishes and requests are rejected. */
  close(): void {
    this.stop();
    this.st.rejectAll(new HeraldError("closed", "the client was closed"));
    this.setState("closed");
  }

  /** Stops: acks flushed, timers cleared, the transport closed, nothing
   *  reconnects until `connect()`. */
  private stop() {
    this.flushAcksNow();
    this.stopped = true;
    this.clearTimers();
    const t = this.transport;
    this.transport = null;
    t?.close();
  }

  subscribe(channel: string, options: SubscribeOptions = {}): void {
    this.st.subs.set(channel, options);
    if (this._state === "connected") this.send(this.st.subscribeFrame(channel));
  }

  unsubscribe(channel: string): void {
    this.st.subs.delete(channel);
    this.st.pendingAcks.delete(channel);
    if (this._state === "connected") this.transport?.send({ type: "unsubscribe", channel });
  }

  /**
   * Publishes `data`; resolves with the `seq` once Kafka has it. Survives
   * reconnects: an unanswered publish is re-sent with the same id and
   * `retry: true`, so it is appended once. The third argument is the id,
   * or `{ id, tags }`.
   */
  publish(
    channel: string,
    data: unknown,
    idOrOptions: string | PublishOptions = {},
  ): Promise<{ seq: number; duplicate: boolean }> {
    const o = typeof idOrOptions === "string" ? { id: idOrOptions } : idOrOptions;
    const id = o.id ?? uuid();
    const frame: CPublish = { type: "publish", channel, id, data };
    if (o.tags && Object.keys(o.tags).length > 0) frame.tags = o.tags;
    return new Promise((resolve, reject) => {
      const p: PendingPublish = { frame, resolve, reject, sent: false };
      this.st.publishes.set(id, p);
      if (this._state === "connected") this.sendPublish(p);
    });
  }

  /**
   * Sends an ephemeral message (a typing indicator, a cursor): fanned out
   * to the channel's subscribers on every node, but not kept, with no
   * `seq`, and not re-sent after a reconnect (namespaces with `ephemeral =
   * true`; docs/protocol.md, "Ephemeral messages"). Subscribers get it as
   * an `ephemeral` event; a refusal comes back as an `error` event. Returns
   * false when not connected (nothing was sent).
   */
  sendEphemeral(channel: string, data: unknown, options: Omit<PublishOptions, "id"> = {}): boolean {
    if (this._state !== "connected" || !this.transport) return false;
    const frame: CPublish = { type: "publish", channel, id: uuid(), data, ephemeral: true };
    if (options.tags && Object.keys(options.tags).length > 0) frame.tags = options.tags;
    this.transport.send(frame);
    return true;
  }

  /** Marks everything up to `seq` processed (durable subscriptions). */
  ack(channel: string, seq: number): void {
    this.st.ack(channel, seq);
    if (!this.ackTimer) {
      this.ackTimer = setTimeout(() => {
        this.ackTimer = null;
        this.flushAcksNow();
      }, this.opts.ackIntervalMs);
    }
  }

  history(channel: string, query: HistoryQuery = {}): Promise<HistoryPage> {
    return this.request({ type: "history", channel, ...query }, "history");
  }

  async presence(channel: string): Promise<Member[]> {
    const f = await this.request({ type: "presence", channel }, "presence");
    return f.members ?? [];
  }

  async presenceStats(channel: string): Promise<{ clients: number; users: number }> {
    const f = await this.request({ type: "presence_stats", channel }, "presence_stats");
    return { clients: f.clients, users: f.users };
  }

  /** Sends a request with a fresh id; resolves with its answer, which must
   *  be a frame of type `answer`. */
  private request<T extends ServerFrame["type"]>(
    frame: CHistory | CPresence | CPresenceStats,
    answer: T,
  ): Promise<Extract<ServerFrame, { type: T }>> {
    return new Promise((resolve, reject) => {
      const id = uuid();
      const full = { ...frame, id };
      const done = (f: ServerFrame) =>
        f.type === answer
          ? resolve(f as Extract<ServerFrame, { type: T }>)
          : reject(new HeraldError("internal", `a ${f.type} frame answered a ${frame.type} request`));
      this.st.requests.set(id, { resolve: done, reject, frame: full });
      if (this._state === "connected") this.send(full);
    });
  }

  // --- connection -------------------------------------------------------

  private async open() {
    if (this.stopped) return;
    this.setState("connecting");
    if (this.opts.getToken) {
      try {
        this.token = await this.opts.getToken();
      } catch (e) {
        this.scheduleReconnect(`getToken failed: ${String(e)}`);
        return;
      }
      if (this.stopped) return;
    }
    const name = this.opts.transports[this.tIndex % this.opts.transports.length];
    const factory = this.opts.transportFactory ?? defaultTransportFactory;
    let current: Transport | null = null;
    current = factory(
      name,
      {
        url: this.opts.url,
        token: this.token,
        clientId: this.opts.clientId,
        name: this.opts.name,
        openTimeoutMs: this.opts.openTimeoutMs,
      },
      {
        open: () => {
          if (this.transport !== current) return;
          this.onOpen(name);
        },
        frame: (f) => {
          if (this.transport !== current) return;
          this.onFrame(f);
        },
        close: (code, reason, opened) => {
          if (this.transport !== current) return;
          this.transport = null;
          this.onClose(code, reason, opened);
        },
      },
    );
    this.transport = current;
  }

  private onOpen(name: TransportName) {
    this.attempt = 0;
    this.failedInRound = 0;
    if (this._transportName !== name) {
      this._transportName = name;
      this.emit("transport", name);
    }
    this.setState("connected");
    this.armRefresh();
    for (const f of this.st.onOpen()) this.send(f);
    this.flushAcksNow();
  }

  private onClose(code: number, reason: string, opened: boolean) {
    this.clearTimer("refreshTimer");
    this.st.onConnectionLost();
    this.emit("closed", { code, reason });
    if (code === CLOSE_TOKEN_REVOKED && !this.opts.getToken) {
      // The token was revoked: the same one would be refused, so this is
      // the end (with getToken, the reconnect asks for a new one).
      this.close();
      return;
    }
    if (this.stopped) {
      this.setState("closed");
      return;
    }
    if (!opened) {
      // Never opened: try the next transport at once, and back off only
      // once every transport failed in a row.
      this.failedInRound += 1;
      this.tIndex = (this.tIndex + 1) % this.opts.transports.length;
      if (this.failedInRound < this.opts.transports.length) {
        this.setState("disconnected");
        void this.open();
        return;
      }
      this.failedInRound = 0;
    }
    this.scheduleReconnect(reason);
  }

  private scheduleReconnect(_why: string) {
    this.setState("disconnected");
    if (this.stopped) return;
    const delay =
      this.nextDelayMs ??
      backoffDelay(this.attempt, this.opts.backoffInitialMs, this.opts.backoffMaxMs, this.opts.random);
    this.nextDelayMs = null;
    this.attempt += 1;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      void this.open();
    }, delay);
  }

  /** Goes offline until `connect()`: the transport is closed, unanswered
   *  publishes and requests wait (and are re-sent on the next connect). */
  disconnect(): void {
    this.stop();
    this.st.onConnectionLost();
    this.setState("disconnected");
  }

  /** Simulates a network loss (tests, the demo's "go offline"): the
   *  transport is dropped and the client reconnects as it would. */
  dropConnection(): void {
    const t = this.transport;
    this.transport = null;
    t?.close();
    if (t) this.onClose(1006, "dropped", true);
  }

  // --- frames -----------------------------------------------------------

  private send(f: ClientFrame) {
    this.transport?.send(f);
  }

  private sendPublish(p: PendingPublish) {
    p.sent = true;
    this.send(p.frame);
  }

  private flushAcksNow() {
    this.clearTimer("ackTimer");
    if (this._state !== "connected" || !this.transport) return;
    for (const a of this.st.takeAcks()) this.send(a);
  }

  private onFrame(raw: Frame) {
    // Shapes as schemas/frames.server.json says (frames.server.ts is
    // generated from it); a type this client does not know is ignored.
    const f = raw as ServerFrame;
    switch (f.type) {
      case "message":
        if (this.st.accept(f)) {
          const { type: _, ...m } = f;
          this.emit("message", m);
          if (this.st.subs.get(f.channel)?.durable) this.ack(f.channel, f.seq);
        }
        return;
      case "subscribed":
        if (this.st.onSubscribed(f)) {
          const { channel, position, recovered } = f;
          this.emit("subscribed", { channel, position, recovered, auto: f.auto === true });
        }
        return;
      case "unsubscribed":
        this.st.subs.delete(f.channel);
        this.emit("unsubscribed", { channel: f.channel });
        return;
      case "publish_ack": {
        const p = this.st.publishes.get(f.id);
        if (!p) return;
        this.st.publishes.delete(f.id);
        p.resolve({ seq: f.seq, duplicate: f.duplicate === true });
        return;
      }
      case "conflated": {
        // Behind on a conflating channel: these were dropped for the
        // newest, which follows (history has them).
        const { type: _, ...c } = f;
        this.emit("conflated", c);
        return;
      }
      case "ephemeral": {
        // Only for channels subscribed now; no position, nothing to ack.
        if (!this.st.subs.has(f.channel)) return;
        const { type: _, ...m } = f;
        this.emit("ephemeral", m);
        return;
      }
      case "publish_nack": {
        const p = this.st.publishes.get(f.id);
        if (!p) {
          // An ephemeral message (nothing pending): the refusal is an error.
          this.emit("error", { code: f.code, reason: f.reason ?? "", channel: f.channel });
          return;
        }
        if (f.code === "unavailable" || f.code === "rate_limited" || f.code === "shutting_down") {
          // Not confirmed: re-send with the same id, so it lands once.
          p.frame.retry = true;
          setTimeout(() => {
            if (this.st.publishes.get(p.frame.id) === p && this._state === "connected") this.sendPublish(p);
          }, f.retry_after_ms || 500);
          return;
        }
        this.st.publishes.delete(f.id);
        p.reject(new HeraldError(f.code, f.reason ?? ""));
        return;
      }
      case "history":
      case "presence":
      case "presence_stats": {
        const r = f.id !== undefined ? this.st.requests.get(f.id) : undefined;
        if (r && f.id !== undefined) {
          this.st.requests.delete(f.id);
          r.resolve(f);
        }
        return;
      }
      case "error": {
        const r = f.id !== undefined ? this.st.requests.get(f.id) : undefined;
        if (r && f.id !== undefined) {
          this.st.requests.delete(f.id);
          r.reject(new HeraldError(f.code, f.reason ?? ""));
          return;
        }
        if (f.channel !== undefined) this.st.resuming.delete(f.channel);
        this.emit("error", { code: f.code, reason: f.reason ?? "", channel: f.channel });
        return;
      }
      case "join":
      case "leave":
        this.emit(f.type, { channel: f.channel, member: f.member });
        return;
      case "authenticated":
        this.emit("authenticated", { sub: f.sub, expires_at: f.expires_at });
        return;
      case "reconnect": {
        const after = f.after_ms || 0;
        this.nextDelayMs = after;
        this.emit("reconnect", { after_ms: after });
        return;
      }
      case "disconnect":
        if (f.reconnect === false) {
          this.emit("disconnect", { code: f.code, reason: f.reason ?? "" });
          this.close();
        }
        return;
      default:
        return; // pong, and frame types this client does not know
    }
  }

  // --- tokens -----------------------------------------------------------

  private armRefresh() {
    this.clearTimer("refreshTimer");
    if (!this.opts.getToken || !this.token) return;
    const exp = tokenExpiry(this.token);
    if (exp === null) return;
    const inMs = Math.max(1_000, exp * 1000 - Date.now() - this.opts.refreshBeforeMs);
    this.refreshTimer = setTimeout(() => void this.refresh(), Math.min(inMs, 2_147_000_000));
  }

  private async refresh() {
    this.refreshTimer = null;
    if (!this.opts.getToken || this._state !== "connected") return;
    try {
      const token = await this.opts.getToken();
      this.token = token;
      this.send({ type: "refresh", token });
      this.armRefresh();
    } catch {
      // Try again shortly; the server closes with 4003 at expiry and the
      // reconnect asks for a token again.
      this.refreshTimer = setTimeout(() => void this.refresh(), 5_000);
    }
  }

  private clearTimer(name: "reconnectTimer" | "refreshTimer" | "ackTimer") {
    const t = this[name];
    if (t) clearTimeout(t);
    this[name] = null;
  }

  private clearTimers() {
    this.clearTimer("reconnectTimer");
    this.clearTimer("refreshTimer");
    this.clearTimer("ackTimer");
  }
}
