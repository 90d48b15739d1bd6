// An in-process fake Starling server on ws's WebSocketServer: it speaks the protocol's
// framing (JSON lines, MessagePack maps back to back) and answers commands through a
// handler that tests replace, so unit tests can script every reply, push and close.
import { WebSocketServer } from 'ws';
import { decodeMsgpackMulti, encodeMsgpackMulti } from '../../dist/starling.mjs';
import { withTimeout, WAIT_MS } from './wait.mjs';

/** Default answers: a minimal well-behaved server. Return `undefined` for no reply. */
export function defaultHandler(cmd, conn) {
  const [method, params] = Object.entries(cmd).find(([k]) => k !== 'id') ?? [];
  switch (method) {
    case 'connect':
      return { connect: { client: `client-${conn.index}`, version: 'fake', ping: 25 } };
    case 'subscribe':
      return { subscribe: { epoch: 'ep', offset: 0, recoverable: true } };
    case 'publish':
      return { publish: { offset: ++conn.server.offset, epoch: 'ep' } };
    case 'presence_stats':
      return { presence_stats: { num_clients: 1, num_users: 1 } };
    default:
      return { [method]: {} };
  }
  void params;
}

class FakeConnection {
  constructor(server, ws, index) {
    this.server = server;
    this.ws = ws;
    this.index = index;
    this.protocol = ws.protocol;
    this.binary = ws.protocol === 'starling.msgpack';
    /** Every frame received, each an array of messages. */
    this.frames = [];
    this.commands = [];
    this.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: String(reason) })));
    this.waiters = [];
    ws.on('message', (data, isBinary) => {
      const messages = isBinary
        ? decodeMsgpackMulti(new Uint8Array(data))
        : String(data).split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
      this.frames.push(messages);
      const replies = [];
      for (const cmd of messages) {
        if (!cmd.id) continue;
        this.commands.push(cmd);
        const reply = server.handler(cmd, this);
        if (reply) replies.push({ id: cmd.id, ...reply });
      }
      if (replies.length) this.send(...replies);
      for (const w of this.waiters.slice()) w();
    });
  }

  /** Sends messages in one frame, in this connection's encoding. */
  send(...messages) {
    if (this.binary) this.ws.send(encodeMsgpackMulti(messages));
    else this.ws.send(messages.map((m) => JSON.stringify(m)).join('\n'));
  }

  push(push) {
    this.send({ push });
  }

  /** The `disconnect` push then the close, as the server does. */
  disconnect(code, reason, reconnect, delay) {
    const d = { code, reason, reconnect };
    if (delay !== undefined) d.delay = delay;
    this.push({ channel: '', disconnect: d });
    this.ws.close(code, reason);
  }

  close(code, reason = '') {
    this.ws.close(code, reason);
  }

  /** Drops the TCP connection without a close frame (the client sees 1006). */
  terminate() {
    this.ws.terminate();
  }

  /** The first command with `method` (received already or coming), optionally matching `filter`. */
  waitCommand(method, filter = () => true, timeout = WAIT_MS) {
    const find = () => this.commands.find((c) => method in c && filter(c));
    return withTimeout(
      new Promise((resolve) => {
        const check = () => {
          const c = find();
          if (!c) return;
          this.waiters = this.waiters.filter((w) => w !== check);
          resolve(c);
        };
        this.waiters.push(check);
        check();
      }),
      timeout,
      `command ${method}`,
    );
  }
}

export class FakeServer {
  static async start() {
    const server = new FakeServer();
    await new Promise((resolve) => {
      server.wss = new WebSocketServer({
        host: '127.0.0.1',
        port: 0,
        handleProtocols: (protocols) =>
          protocols.has('starling.msgpack') ? 'starling.msgpack' : protocols.has('starling.json') ? 'starling.json' : false,
      }, resolve);
    });
    server.wss.on('connection', (ws) => {
      const conn = new FakeConnection(server, ws, server.connections.length + 1);
      server.connections.push(conn);
      server.connectionTimes.push(Date.now());
      for (const w of server.connWaiters.splice(0)) w();
    });
    return server;
  }

  constructor() {
    this.handler = defaultHandler;
    this.connections = [];
    this.connectionTimes = [];
    this.connWaiters = [];
    this.offset = 0;
  }

  get url() {
    return `ws://127.0.0.1:${this.wss.address().port}/connection/websocket`;
  }

  /** Resolves with the n-th connection (1-based) once it exists. */
  connection(n, timeout = WAIT_MS) {
    return withTimeout(
      new Promise((resolve) => {
        const check = () => {
          if (this.connections.length >= n) resolve(this.connections[n - 1]);
          else this.connWaiters.push(check);
        };
        check();
      }),
      timeout,
      `connection #${n}`,
    );
  }

  async close() {
    for (const c of this.connections) c.ws.terminate();
    await new Promise((resolve) => this.wss.close(resolve));
  }
}
