// The dashboard: polls the node's snapshot once a second, charts it, and acts through the
// HTTP API with its session token (never with the API key).

import { drawChart, type Series } from './chart';

type Metrics = Record<string, number>;
interface NodeInfo {
  name: string;
  version: string;
  uptime: number;
  connections: number;
  users: number;
  channels: number;
  subscriptions: number;
}
interface Snapshot {
  time_ms: number;
  info: NodeInfo & { node: string; nodes: NodeInfo[]; publications: number };
  metrics: Metrics;
  top_channels: { channel: string; per_second: number; subscribers: number }[];
}

const TOKEN_KEY = 'starling-admin-session';
const HISTORY = 120; // points kept for the charts: two minutes at one a second

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

let token = sessionStorage.getItem(TOKEN_KEY) ?? '';
let previous: Snapshot | null = null;
let timer: ReturnType<typeof setTimeout> | undefined;
const connections: number[] = [];
const messagesIn: number[] = [];
const messagesOut: number[] = [];

async function request(path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  if (token) headers.set('Authorization', `Bearer ${token}`);
  if (init.body) headers.set('Content-Type', 'application/json');
  return fetch(path, { ...init, headers });
}

/** Calls an HTTP API method; returns its `result` or throws with the server's message. */
async function api(method: string, body: unknown): Promise<any> {
  const response = await request(`/api/${method}`, { method: 'POST', body: JSON.stringify(body) });
  const reply = await response.json().catch(() => ({}));
  if (response.status === 401) return showLogin('The session has ended: log in again.');
  if (!response.ok) throw new Error(reply?.error?.message ?? `HTTP ${response.status}`);
  return reply.result;
}

function showLogin(message = ''): never {
  token = '';
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(timer);
  $('dashboard').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message;
  throw new Error(message || 'login required');
}

async function login(password: string): Promise<boolean> {
  const response = await fetch('/admin/api/login', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ password }),
  });
  if (!response.ok) return false;
  token = (await response.json()).token;
  sessionStorage.setItem(TOKEN_KEY, token);
  return true;
}

function counter(m: Metrics, name: string): number {
  return m[name] ?? 0;
}

function perSecond(name: string, now: Snapshot): number {
  if (!previous) return 0;
  const dt = (now.time_ms - previous.time_ms) / 1000;
  const d = counter(now.metrics, name) - counter(previous.metrics, name);
  return dt > 0 && d >= 0 ? d / dt : 0;
}

