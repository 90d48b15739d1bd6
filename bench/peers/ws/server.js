// A plain Node.js `ws` broadcast server for the peer comparison (bench/peers.sh):
// what a minimal hand-rolled WebSocket fan-out in Node costs. No protocol on top of
// WebSocket, no history, no acknowledgement; the `ws` package, pinned in
// package.json and package-lock.json.
//
// - A WebSocket upgrade on `/sub/<channel>` subscribes the socket to <channel> (the
//   subscription exists before the 101 is sent: `handleUpgrade` writes the 101 and
//   calls back in the same tick, before any other request is read). Every publication
//   arrives as one text message holding the published body as it was.
// - `POST /publish/<channel>` (or `POST /publish?channel=<channel>`) sends the body
//   to every socket of the channel and answers 200 {"delivered":N}.
//
// Environment: PORT (0: any free port). Prints
// "ws listening on http://127.0.0.1:PORT" once it accepts connections.
'use strict';

const http = require('node:http');
const { WebSocketServer } = require('ws');

const MAX_BODY = 1 << 20;

/** @type {Map<string, Set<import('ws').WebSocket>>} */
const channels = new Map();

function channelOf(url, prefix) {
  const u = new URL(url, 'http://x');
  if (u.pathname.startsWith(prefix) && u.pathname.length > prefix.length) {
    return decodeURIComponent(u.pathname.slice(prefix.length));
  }
  if (prefix === '/publish/' && u.pathname === '/publish') {
    return u.searchParams.get('channel');
  }
  return null;
}

function publish(req, res, channel) {
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
    // One string for every socket: ws frames it once per send.
    const data = Buffer.concat(chunks).toString('utf8');
    let delivered = 0;
    const subs = channels.get(channel);
    if (subs) {
      for (const ws of subs) {
        ws.send(data);
        delivered += 1;
      }
    }
    const body = `{"delivered":${delivered}}`;
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': body.length });
    res.end(body);
  });
}

const server = http.createServer((req, res) => {
  const channel = req.method === 'POST' ? channelOf(req.url, '/publish/') : null;
  if (!channel) {
    res.writeHead(404, { 'Content-Length': 0 }).end();
    return;
  }
  publish(req, res, channel);
});

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false });

server.on('upgrade', (req, socket, head) => {
  const channel = channelOf(req.url, '/sub/');
  if (!channel) {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    let subs = channels.get(channel);
    if (!subs) {
      subs = new Set();
      channels.set(channel, subs);
    }
    subs.add(ws);
    ws.on('close', () => {
      subs.delete(ws);
      if (subs.size === 0 && channels.get(channel) === subs) channels.delete(channel);
    });
    ws.on('error', () => ws.terminate());
  });
});

// Keep idle keep-alive connections open (Node closes them after 5 s by default): a
// publisher at 1/s over several connections leaves each idle longer than that.
server.keepAliveTimeout = 0;
server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  console.log(`ws listening on http://127.0.0.1:${server.address().port}`);
});
