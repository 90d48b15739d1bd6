// The demo chat of `starling serve --dev`: rooms are channels `chat:<room>`, messages are
// publications `{name, text}`, the "here now" list is the channel's presence, and a room's
// last messages come from its history. Going offline and back shows recovery: what was
// said meanwhile arrives, marked, with the count in the notice line.

import { Client, type Subscription } from '../../clients/js/src/index';

interface Message {
  name?: string;
  text?: string;
}

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const DEFAULT_ROOMS = ['lobby', 'random'];
const HISTORY_PAGE = 50;

const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/connection/websocket`;
const client = new Client(url, { name: 'demo' });
// For a person poking around in the console.
(globalThis as { starling?: unknown }).starling = client;

const nameInput = $<HTMLInputElement>('name');
nameInput.value = localStorage.getItem('starling-demo-name') || `guest-${Math.floor(Math.random() * 9000 + 1000)}`;
nameInput.addEventListener('change', () => localStorage.setItem('starling-demo-name', nameInput.value.trim()));
const myName = () => nameInput.value.trim() || 'guest';

let rooms: string[] = JSON.parse(localStorage.getItem('starling-demo-rooms') || 'null') ?? DEFAULT_ROOMS;
let room = '';
let sub: Subscription | null = null;
/** Offsets shown in the current room (history and live may overlap). */
let seen = new Set<number>();
/** Names learned from publications, by client id, for the presence list. */
const names = new Map<string, string>();
/** Publications still to come from the last recovery (they are marked). */
let recovering = 0;

function notice(text: string) {
  $('notice').textContent = text;
}

function renderRooms() {
  const list = $('rooms');
  list.replaceChildren(
    ...rooms.map((r) => {
      const li = document.createElement('li');
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = `# ${r}`;
      b.setAttribute('aria-current', String(r === room));
      b.addEventListener('click', () => joinRoom(r));
      li.append(b);
      return li;
    }),
  );
}

function addMessage(offset: number, data: unknown, client: string | undefined, marked: boolean) {
  if (seen.has(offset)) return;
  seen.add(offset);
  const m = (typeof data === 'object' && data ? data : { text: String(data) }) as Message;
  const who = m.name || 'someone';
  if (client) names.set(client, who);
  const li = document.createElement('li');
  li.dataset.offset = String(offset);
  if (marked) li.className = 'recovered';
  const w = document.createElement('span');
  w.className = 'who';
  w.textContent = who;
  const t = document.createElement('span');
  t.className = 'text';
  t.textContent = m.text ?? JSON.stringify(data);
  const when = document.createElement('span');
  when.className = 'when';
  when.textContent = `#${offset}`;
  li.append(w, t, when);
  // Keep the list in offset order: history pages and recovered publications may come
  // after newer live ones.
  const list = $('messages');
  const after = [...list.children].find((c) => Number((c as HTMLElement).dataset.offset) > offset);
  list.insertBefore(li, after ?? null);
  list.scrollTop = list.scrollHeight;
}

async function loadHistory(s: Subscription) {
  try {
    const page = await s.history({ limit: HISTORY_PAGE, reverse: true });
    if (s !== sub) return;
    for (const p of page.publications) addMessage(p.offset, p.data, p.info?.client, false);
  } catch (e) {
    notice(`History is not available: ${(e as Error).message}`);
  }
}

async function refreshPresence() {
  const s = sub;
  if (!s || s.state !== 'subscribed') return;
  try {
    const { clients } = await s.presence();
    if (s !== sub) return;
    const entries = Object.values(clients).map((c) =>
      c.client === client.clientId ? `${myName()} (you)` : names.get(c.client) ?? `guest #${c.client.slice(c.client.lastIndexOf('-') + 1)}`,
    );
    entries.sort();
    $('here-count').textContent = `(${entries.length})`;
    $('presence').replaceChildren(
      ...entries.map((n) => {
        const li = document.createElement('li');
        li.textContent = n;
        return li;
      }),
    );
  } catch {
    // Presence is best effort here; the next join, leave or tick tries again.
  }
}

function joinRoom(next: string) {
  if (next === room) return;
  if (sub) client.removeSubscription(sub);
  room = next;
  if (!rooms.includes(room)) {
    rooms = [...rooms, room];
    localStorage.setItem('starling-demo-rooms', JSON.stringify(rooms));
  }
  location.hash = `room=${encodeURIComponent(room)}`;
  seen = new Set();
  recovering = 0;
  $('messages').replaceChildren();
  $('presence').replaceChildren();
  notice('');
  renderRooms();
  const s = client.getOrCreateSubscription(`chat:${room}`);
  sub = s;
  let first = true;
  s.on('subscribed', (e) => {
    if (first) {
      first = false;
      loadHistory(s);
    } else if (e.wasRecovering && e.recovered) {
      recovering = e.recoveredCount;
      notice(`Back online: recovered ${e.recoveredCount} missed message${e.recoveredCount === 1 ? '' : 's'}.`);
    } else if (e.wasRecovering) {
      notice('Back online: the missed messages could not be recovered; reloaded the history.');
      loadHistory(s);
    }
    refreshPresence();
  });
  s.on('publication', (p) => {
    const marked = recovering > 0;
    if (marked) recovering--;
    addMessage(p.offset, p.data, p.info?.client, marked);
  });
  s.on('join', refreshPresence);
  s.on('leave', refreshPresence);
  s.on('error', (e) => notice(`Room error: ${e.error.message}`));
  s.subscribe();
}

client.on('state', ({ newState }) => {
  const badge = $('state');
  badge.textContent = newState;
  badge.className = `badge ${newState}`;
});
client.on('disconnected', (e) => {
  if (e.code) notice(`Disconnected: ${e.reason} (${e.code}).`);
});

$('offline').addEventListener('click', () => {
  const b = $<HTMLButtonElement>('offline');
  if (client.state === 'disconnected') {
    b.textContent = 'Go offline';
    client.connect();
  } else {
    b.textContent = 'Go online';
    notice('Offline: messages sent to this room meanwhile will be recovered on return.');
    client.disconnect();
  }
});

$('send-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const input = $<HTMLInputElement>('text');
  const text = input.value.trim();
  if (!text || !sub) return;
  input.value = '';
  try {
    await sub.publish({ name: myName(), text });
  } catch (err) {
    notice(`Not sent: ${(err as Error).message}`);
    input.value = text;
  }
});

$('room-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const input = $<HTMLInputElement>('room-name');
  const r = input.value.trim();
  if (r && input.checkValidity()) {
    input.value = '';
    joinRoom(r);
  }
});

setInterval(refreshPresence, 10_000);
const fromHash = /room=([^&]+)/.exec(location.hash)?.[1];
joinRoom(fromHash ? decodeURIComponent(fromHash) : rooms[0]);
client.connect();
