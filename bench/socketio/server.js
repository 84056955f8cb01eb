// The Socket.IO side of the comparison in BENCHMARKS.md: the design of the original Node
// prototype of this product. Socket.IO 4 with @socket.io/redis-adapter, so N of these
// processes on one Redis serve one application. The same work per message as
// bench/pack on wss-engine: parse, check the payload, broadcast to a room on every node.
//
//   PORT=0 REDIS_URL=redis://127.0.0.1:6379 node server.js
//   -> prints "listening: ws://127.0.0.1:PORT" on stderr
"use strict";

const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const ROOM = /^[a-z0-9_-]{1,64}$/;

// The checks bench/pack's schema makes on `bench.pub`, by hand.
function valid(d) {
  return (
    d !== null &&
    typeof d === "object" &&
    typeof d.room === "string" &&
    ROOM.test(d.room) &&
    ["k", "p", "seq", "ts"].every((f) => Number.isInteger(d[f]) && d[f] >= 0) &&
    (d.pad === undefined || (typeof d.pad === "string" && d.pad.length <= 4096))
  );
}

async function main() {
  const port = Number(process.env.PORT || 0);
  const host = process.env.HOST || "127.0.0.1";
  const redisUrl = process.env.REDIS_URL;

  const httpServer = http.createServer();
  const io = new Server(httpServer, {
    transports: ["websocket"], // the generator speaks the WebSocket transport only
    perMessageDeflate: false,
    serveClient: false,
  });

  if (redisUrl) {
    const pub = createClient({ url: redisUrl });
    const sub = pub.duplicate();
    for (const c of [pub, sub]) c.on("error", (e) => console.error("redis:", e.message));
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }

  io.on("connection", (socket) => {
    socket.on("join", (data, ack) => {
      if (!data || typeof data.room !== "string" || !ROOM.test(data.room)) {
        if (typeof ack === "function") ack({ ok: false });
        return;
      }
      socket.join(data.room);
      if (typeof ack === "function") ack({ ok: true });
    });
    // Fan-out: the payload to every member of the room on every node.
    socket.on("bench.pub", (data) => {
      if (!valid(data)) return;
      io.to(data.room).emit("bench.msg", data);
    });
  });

  httpServer.listen(port, host, () => {
    const addr = httpServer.address();
    console.error(`listening: ws://${addr.address}:${addr.port}`);
  });

  const stop = () => {
    io.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