const number = new Intl.NumberFormat('en', { maximumFractionDigits: 1 });
function bytes(n: number): string {
  const units = ['B', 'KB', 'MB', 'GB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${number.format(n)} ${units[i]}`;
}

function duration(secs: number): string {
  const d = Math.floor(secs / 86400);
  const h = Math.floor((secs % 86400) / 3600);
  const m = Math.floor((secs % 3600) / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${secs % 60}s`;
}

function cell(row: HTMLTableRowElement, text: string | number) {
  row.insertCell().textContent = String(text);
}

function fillTable(id: string, rows: (string | number)[][], empty: string) {
  const body = $<HTMLTableElement>(id).tBodies[0];
  body.replaceChildren();
  for (const values of rows) {
    const row = body.insertRow();
    for (const v of values) cell(row, v);
  }
  if (!rows.length) {
    const row = body.insertRow();
    const c = row.insertCell();
    c.colSpan = 7;
    c.className = 'muted';
    c.textContent = empty;
  }
}

function render(s: Snapshot) {
  const m = s.metrics;
  const inRate = perSecond('starling_messages_in_total', s);
  const outRate = perSecond('starling_messages_out_total', s);
  const cards: [string, string][] = [
    ['Nodes', String(s.info.nodes.length)],
    ['Connections', number.format(s.info.connections)],
    ['Users', number.format(s.info.users)],
    ['Channels', number.format(s.info.channels)],
    ['Subscriptions', number.format(s.info.subscriptions)],
    ['Publications/s', number.format(perSecond('starling_publications_total', s))],
    ['Messages in/s', number.format(inRate)],
    ['Messages out/s', number.format(outRate)],
    ['Bytes in/s', bytes(perSecond('starling_bytes_in_total', s))],
    ['Bytes out/s', bytes(perSecond('starling_bytes_written_total', s))],
    ['API requests/s', number.format(perSecond('starling_api_requests_total', s))],
    ['Slow consumers', number.format(counter(m, 'starling_slow_consumers_total'))],
  ];
  const grid = $('cards');
  grid.replaceChildren(
    ...cards.map(([label, value]) => {
      const card = document.createElement('div');
      card.className = 'card';
      card.dataset.metric = label;
      const l = document.createElement('div');
      l.className = 'label';
      l.textContent = label;
      const v = document.createElement('div');
      v.className = 'value';
      v.textContent = value;
      card.append(l, v);
      return card;
    }),
  );
  $('node').textContent = `${s.info.node} · v${s.info.version} · up ${duration(s.info.uptime)}`;

  for (const [series, value] of [
    [connections, s.info.connections],
    [messagesIn, inRate],
    [messagesOut, outRate],
  ] as [number[], number][]) {
    series.push(value);
    if (series.length > HISTORY) series.shift();
  }
  drawChart($('chart-connections'), [{ values: connections, color: '#2f6fdf' }]);
  const messages: Series[] = [
    { values: messagesIn, color: '#2f6fdf' },
    { values: messagesOut, color: '#e0821b' },
  ];
  drawChart($('chart-messages'), messages);

  fillTable(
    'nodes',
    s.info.nodes.map((n) => [n.name, n.version, duration(n.uptime), n.connections, n.users, n.channels, n.subscriptions]),
    'no nodes',
  );
  const errors = Object.keys(m)
    .map((key) => ({ key, code: /^starling_errors_total\{code="([^"]+)"\}$/.exec(key)?.[1] }))
    .filter((e): e is { key: string; code: string } => !!e.code && m[e.key] > 0)
    .map((e) => [e.code, m[e.key], number.format(perSecond(e.key, s))]);
  fillTable('errors', errors, 'no errors');
  fillTable(
    'top-rate',
    s.top_channels.map((t) => [t.channel, number.format(t.per_second), t.subscribers]),
    'no publications in the last seconds',
  );
  const namespaces = Object.keys(m)
    .map((key) => ({ key, ns: /^starling_namespace_publications_total\{namespace="([^"]*)"\}$/.exec(key)?.[1] }))
    .filter((e): e is { key: string; ns: string } => e.ns !== undefined)
    .map((e) => {
      const bytesKey = `starling_namespace_bytes_total{namespace="${e.ns}"}`;
      return [e.ns, number.format(perSecond(e.key, s)), bytes(perSecond(bytesKey, s)), m[e.key]];
    });
  fillTable('namespaces', namespaces, 'no namespaces');
}

async function refreshTop() {
  const result = await api('channels', {});
  const rows = Object.entries(result.channels as Record<string, { num_clients: number }>)
    .sort((a, b) => b[1].num_clients - a[1].num_clients)
    .slice(0, 10)
    .map(([name, c]) => [name, c.num_clients]);
  fillTable('top', rows, 'no channels with subscribers');
}

async function poll() {
  try {
    const response = await request('/admin/api/snapshot');
    if (response.status === 401) return showLogin('The session has ended: log in again.');
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const s: Snapshot = await response.json();
    render(s);
    if (!previous || s.time_ms - previous.time_ms >= 0) previous = s;
    $('live').textContent = 'live';
    $('live').className = 'badge live';
    if (Math.floor(s.time_ms / 1000) % 5 === 0 || !$('top').dataset.filled) {
      $('top').dataset.filled = '1';
      await refreshTop();
    }
  } catch (e) {
    if (!token) return;
    $('live').textContent = `unreachable: ${(e as Error).message}`;
    $('live').className = 'badge down';
  }
  timer = setTimeout(poll, 1000);
}

function show(el: HTMLElement, text: string, bad = false) {
  el.textContent = text;
  el.className = bad ? 'error' : '';
}

let inspected = '';
let oldestShown: { offset: number; epoch: string } | null = null;

function section(title: string, body: string) {
  const h = document.createElement('h3');
  h.textContent = title;
  const pre = document.createElement('pre');
  pre.textContent = body;
  $('inspect').append(h, pre);
}

async function attempt(title: string, call: () => Promise<string>) {
  try {
    section(title, await call());
  } catch (e) {
    section(title, (e as Error).message);
  }
}

/** One page of history, newest first, before `before` when given. */
async function historyPage(channel: string, before: { offset: number; epoch: string } | null) {
  const body: Record<string, unknown> = { channel, limit: 20, reverse: true };
  if (before) body.since = before;
  const r = await api('history', body);
  const pubs = r.publications as { offset: number; data?: unknown; b64data?: string }[];
  const last = pubs.at(-1);
  oldestShown = last && last.offset > 1 ? { offset: last.offset, epoch: r.epoch } : null;
  $('inspect-older').hidden = !oldestShown;
  const lines = pubs.map((p) => `#${p.offset}  ${p.data !== undefined ? JSON.stringify(p.data) : `b64:${p.b64data}`}`);
  const title = before ? `History before #${before.offset}` : 'History (newest first)';
  section(title, `epoch ${r.epoch}, newest offset ${r.offset}\n${lines.join('\n') || '(empty)'}`);
}

async function inspect(channel: string) {
  inspected = channel;
  oldestShown = null;
  $('inspect').replaceChildren();
  $('inspect-older').hidden = true;
  await attempt('Subscribers', async () => {
    const r = await api('channels', { pattern: channel });
    return String(r.channels[channel]?.num_clients ?? 0);
  });
  await attempt('Presence', async () => {
    const r = await api('presence', { channel });
    const clients = Object.values(r.clients as Record<string, { user: string; client: string }>);
    return clients.length ? clients.map((c) => `${c.user || '(anonymous)'}  ${c.client}`).join('\n') : 'nobody';
  });
  try {
    await historyPage(channel, null);
  } catch (e) {
    section('History', (e as Error).message);
  }
}

interface Analytics {
  source: 'archive' | 'node';
  note?: string;
  bucket: string;
  traffic: { time_ms: number; namespace: string; messages: number; bytes: number }[];
  top_channels: { channel: string; messages: number; bytes: number }[];
  top_publishers: { user: string | null; messages: number; bytes: number }[];
  connections: { current: number; peaks: { time_ms: number; peak: number; at_end: number }[] };
  events_by_code: { kind: string; code: number | null; events: number }[];
  publish_latency_p99: { time_ms: number; seconds: number }[];
}

const clock = (ms: number) => new Date(ms).toISOString().slice(11, 16);

/** The Analytics section: `POST /api/analytics` over the chosen window, newest first. */
async function refreshAnalytics() {
  const window_secs = Number($<HTMLSelectElement>('analytics-window').value);
  let a: Analytics;
  try {
    a = await api('analytics', { window_secs });
  } catch (e) {
    $('analytics-source').textContent = '';
    $('analytics-note').textContent = (e as Error).message;
    return;
  }
  $('analytics-source').textContent = `source: ${a.source}, per ${a.bucket}, ${a.connections.current} connected now`;
  $('analytics-note').textContent = a.note ?? '';
  fillTable(
    'analytics-traffic',
    [...a.traffic].reverse().map((t) => [clock(t.time_ms), t.namespace, t.messages, bytes(t.bytes)]),
    'no publications in the window',
  );
  fillTable(
    'analytics-latency',
    [...a.publish_latency_p99].reverse().map((l) => [clock(l.time_ms), `${number.format(l.seconds * 1000)} ms`]),
    'no publications in the last hour',
  );
  fillTable('analytics-channels', a.top_channels.map((c) => [c.channel, c.messages, bytes(c.bytes)]), 'none');
  fillTable(
    'analytics-publishers',
    a.top_publishers.map((p) => [p.user ?? '(HTTP API)', p.messages, bytes(p.bytes)]),
    'none',
  );
  fillTable('analytics-events', a.events_by_code.map((e) => [e.kind, e.code ?? '-', e.events]), 'none');
}

let analyticsTimer: ReturnType<typeof setInterval> | undefined;

async function start() {
  const session = await (await fetch('/admin/api/session')).json();
  if (!token && !session.password_required) await login('');
  if (!token) return showLogin();
  $('login').hidden = true;
  $('dashboard').hidden = false;
  // Minutes are its finest grain: once a minute is enough.
  clearInterval(analyticsTimer);
  analyticsTimer = setInterval(() => refreshAnalytics().catch(() => {}), 60_000);
  refreshAnalytics().catch(() => {});
  await poll();
}

$('login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  if (await login($<HTMLInputElement>('password').value)) {
    $<HTMLInputElement>('password').value = '';
    start().catch(() => {});
  } else {
    $('login-error').textContent = 'Wrong password.';
  }
});

