// The chat page: plain JavaScript on the official client (./wss-client.js, a bundle of
// clients/js built by `npm run demo` there). Served by the engine itself:
//
//   wss-engine --config examples/chat --static examples/chat/web
//
// Query string: `nodes` (comma-separated WebSocket URLs, tried in turn after a drop;
// default: this server's /ws), `name` and `room` (prefill the form).

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const nodes = (params.get('nodes') ?? '')
  .split(',')
  .map((u) => u.trim())
  .filter(Boolean);
if (!nodes.length) nodes.push(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
if (params.get('name')) $('name').value = params.get('name');
if (params.get('room')) $('room').value = params.get('room');

let WssClient;
try {
  ({ WssClient } = await import('./wss-client.js'));
} catch (e) {
  problem(`Cannot load wss-client.js (${e.message}). Build it: cd clients/js && npm ci && npm run demo`);
  throw e;
}

const client = new WssClient(nodes);
// For a look from the browser's console; the page itself does not need it.
window.wssClient = client;

let room = null; // the room this page is in
let myName = '';
let connections = 0; // connections that reached `connected`
// Who this page has seen in its room (joined since, or spoke): conn id → display name.
// The pack does not list a room's members by name, so that is what a page can know.
const people = new Map();
let myConn = null;

// ---- the connection state indicator

function status(state, text, resumed = '') {
  const el = $('status');
  el.dataset.state = state;
  el.dataset.resumed = resumed;
  $('state-text').textContent = text;
}

client.on('state', (state, info) => {
  if (state === 'connected') {
    connections++;
    status('connected', connections > 1 ? 'connected again' : 'connected');
  } else if (state === 'connecting') {
    if (connections === 0) status('connecting', 'connecting…');
    else status('reconnecting', `reconnecting… (${describe(info)})`);
  } else {
    status('disconnected', `disconnected (${info.reason ?? 'stopped'})`);
  }
  setEnabled();
});

client.on('reconnect', ({ attempt, delay }) => {
  if (connections > 0) status('reconnecting', `reconnecting… attempt ${attempt + 1} in ${delay} ms`);
});

client.on('welcome', (w) => {
  myConn = w.conn;
  if (room) people.set(myConn, `${myName || 'you'} (you)`);
  $('connection').textContent = `node ${w.node} · connection ${w.conn} · servers: ${nodes.join(', ')}`;
});

// After a reconnect the client resumes every room it held: nothing lost (recovered), or
// the room's messages from the outage are gone (not recovered).
client.on('resumed', ({ room: r, recovered, replayed }) => {
  if (recovered) {
    status('connected', `resumed · nothing lost (${replayed ?? 0} missed message${replayed === 1 ? '' : 's'} replayed)`, 'recovered');
    system(`reconnected to #${r}: nothing lost, ${replayed ?? 0} replayed`);
  } else {
    status('connected', `resumed · messages in #${r} may be missing`, 'lost');
    system(`reconnected to #${r}, but messages sent meanwhile could not be recovered`);
    // Not a member any more (the session expired): join again.
    if (r === room && !client.rooms.has(r)) void join(r);
  }
});

client.on('gap', ({ room: r }) => {
  status('connected', `messages in #${r} were lost`, 'lost');
  system(`some messages in #${r} were lost`);
});

client.on('error', (e) => console.warn('wss-client:', e.code, e.message));

function describe(info) {
  if (info.reason === 'closed') return info.closeCode ? `connection closed, code ${info.closeCode}` : 'connection lost';
  return info.reason ?? 'connection lost';
}

// ---- the room

client.on('chat.message', (m, meta) => {
  if (m.room !== room) return;
  if (!people.has(m.from)) {
    people.set(m.from, m.name ?? m.user ?? m.from);
    renderPeople();
  }
  const li = line(meta);
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = `${m.name ?? m.user ?? m.from}: `;
  li.append(who, document.createTextNode(m.text));
  append(li, meta);
});

client.on('chat.joined', (m, meta) => {
  if (m.room !== room) return;
  if (m.conn === myConn) return; // "you joined" says it
  const name = m.name ?? m.user ?? m.conn;
  people.set(m.conn, name);
  renderPeople();
  const li = line(meta);
  li.className = 'system';
  li.textContent = `${name} joined`;
  append(li, meta);
});

client.on('chat.left', (m, meta) => {
  if (m.room !== room) return;
  const name = people.get(m.conn) ?? m.conn;
  people.delete(m.conn);
  renderPeople();
  const li = line(meta);
  li.className = 'system';
  li.textContent = `${name} left`;
  append(li, meta);
});

function line(meta) {
  const li = document.createElement('li');
  if (meta.offset !== undefined) li.dataset.offset = String(meta.offset);
  return li;
}

function append(li, meta) {
  if (meta.offset !== undefined) {
    const o = document.createElement('span');
    o.className = 'offset';
    o.textContent = `#${meta.offset}`;
    li.append(o);
  }
  const list = $('messages');
  list.append(li);
  list.scrollTop = list.scrollHeight;
}

function system(text) {
  const li = document.createElement('li');
  li.className = 'system';
  li.textContent = text;
  append(li, {});
}

function renderPeople() {
  $('room-name').textContent = room ? `#${room}` : 'no room yet';
  $('people').replaceChildren(
    ...[...new Set(people.values())].map((name) => {
      const li = document.createElement('li');
      li.textContent = name;
      return li;
    }),
  );
}

function setEnabled() {
  const ready = room !== null;
  $('text').disabled = !ready;
  $('send-button').disabled = !ready;
  $('text').placeholder = ready ? `Message #${room}` : 'Join a room to chat';
}

async function join(next) {
  hideProblem();
  const previous = room;
  try {
    if (previous && previous !== next && client.rooms.has(previous)) await client.send('chat.leave', { room: previous });
    if (previous !== next) {
      people.clear();
      $('messages').replaceChildren();
    }
    // Shown from now on: the room's deliveries may arrive before the join's ack.
    room = next;
    const reply = await client.send('chat.join', myName ? { room: next, name: myName } : { room: next });
    people.set(myConn, `${myName || 'you'} (you)`);
    renderPeople();
    system(`you joined #${reply.room} (${reply.members} member${reply.members === 1 ? '' : 's'})`);
  } catch (e) {
    if (!client.rooms.has(next)) room = client.rooms.has(previous) ? previous : null;
    problem(`Could not join #${next}: ${e.code} ${e.message}`);
  }
  setEnabled();
}

$('join').addEventListener('submit', (event) => {
  event.preventDefault();
  myName = $('name').value.trim();
  void join($('room').value.trim());
});

$('send').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = $('text');
  const text = input.value.trim();
  if (!text || !room) return;
  input.value = '';
  hideProblem();
  // Shown when the server delivers it back (a room with history reaches every member,
  // the sender too), so the list is exactly the room's stream, in its order.
  client.send('chat.message', { room, text, name: myName || undefined }).catch((e) => {
    problem(`Not sent (${e.code}): ${e.message}`);
  });
});

function problem(text) {
  const p = $('problem');
  p.textContent = text;
  p.hidden = false;
}

function hideProblem() {
  $('problem').hidden = true;
}

status('connecting', 'connecting…');
client.connect();
