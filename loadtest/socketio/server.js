// The Socket.IO 4 peer for herald's fan-out benchmark (docs/benchmarks.md):
// rooms as channels, the Redis Streams adapter (so a broadcast goes through
// Redis like herald's goes through Kafka), connection state recovery on.
// Speaks the events herald-loadtest's socket.io mode sends: subscribe,
// publish (answered with publish_ack), message. One worker per core
// (node:cluster sharing the port; WebSocket transport only, so no sticky
// sessions are needed), the Redis Streams adapter carrying broadcasts
// between them; ws uses bufferutil and utf-8-validate (native, from
// package.json) for masking and UTF-8 checks.
//
//   REDIS_URL=redis://127.0.0.1:6379 PORT=13000 WORKERS=2 node server.js
const cluster = require("node:cluster");
const os = require("node:os");
const { Server } = require("socket.io");
const { createClient } = require("redis");
const { createAdapter } = require("@socket.io/redis-streams-adapter");

async function main() {
  const redis = createClient({ url: process.env.REDIS_URL || "redis://127.0.0.1:6379" });
  redis.on("error", (e) => console.error("redis:", e.message));
  await redis.connect();
  const io = new Server({
    adapter: createAdapter(redis),
    connectionStateRecovery: { maxDisconnectionDuration: 2 * 60 * 1000 },
    transports: ["websocket"],
    perMessageDeflate: false,
    // Benchmarks run a few seconds; the generator answers pings anyway.
    pingInterval: 60000,
    pingTimeout: 60000,
  });
  io.on("connection", (socket) => {
    socket.on("subscribe", (channel) => {
      socket.join(channel);
      socket.emit("subscribed", channel);
    });
    socket.on("publish", (m) => {
      io.to(m.channel).emit("message", m);
      socket.emit("publish_ack", { id: m.id, channel: m.channel });
    });
  });
  const httpServer = require("http").createServer();
  io.attach(httpServer);
  httpServer.listen(Number(process.env.PORT || 13000), "127.0.0.1", () => {
    process.send?.("listening");
  });
}

if (cluster.isPrimary) {
  const workers = Number(process.env.WORKERS || os.availableParallelism());
  const port = Number(process.env.PORT || 13000);
  let up = 0;
  for (let i = 0; i < workers; i++) {
    cluster.fork().on("message", (m) => {
      if (m === "listening" && ++up === workers) {
        console.error(`socket.io: ${workers} workers`);
        console.log(`socket.io listening on ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`);
      }
    });
  }
  cluster.on("exit", (w, code) => {
    console.error(`socket.io worker ${w.process.pid} exited (${code})`);
    process.exit(1);
  });
  // Stopping the primary stops the workers.
  process.on("SIGTERM", () => {
    for (const w of Object.values(cluster.workers)) w.kill();
    process.exit(0);
  });
} else {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
