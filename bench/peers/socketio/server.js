// A Socket.IO node for the cross-node fan-out comparison (bench/peers/socketio.sh).
//
// Clients (starling-bench fanout --protocol socketio) connect over a raw WebSocket
// (engine.io v4) and emit `join` with a room name, acknowledged once joined.
// `POST /publish` with {"room": ..., "data": ...} emits `pub` with the data to the
// room: on every node when REDIS_URL is set (@socket.io/redis-adapter), else on this
// node only.
//
// Environment: PORT (0: any free port), REDIS_URL (optional). Prints
// "socketio listening on http://127.0.0.1:PORT" once it accepts connections.
'use strict';

const http = require('node:http');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');

const MAX_BODY = 1 << 20;

// Every request that is not Socket.IO's own (engine.io passes those on to here).
function publishHandler(io) {
  return (req, res) => {
    if (req.method !== 'POST' || req.url !== '/publish') {
      res.writeHead(404).end();
      return;
    }
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        res.writeHead(413).end();
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      let msg;
      try {
        msg = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch {
        res.writeHead(400).end();
        return;
      }
      io.to(String(msg.room)).emit('pub', msg.data);
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': 2 });
      res.end('{}');
    });
  };
}

async function main() {
  let handler = null;
  const server = http.createServer((req, res) => handler(req, res));
  const io = new Server(server, {
    transports: ['websocket'],
    serveClient: false,
    perMessageDeflate: false,
  });
  handler = publishHandler(io);
  if (process.env.REDIS_URL) {
    const pub = createClient({ url: process.env.REDIS_URL });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
  io.on('connection', (socket) => {
    socket.on('join', (room, ack) => {
      socket.join(String(room));
      if (typeof ack === 'function') ack('ok');
    });
  });
  // Keep idle keep-alive connections open (Node closes them after 5 s by default): a
  // publisher at 1/s over several connections leaves each idle longer than that.
  server.keepAliveTimeout = 0;
  server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
    console.log(`socketio listening on http://127.0.0.1:${server.address().port}`);
  });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