$('analytics-window').addEventListener('change', () => {
  refreshAnalytics().catch(() => {});
});

$('inspect-form').addEventListener('submit', (e) => {
  e.preventDefault();
  inspect($<HTMLInputElement>('inspect-channel').value.trim()).catch(() => {});
});

$('publish-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const result = $('publish-result');
  let data: unknown;
  try {
    data = JSON.parse($<HTMLTextAreaElement>('publish-data').value);
  } catch {
    return show(result, 'The data must be JSON, e.g. {"text":"hi"} or "hi".', true);
  }
  try {
    const r = await api('publish', { channel: $<HTMLInputElement>('publish-channel').value.trim(), data });
    show(result, `Published at offset ${r.offset} (epoch ${r.epoch}).`);
  } catch (err) {
    show(result, (err as Error).message, true);
  }
});

$('inspect-older').addEventListener('click', () => {
  if (oldestShown) historyPage(inspected, oldestShown).catch((e) => section('History', (e as Error).message));
});

const userId = () => $<HTMLInputElement>('user-id').value.trim();

$('user-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const result = $('user-result');
  try {
    const r = await api('user', { user: userId() });
    show(result, `${r.user}: ${r.connections} connection(s) on node ${r.node}.`);
  } catch (err) {
    show(result, (err as Error).message, true);
  }
});

$('user-disconnect').addEventListener('click', async () => {
  const result = $('user-result');
  if (!userId()) return show(result, 'Name a user first.', true);
  try {
    const r = await api('disconnect', { user: userId() });
    show(result, `Disconnected ${r.disconnected} connection(s) on this node (and the user's others on every node).`);
  } catch (err) {
    show(result, (err as Error).message, true);
  }
});

$('user-unsubscribe').addEventListener('click', async () => {
  const result = $('user-result');
  const channel = $<HTMLInputElement>('user-channel').value.trim();
  if (!userId() || !channel) return show(result, 'Name a user and a channel first.', true);
  try {
    const r = await api('unsubscribe', { user: userId(), channel });
    show(result, `Asked ${r.unsubscribed} connection(s) on this node to leave ${channel} (and on every other node).`);
  } catch (err) {
    show(result, (err as Error).message, true);
  }
});

start().catch(() => {});
