// A plain Node.js `ws` broadcast server for the peer comparison (bench/peers.sh):
// what a minimal hand-rolled WebSocket fan-out in Node costs. No protocol on top of
// WebSocket, no history, no acknowledgement; the `ws` package, pinned in
// package.json and package-lock.json.
//
// - A WebSocket upgrade on `/sub/<channel>` subscribes the socket to <channel> (the
//   subscription exists before the 101 is sent: `handleUpgrade` writes the 101 and
//   calls back in the same tick, before any other request is read). Every publication
//   arrives as one text message holding the published body as it was.
//   `/sub/<a>,<b>,...` subscribes the one socket to each channel listed (the names
//   are split at the commas before being URL-decoded, so a name holding a comma is
//   written `%2C`); a publication reaches it once per channel it was published to.
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

// URL-decoded, or null when malformed (a bad escape must not stop the server).
function decoded(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return null;
  }
}

function channelOf(url, prefix) {
  const u = new URL(url, 'http://x');
  if (u.pathname.startsWith(prefix) && u.pathname.length > prefix.length) {
    return decoded(u.pathname.slice(prefix.length));
  }
  if (prefix === '/publish/' && u.pathname === '/publish') {
    return u.searchParams.get('channel');
  }
  return null;
}

// The channels of a subscribe path `/sub/<a>,<b>,...` (empty names skipped, each
// listed once), or null when there is none or one is malformed.
function channelsOf(url) {
  const u = new URL(url, 'http://x');
  if (!u.pathname.startsWith('/sub/')) return null;
  const names = new Set();
  for (const part of u.pathname.slice('/sub/'.length).split(',')) {
    if (part === '') continue;
    const name = decoded(part);
    if (name === null) return null;
    names.add(name);
  }
  return names.size > 0 ? [...names] : null;
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
  const names = channelsOf(req.url);
  if (!names) {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    const joined = names.map((name) => {
      let subs = channels.get(name);
      if (!subs) {
        subs = new Set();
        channels.set(name, subs);
      }
      subs.add(ws);
      return [name, subs];
    });
    ws.on('close', () => {
      for (const [name, subs] of joined) {
        subs.delete(ws);
        if (subs.size === 0 && channels.get(name) === subs) channels.delete(name);
      }
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
