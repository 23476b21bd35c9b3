// The protocol state the client keeps across connections: what it is
// subscribed to, the last position it processed per channel (kept in
// storage across reloads), the resumes not yet answered, the publishes and
// requests not yet answered, and the acks not yet sent. No I/O and no
// timers: the client (index.ts) sends what this returns.

import type { CAck, ClientFrame, CPublish, CSubscribe } from "./frames.client.js";
import type { ServerFrame, SMessage, SSubscribed } from "./frames.server.js";
import { HeraldError, type Position, type PositionStore, type SubscribeOptions } from "./types.js";

export interface PendingPublish {
  frame: CPublish;
  resolve: (r: { seq: number; duplicate: boolean }) => void;
  reject: (e: Error) => void;
  sent: boolean;
}

export interface PendingRequest {
  resolve: (f: ServerFrame) => void;
  reject: (e: Error) => void;
  frame: ClientFrame & { id: string };
}

export class ProtocolState {
  readonly subs = new Map<string, SubscribeOptions>();
  readonly positions = new Map<string, Position>();
  /** Channels whose resume (`subscribe` with `since`) is not answered yet:
   *  their messages are dropped until it is, as the resume delivers them
   *  again in order (a personal channel's server subscription may deliver
   *  newer ones first). */
  readonly resuming = new Set<string>();
  readonly pendingAcks = new Map<string, number>();
  readonly publishes = new Map<string, PendingPublish>();
  readonly requests = new Map<string, PendingRequest>();

  constructor(
    private readonly storage: PositionStore | null | undefined,
    private readonly storageKey: string,
  ) {
    this.loadPositions();
  }

  /** The `subscribe` for `channel`: from the last position processed, else
   *  from the durable cursor when the subscription is durable, else with
   *  its `rewind` (the channel's recent messages first). */
  subscribeFrame(channel: string): CSubscribe {
    const o = this.subs.get(channel) ?? {};
    const p = this.positions.get(channel);
    const frame: CSubscribe = { type: "subscribe", channel };
    if (p) frame.since = { seq: p.seq, epoch: p.epoch };
    else if (o.durable) frame.since = "cursor";
    else if (o.rewind) frame.rewind = o.rewind;
    else if (o.rewindMs) frame.rewind_ms = o.rewindMs;
    if (o.durable) frame.durable = true;
    if (o.filter) frame.filter = o.filter;
    const replays = [frame.since, frame.rewind, frame.rewind_ms].some((x) => x !== undefined);
    if (replays) this.resuming.add(channel);
    return frame;
  }

  /** Everything to send on a fresh connection, in order: every
   *  subscription, every unanswered publish and request. */
  onOpen(): ClientFrame[] {
    this.resuming.clear();
    const out: ClientFrame[] = [];
    for (const ch of this.subs.keys()) out.push(this.subscribeFrame(ch));
    for (const p of this.publishes.values()) {
      p.sent = true;
      out.push(p.frame);
    }
    for (const r of this.requests.values()) out.push(r.frame);
    return out;
  }

  /** The connection is gone: a publish sent on it may have been appended,
   *  so it is re-sent with `retry: true`. */
  onConnectionLost(): void {
    for (const p of this.publishes.values()) if (p.sent) p.frame.retry = true;
  }

  /** The acks to send now (durable subscriptions only), forgotten here. */
  takeAcks(): CAck[] {
    const out: CAck[] = [];
    for (const [channel, seq] of this.pendingAcks) {
      if (this.subs.has(channel)) out.push({ type: "ack", channel, seq });
    }
    this.pendingAcks.clear();
    return out;
  }

  /** Records an ack to send (the highest `seq` per channel). */
  ack(channel: string, seq: number): void {
    const prev = this.pendingAcks.get(channel);
    if (prev === undefined || seq > prev) this.pendingAcks.set(channel, seq);
  }

  /** Whether a message is new to the application (and if so, it is now
   *  the channel's position). */
  accept(m: SMessage): boolean {
    if (this.resuming.has(m.channel)) return false; // the resume delivers it again
    const last = this.positions.get(m.channel);
    if (last && last.epoch === m.epoch && m.seq <= last.seq) return false; // seen already
    this.positions.set(m.channel, { seq: m.seq, epoch: m.epoch });
    this.savePositions();
    return true;
  }

  /** A `subscribed` answer; false when it is the server's own subscription
   *  that our pending resume replaces (not our answer: ignored). */
  onSubscribed(f: SSubscribed): boolean {
    const auto = f.auto === true;
    if (auto && this.resuming.has(f.channel)) return false;
    if (!auto) this.resuming.delete(f.channel);
    // Where live starts, when the server could not resume us and we know
    // nothing of this epoch; a recovered reply's catch-up (at or below
    // `position`) follows, even when we know nothing (a cursor resume).
    const known = this.positions.get(f.channel);
    if (!f.recovered && (!known || known.epoch !== f.position.epoch)) {
      this.positions.set(f.channel, { ...f.position });
      this.savePositions();
    }
    return true;
  }

  /** Rejects every unanswered publish and request. */
  rejectAll(e: HeraldError): void {
    for (const p of this.publishes.values()) p.reject(e);
    this.publishes.clear();
    for (const r of this.requests.values()) r.reject(e);
    this.requests.clear();
  }

  private loadPositions() {
    const s = this.storage;
    if (!s) return;
    try {
      const raw = s.getItem(this.storageKey);
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
    const s = this.storage;
    if (!s) return;
    try {
      s.setItem(this.storageKey, JSON.stringify(Object.fromEntries(this.positions)));
    } catch {
      // Storage full or denied: positions stay in memory.
    }
  }
}
