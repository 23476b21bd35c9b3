// herald's browser client. One object per page: it connects over WebSocket
// (falling back to Server-Sent Events, then long-polling, by itself),
// reconnects with full-jitter exponential backoff, resubscribes every channel
// from the last position it processed and drops anything at or below it, so
// the application sees each message once and in order per channel.

import {
  defaultTransportFactory,
  type Frame,
  type Transport,
  type TransportFactory,
  type TransportName,
} from "./transport.js";

export type { Frame, Transport, TransportFactory, TransportName } from "./transport.js";

export type State = "disconnected" | "connecting" | "connected" | "closed";

export interface Position {
  seq: number;
  epoch: string;
}

export interface Message {
  channel: string;
  seq: number;
  epoch: string;
  id: string;
  ts: number;
  data: unknown;
  replayed?: unknown;
}

export interface Member {
  conn: string;
  user?: string;
  /** The token's `sub`, or a digest of an anonymous client's id. */
  client?: string;
  /** The display name the member gave. */
  name?: string;
  info?: unknown;
}

export interface HistoryQuery {
  since_seq?: number;
  since_time?: number;
  before_seq?: number;
  limit?: number;
  reverse?: boolean;
}

export interface HistoryPage {
  channel: string;
  epoch: string;
  messages: Message[];
  next: unknown;
  done: boolean;
  truncated?: boolean;
}

/** A refusal from the server: its code and reason. */
export class HeraldError extends Error {
  constructor(
    public readonly code: string,
    reason: string,
  ) {
    super(`${code}: ${reason}`);
    this.name = "HeraldError";
  }
}

