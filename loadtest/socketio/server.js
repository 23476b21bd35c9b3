// The Socket.IO 4 peer for herald's fan-out benchmark (docs/benchmarks.md):
// rooms as channels, the Redis Streams adapter (so a broadcast goes through
// Redis like herald's goes through Kafka), connection state recovery on.
// Speaks the events herald-loadtest's socket.io mode sends: subscribe,
// publish (answered with publish_ack), message.
//
//   REDIS_URL=redis://127.0.0.1:6379 PORT=0 node server.js
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
  httpServer.listen(Number(process.env.PORT || 0), "127.0.0.1", () => {
    const { port } = httpServer.address();
    console.log(`socket.io listening on ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`);
  });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
