// The client's public types. The frames themselves are generated from
// schemas/ (frames.server.ts, frames.client.ts); these name what the
// application sees.

import type { CFilter, CHistory, CTags } from "./frames.client.js";
import type { SConflated, SEphemeral, SHistory, SMember, SMessage, SPosition } from "./frames.server.js";
import type { TransportFactory, TransportName } from "./transport.js";

export type State = "disconnected" | "connecting" | "connected" | "closed";

export type Position = SPosition;

/** A delivered message: the `message` frame. */
export type Message = Omit<SMessage, "type">;

/** One subscribed connection of a channel's presence. */
export type Member = SMember;

/** A `history` request's options (at most one of the `since_*`/`before_seq`). */
export type HistoryQuery = Omit<CHistory, "type" | "id" | "channel">;

/** The answer to a `history` request. */
export type HistoryPage = Omit<SHistory, "type" | "id">;

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
  /** A first subscribe (no position yet, not durable) delivers the
   *  channel's last `rewind` messages before live ones; reconnects resume
   *  from the last position as always. */
  rewind?: number;
  /** As `rewind`, by age: the messages of the last `rewindMs` ms. */
  rewindMs?: number;
  /** Only the messages whose tags pass this filter are delivered, e.g.
   *  `{ key: "kind", in: ["goal", "card"] }` (docs/protocol.md, "Tags and
   *  filters"); the others are passed over, on reconnects too. */
  filter?: CFilter;
}

export interface PublishOptions {
  /** The message id (a UUID); one is made when not given. */
  id?: string;
  /** The message's tags, which subscriptions' filters read. */
  tags?: CTags;
}

export interface Subscribed {
  channel: string;
  position: Position;
  /** True when the server resumed the channel exactly from our position. */
  recovered: boolean;
  /** The server's own subscription to a personal channel (not asked for). */
  auto: boolean;
}

export type Events = {
  state: State;
  transport: TransportName;
  message: Message;
  /** Behind on a conflating channel: the messages `from_seq`..`to_seq`
   *  still queued were dropped for the newest, which follows. */
  conflated: Omit<SConflated, "type">;
  /** An ephemeral message of a subscribed channel: no `seq`, not kept. */
  ephemeral: Omit<SEphemeral, "type">;
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