/** Where positions are kept across reloads (`localStorage` fits). */
export interface PositionStore {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export interface Options {
  /** herald's base URL, `http(s)://host:port`. */
  url: string;
  /** Returns a token (a JWT) to connect with; called at every connect and
   *  before the token expires. Without it the connection is anonymous. */
  getToken?: () => Promise<string> | string;
  /** Names an anonymous client's durable cursors. It is their credential:
   *  keep it secret (presence shows only a digest of it). */
  clientId?: string;
  /** A display name others see in presence (`member.name`): public. */
  name?: string;
  /** Transports to try, in order. Default: websocket, sse, poll. */
  transports?: TransportName[];
  /** Backoff between reconnects: full jitter over an exponential ceiling. */
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** How long a transport may take to open. Default 5000. */
  openTimeoutMs?: number;
  /** Refresh the token this long before it expires. Default 30000. */
  refreshBeforeMs?: number;
  /** Keeps positions across reloads under `storageKey`. */
  storage?: PositionStore | null;
  storageKey?: string;
  /** Acks of durable subscriptions are sent at most this often. Default 200. */
  ackIntervalMs?: number;
  /** For tests: the transports and the random source. */
  transportFactory?: TransportFactory;
  random?: () => number;
}

export interface SubscribeOptions {
  /** Store acks as a durable cursor; a first subscribe resumes from it. */
  durable?: boolean;
}

export interface Subscribed {
  channel: string;
  position: Position;
  /** True when the server resumed the channel exactly from our position. */
  recovered: boolean;
  /** The server's own subscription to a personal channel (not asked for). */
  auto: boolean;
}

type Events = {
  state: State;
  transport: TransportName;
  message: Message;
  subscribed: Subscribed;
  unsubscribed: { channel: string };
  join: { channel: string; member: Member };
  leave: { channel: string; member: Member };
  /** The server asked for a reconnect after `after_ms` (it is draining). */
  reconnect: { after_ms: number };
  /** The application's backend disconnected us and asked us to stay away. */
  disconnect: { code: number; reason: string };
  /** An `error` frame not tied to a request. */
  error: { code: string; reason: string; channel?: string };
  authenticated: { sub: string; expires_at: number };
  closed: { code: number; reason: string };
};

type Listener<T> = (v: T) => void;

interface PendingPublish {
  frame: { type: "publish"; channel: string; id: string; data: unknown; retry?: boolean };
  resolve: (r: { seq: number; duplicate: boolean }) => void;
  reject: (e: Error) => void;
  sent: boolean;
}

interface PendingRequest {
  resolve: (f: Frame) => void;
  reject: (e: Error) => void;
  frame: object;
}

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
  private subs = new Map<string, SubscribeOptions>();
  private positions = new Map<string, Position>();
  /** Channels whose resume (`subscribe` with `since`) is not answered yet:
   *  their messages are dropped until it is, as the resume delivers them
   *  again in order (a personal channel's server subscription may deliver
   *  newer ones first). */
  private resuming = new Set<string>();
  private pendingAcks = new Map<string, number>();
  private publishes = new Map<string, PendingPublish>();
  private requests = new Map<string, PendingRequest>();
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
    this.loadPositions();
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
    const p = this.positions.get(channel);
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
    this.flushAcksNow();
    this.stopped = true;
    this.clearTimers();
    const t = this.transport;
    this.transport = null;
    t?.close();
    for (const p of this.publishes.values()) p.reject(new HeraldError("closed", "the client was closed"));
    this.publishes.clear();
    for (const r of this.requests.values()) r.reject(new HeraldError("closed", "the client was closed"));
    this.requests.clear();
    this.setState("closed");
  }

  subscribe(channel: string, options: SubscribeOptions = {}): void {
    this.subs.set(channel, options);
    if (this._state === "connected") this.sendSubscribe(channel);
  }

  unsubscribe(channel: string): void {
    this.subs.delete(channel);
    this.pendingAcks.delete(channel);
    if (this._state === "connected") this.transport?.send({ type: "unsubscribe", channel });
  }

  /**
   * Publishes `data`; resolves with the `seq` once Kafka has it. Survives
   * reconnects: an unanswered publish is re-sent with the same id and
   * `retry: true`, so it is appended once.
   */
  publish(channel: string, data: unknown, id: string = uuid()): Promise<{ seq: number; duplicate: boolean }> {
    return new Promise((resolve, reject) => {
      const p: PendingPublish = { frame: { type: "publish", channel, id, data }, resolve, reject, sent: false };
      this.publishes.set(id, p);
      if (this._state === "connected") this.sendPublish(p);
    });
  }

  /** Marks everything up to `seq` processed (durable subscriptions). */
  ack(channel: string, seq: number): void {
    const prev = this.pendingAcks.get(channel);
    if (prev === undefined || seq > prev) this.pendingAcks.set(channel, seq);
    if (!this.ackTimer) {
      this.ackTimer = setTimeout(() => {
        this.ackTimer = null;
        this.flushAcksNow();
      }, this.opts.ackIntervalMs);
    }
  }

  history(channel: string, query: HistoryQuery = {}): Promise<HistoryPage> {
    return this.request({ type: "history", channel, ...query }) as Promise<unknown> as Promise<HistoryPage>;
  }

  async presence(channel: string): Promise<Member[]> {
    const f = await this.request({ type: "presence", channel });
    return (f.members as Member[]) ?? [];
  }

  async presenceStats(channel: string): Promise<{ clients: number; users: number }> {
    const f = await this.request({ type: "presence_stats", channel });
    return { clients: Number(f.clients), users: Number(f.users) };
  }

  private request(frame: { type: string; [k: string]: unknown }): Promise<Frame> {
    return new Promise((resolve, reject) => {
      const id = uuid();
      const full = { ...frame, id };
      this.requests.set(id, { resolve, reject, frame: full });
      if (this._state === "connected") this.transport?.send(full);
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
    this.resuming.clear();
    for (const ch of this.subs.keys()) this.sendSubscribe(ch);
    for (const p of this.publishes.values()) this.sendPublish(p);
    for (const r of this.requests.values()) this.transport?.send(r.frame);
    this.flushAcksNow();
  }

  private onClose(code: number, reason: string, opened: boolean) {
    this.clearTimer("refreshTimer");
    for (const p of this.publishes.values()) if (p.sent) p.frame.retry = true;
    this.emit("closed", { code, reason });
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
    this.flushAcksNow();
    this.stopped = true;
    this.clearTimers();
    const t = this.transport;
    this.transport = null;
    t?.close();
    for (const p of this.publishes.values()) if (p.sent) p.frame.retry = true;
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

  private sendSubscribe(channel: string) {
    const o = this.subs.get(channel) ?? {};
    const p = this.positions.get(channel);
    const frame: Record<string, unknown> = { type: "subscribe", channel };
    if (p) frame.since = { seq: p.seq, epoch: p.epoch };
    else if (o.durable) frame.since = "cursor";
    if (o.durable) frame.durable = true;
    if (frame.since !== undefined) this.resuming.add(channel);
    this.transport?.send(frame);
  }

  private sendPublish(p: PendingPublish) {
    p.sent = true;
    this.transport?.send(p.frame);
  }

  private flushAcksNow() {
    this.clearTimer("ackTimer");
    if (this._state !== "connected" || !this.transport) return;
    for (const [channel, seq] of this.pendingAcks) {
      if (this.subs.has(channel)) this.transport.send({ type: "ack", channel, seq });
    }
    this.pendingAcks.clear();
  }

  private onFrame(f: Frame) {
    switch (f.type) {
      case "message":
        return this.onMessage(f as unknown as Message);
      case "subscribed": {
        const channel = String(f.channel);
        const position = f.position as Position;
        const recovered = Boolean(f.recovered);
        const auto = f.auto === true;
        // The server's subscription, which our resume replaces: not its answer.
        if (auto && this.resuming.has(channel)) return;
        if (!auto) this.resuming.delete(channel);
        // Where live starts, when the server could not resume us and we know
        // nothing of this epoch; a recovered reply's catch-up (at or below
        // `position`) follows, even when we know nothing (a cursor resume).
        const known = this.positions.get(channel);
        if (!recovered && (!known || known.epoch !== position.epoch)) {
          this.positions.set(channel, { ...position });
          this.savePositions();
        }
        this.emit("subscribed", { channel, position, recovered, auto });
        return;
      }
      case "unsubscribed":
        this.subs.delete(String(f.channel));
        this.emit("unsubscribed", { channel: String(f.channel) });
        return;
      case "publish_ack": {
        const p = this.publishes.get(String(f.id));
        if (!p) return;
        this.publishes.delete(String(f.id));
        p.resolve({ seq: Number(f.seq), duplicate: Boolean(f.duplicate) });
        return;
      }
      case "publish_nack": {
        const p = this.publishes.get(String(f.id));
        if (!p) return;
        const code = String(f.code);
        if (code === "unavailable" || code === "rate_limited" || code === "shutting_down") {
          // Not confirmed: re-send with the same id, so it lands once.
          p.frame.retry = true;
          const after = Number(f.retry_after_ms) || 500;
          setTimeout(() => {
            if (this.publishes.get(p.frame.id) === p && this._state === "connected") this.sendPublish(p);
          }, after);
          return;
        }
        this.publishes.delete(String(f.id));
        p.reject(new HeraldError(code, String(f.reason ?? "")));
        return;
      }
      case "history":
      case "presence":
      case "presence_stats": {
        const r = f.id !== undefined ? this.requests.get(String(f.id)) : undefined;
        if (r) {
          this.requests.delete(String(f.id));
          r.resolve(f);
        }
        return;
      }
      case "error": {
        const r = f.id !== undefined ? this.requests.get(String(f.id)) : undefined;
        if (r) {
          this.requests.delete(String(f.id));
          r.reject(new HeraldError(String(f.code), String(f.reason ?? "")));
          return;
        }
        if (f.channel !== undefined) this.resuming.delete(String(f.channel));
        this.emit("error", {
          code: String(f.code),
          reason: String(f.reason ?? ""),
          channel: f.channel === undefined ? undefined : String(f.channel),
        });
        return;
      }
      case "join":
      case "leave":
        this.emit(f.type, { channel: String(f.channel), member: f.member as Member });
        return;
      case "authenticated":
        this.emit("authenticated", { sub: String(f.sub), expires_at: Number(f.expires_at) });
        return;
      case "reconnect": {
        const after = Number(f.after_ms) || 0;
        this.nextDelayMs = after;
        this.emit("reconnect", { after_ms: after });
        return;
      }
      case "disconnect":
        if (f.reconnect === false) {
          this.emit("disconnect", { code: Number(f.code), reason: String(f.reason ?? "") });
          this.close();
        }
        return;
      default:
        return; // pong, and frame types this client does not know
    }
  }

  private onMessage(m: Message) {
    if (this.resuming.has(m.channel)) return; // the resume delivers it again
    const last = this.positions.get(m.channel);
    if (last && last.epoch === m.epoch && m.seq <= last.seq) return; // seen already
    this.positions.set(m.channel, { seq: m.seq, epoch: m.epoch });
    this.savePositions();
    this.emit("message", m);
    if (this.subs.get(m.channel)?.durable) this.ack(m.channel, m.seq);
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
      this.transport?.send({ type: "refresh", token });
      this.armRefresh();
    } catch {
      // Try again shortly; the server closes with 4003 at expiry and the
      // reconnect asks for a token again.
      this.refreshTimer = setTimeout(() => void this.refresh(), 5_000);
    }
  }

  // --- positions --------------------------------------------------------

  private loadPositions() {
    const s = this.opts.storage;
    if (!s) return;
    try {
      const raw = s.getItem(this.opts.storageKey);
      if (!raw) return;
      const obj = JSON.parse(raw) as Record<string, Position>;
      for (const [ch, p] of Object.entries(obj)) {
        if (p && typeof p.seq === "number" && typeof p.epoch === "string") this.positions.set(ch, p);
      }
    } catch {
      // A damaged entry is ignored: channels start live.
    }
  }

  private savePositions() {
    const s = this.opts.storage;
    if (!s) return;
    try {
      s.setItem(this.opts.storageKey, JSON.stringify(Object.fromEntries(this.positions)));
    } catch {
      // Storage full or denied: positions stay in memory.
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
