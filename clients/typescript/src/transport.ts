// The three ways to reach herald: WebSocket, Server-Sent Events with POSTed
// frames, and long-polling with POSTed frames. Each carries herald's JSON
// frames both ways; the client above them does not know which it has.

import type { ClientFrame } from "./frames.client.js";

export type TransportName = "websocket" | "sse" | "poll";

/** A server frame as parsed JSON: an object with a `type` (its shape is
 *  `ServerFrame` for the types this client knows). */
export type Frame = { type: string; [key: string]: unknown };

export interface TransportHandlers {
  /** The transport can carry frames. */
  open(): void;
  frame(f: Frame): void;
  /**
   * The transport ended. `opened` says whether `open` was called first (a
   * transport that never opened is a candidate for falling back).
   */
  close(code: number, reason: string, opened: boolean): void;
}

export interface Transport {
  readonly name: TransportName;
  send(frame: ClientFrame): void;
  close(): void;
}

export interface ConnectParams {
  /** herald's base URL: `http(s)://host:port`. */
  url: string;
  token?: string;
  clientId?: string;
  /** Display name shown in presence. */
  name?: string;
  /** Milliseconds a transport may take to open before it counts as failed. */
  openTimeoutMs: number;
}

export type TransportFactory = (
  name: TransportName,
  params: ConnectParams,
  handlers: TransportHandlers,
) => Transport;

function query(params: ConnectParams, extra: Record<string, string> = {}): string {
  const q = new URLSearchParams(extra);
  if (params.token) q.set("token", params.token);
  if (params.clientId) q.set("client_id", params.clientId);
  if (params.name) q.set("name", params.name);
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** Calls `close` once, and arms the open timeout. */
function guard(params: ConnectParams, handlers: TransportHandlers, abort: () => void) {
  let opened = false;
  let closed = false;
  const timer = setTimeout(() => {
    if (!opened && !closed) {
      abort();
      done(4000, "transport did not open in time");
    }
  }, params.openTimeoutMs);
  const done = (code: number, reason: string) => {
    if (closed) return;
    closed = true;
    clearTimeout(timer);
    handlers.close(code, reason, opened);
  };
  return {
    opened: () => {
      if (closed || opened) return;
      opened = true;
      clearTimeout(timer);
      handlers.open();
    },
    done,
    isClosed: () => closed,
  };
}

function parse(text: string): Frame | null {
  try {
    const f = JSON.parse(text);
    return f && typeof f === "object" && typeof f.type === "string" ? (f as Frame) : null;
  } catch {
    return null;
  }
}

export function webSocketTransport(params: ConnectParams, handlers: TransportHandlers): Transport {
  const WS = (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
  // `batch=true`: several messages may come in one `batch` frame.
  const url = params.url.replace(/^http/, "ws").replace(/\/$/, "") + "/ws" + query(params, { batch: "true" });
  let ws: WebSocket | null = null;
  const g = guard(params, handlers, () => ws?.close());
  if (typeof WS !== "function") {
    queueMicrotask(() => g.done(4000, "WebSocket is not available here"));
    return { name: "websocket", send() {}, close() {} };
  }
  try {
    ws = new WS(url);
  } catch (e) {
    queueMicrotask(() => g.done(4000, `WebSocket failed: ${String(e)}`));
    return { name: "websocket", send() {}, close() {} };
  }
  ws.onopen = () => g.opened();
  ws.onmessage = (ev) => {
    const f = typeof ev.data === "string" ? parse(ev.data) : null;
    if (!f || g.isClosed()) return;
    if (f.type === "batch" && Array.isArray(f.frames)) {
      for (const inner of f.frames as Frame[]) if (!g.isClosed()) handlers.frame(inner);
    } else {
      handlers.frame(f);
    }
  };
  ws.onclose = (ev) => g.done(ev.code || 1006, ev.reason || "connection closed");
  ws.onerror = () => {
    // A close event follows; nothing to do here.
  };
  return {
    name: "websocket",
    send(frame) {
      if (ws && ws.readyState === 1) ws.send(JSON.stringify(frame));
    },
    close() {
      ws?.close(1000);
      g.done(1000, "closed by the client");
    },
  };
}

/**
 * Frames to a session, one POST at a time so that they arrive in the order
 * they were sent (parallel requests could overtake one another).
 */
class Poster {
  private queue: object[] = [];
  private busy = false;
  session: string | null = null;

  constructor(
    private base: string,
    private fail: (reason: string) => void,
  ) {}

  send(frame: ClientFrame) {
    this.queue.push(frame);
    this.pump();
  }

  private async pump() {
    if (this.busy || !this.session) return;
    this.busy = true;
    try {
      while (this.queue.length > 0 && this.session) {
        const frame = this.queue[0];
        let res: Response;
        try {
          res = await fetch(`${this.base}/session/${this.session}`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify(frame),
            credentials: "include",
          });
        } catch (e) {
          this.fail(`POST failed: ${String(e)}`);
          return;
        }
        if (res.status === 429) {
          await new Promise((r) => setTimeout(r, 100));
          continue;
        }
        this.queue.shift();
        if (res.status !== 202) {
          this.fail(`POST answered ${res.status}`);
          return;
        }
      }
    } finally {
      this.busy = false;
    }
  }
}

export function sseTransport(params: ConnectParams, handlers: TransportHandlers): Transport {
  const base = params.url.replace(/\/$/, "");
  const ES = (globalThis as { EventSource?: typeof EventSource }).EventSource;
  let es: EventSource | null = null;
  const g = guard(params, handlers, () => es?.close());
  const poster = new Poster(base, (reason) => {
    es?.close();
    g.done(1006, reason);
  });
  if (typeof ES !== "function") {
    queueMicrotask(() => g.done(4000, "EventSource is not available here"));
    return { name: "sse", send() {}, close() {} };
  }
  es = new ES(`${base}/sse${query(params)}`, { withCredentials: true });
  es.onmessage = (ev) => {
    const f = parse(ev.data);
    if (!f || g.isClosed()) return;
    if (f.type === "session") {
      poster.session = String(f.id);
      g.opened();
      poster.send({ type: "ping" });
      return;
    }
    if (f.type === "close") {
      es?.close();
      g.done(Number(f.code) || 1006, String(f.reason ?? ""));
      return;
    }
    handlers.frame(f);
  };
  // The browser would reconnect by itself (with Last-Event-ID); the client
  // reconnects instead, with a fresh token and its own positions.
  es.onerror = () => {
    es?.close();
    g.done(1006, "event stream failed");
  };
  return {
    name: "sse",
    send(frame) {
      poster.send(frame);
    },
    close() {
      es?.close();
      g.done(1000, "closed by the client");
    },
  };
}

export function pollTransport(params: ConnectParams, handlers: TransportHandlers): Transport {
  const base = params.url.replace(/\/$/, "");
  let stopped = false;
  const controller = typeof AbortController === "function" ? new AbortController() : null;
  const g = guard(params, handlers, () => {
    stopped = true;
    controller?.abort();
  });
  const poster = new Poster(base, (reason) => {
    stopped = true;
    controller?.abort();
    g.done(1006, reason);
  });
  (async () => {
    let url = `${base}/poll${query(params)}${query(params) ? "&" : "?"}wait_ms=20000`;
    while (!stopped) {
      let body: { session?: string; frames?: Frame[]; closed?: boolean };
      try {
        const res = await fetch(url, { credentials: "include", signal: controller?.signal });
        if (res.status !== 200) {
          g.done(res.status === 401 ? 4003 : 1006, `poll answered ${res.status}`);
          return;
        }
        body = await res.json();
      } catch (e) {
        g.done(1006, `poll failed: ${String(e)}`);
        return;
      }
      if (!poster.session && body.session) {
        poster.session = body.session;
        url = `${base}/poll?session=${encodeURIComponent(body.session)}&wait_ms=20000`;
        g.opened();
        poster.send({ type: "ping" });
      }
      for (const f of body.frames ?? []) {
        if (stopped || g.isClosed()) return;
        if (f.type === "close") {
          stopped = true;
          g.done(Number(f.code) || 1006, String(f.reason ?? ""));
          return;
        }
        handlers.frame(f);
      }
      if (body.closed) {
        g.done(1006, "session closed");
        return;
      }
    }
  })();
  return {
    name: "poll",
    send(frame) {
      poster.send(frame);
    },
    close() {
      stopped = true;
      controller?.abort();
      g.done(1000, "closed by the client");
    },
  };
}

export const defaultTransportFactory: TransportFactory = (name, params, handlers) => {
  switch (name) {
    case "websocket":
      return webSocketTransport(params, handlers);
    case "sse":
      return sseTransport(params, handlers);
    case "poll":
      return pollTransport(params, handlers);
  }
};
