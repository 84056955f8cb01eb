/**
 * Servers that do not behave: garbage frames, no welcome, a frozen process, a pack
 * that refuses every connection. The client must report, not crash, and not spin.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { WssError, type ReconnectInfo, type State, type StateInfo } from '@wss-engine/client';
import { fakeServer } from './fake.js';
import { CHAT, PACKS, client, next, sleep, startServer } from './helpers.js';

const GARBAGE = [
  'not json at all',
  '[1, 2, 3]',
  '"a string"',
  '{"event": 5}',
  '{"no": "event"}',
  '{"ack": "999", "ok": true, "data": 1}',
  '{"event": "$welcome", "data": "not an object"}',
  '{"event": "$something_newer", "data": {}}',
];

test('garbage without a welcome: errors are reported, attempts back off', async () => {
  const server = await fakeServer(({ ws }) => {
    for (const frame of GARBAGE) ws.send(frame);
    ws.send(Buffer.from([0, 1, 2]));
  });
  const c = client(server.url, { timeout: 300, minReconnectDelay: 50, maxReconnectDelay: 400 });
  const errors: WssError[] = [];
  const retries: ReconnectInfo[] = [];
  c.on('error', (e) => errors.push(e));
  c.on('reconnect', (r) => retries.push(r));
  try {
    c.connect();
    await sleep(2000);
    assert.equal(c.state, 'connecting');
    // Each attempt waits out the 300 ms handshake timeout, then a growing delay:
    // at most 2000 / 300 dials in the window, however fast the server talks.
    assert.ok(server.count() >= 2 && server.count() <= 7, `${server.count()} connections in 2 s`);
    assert.deepEqual(
      retries.map((r) => r.attempt),
      retries.map((_, i) => i),
      'no welcome, so the counter never resets',
    );
    const first = errors.slice(0, 7).map((e) => e.code);
    // Non-JSON, non-objects, no event, a malformed welcome and a binary frame are each
    // reported; the ack nobody waits for and the unknown `$` event are not errors.
    assert.deepEqual(first, Array(7).fill('protocol_error'));
    assert.equal(errors.length % 7, 0, 'the same 7 errors per connection');
  } finally {
    c.disconnect();
    await server.close();
  }
});

test('a server that welcomes, babbles and hangs up is redialled at the reset delay, not in a tight loop', async () => {
  const server = await fakeServer((peer) => {
    peer.welcome();
    for (const frame of GARBAGE.slice(0, 3)) peer.ws.send(frame);
    peer.send({ event: '$error', data: { code: 'bad_frame', message: 'frame has no `event`' } });
    peer.ws.close(1011, 'oops');
  });
  const c = client(server.url, { minReconnectDelay: 100, maxReconnectDelay: 400 });
  const retries: ReconnectInfo[] = [];
  const errors: WssError[] = [];
  c.on('reconnect', (r) => retries.push(r));
  c.on('error', (e) => errors.push(e));
  try {
    c.connect();
    await sleep(1000);
    // A `$error` frame is the server's own report and keeps its code and message.
    assert.deepEqual(
      errors.slice(0, 4).map((e) => [e.code, e.code === 'bad_frame' ? e.message : '']),
      [['protocol_error', ''], ['protocol_error', ''], ['protocol_error', ''], ['bad_frame', 'frame has no `event`']],
    );
    // Each welcome resets the counter, so delays are drawn from [0, 100] ms: about 20
    // dials per second on average. A client without a delay would make hundreds.
    assert.ok(server.count() >= 3 && server.count() <= 40, `${server.count()} connections in 1 s`);
    assert.ok(retries.every((r) => r.attempt === 0 && r.delay <= 100));
  } finally {
    c.disconnect();
    await server.close();
  }
});

test('a frozen server: each attempt times out, then the client gets in once it thaws', async () => {
  const server = await startServer(CHAT);
  const c = client(server.url, { timeout: 200, minReconnectDelay: 50, maxReconnectDelay: 400 });
  const retries: ReconnectInfo[] = [];
  c.on('reconnect', (r) => retries.push(r));
  c.on('error', () => {});
  try {
    server.pause();
    c.connect();
    await assert.rejects(c.ready(100), (e: unknown) => e instanceof WssError && e.code === 'timeout');
    await sleep(1100);
    assert.ok(retries.length >= 2 && retries.length <= 6, `${retries.length} timed-out attempts in 1.2 s`);
    server.resume();
    await c.ready(3000);
    assert.deepEqual(await c.send('chat.join', { room: 'thawed' }), { room: 'thawed', members: 1 });
  } finally {
    server.resume();
    c.disconnect();
    await server.kill();
  }
});

test('close 1008 (the pack refused the connection) stops reconnecting', async () => {
  const server = await startServer(path.join(PACKS, 'refuse'));
  const c = client(server.url);
  const states: [State, StateInfo][] = [];
  const errors: WssError[] = [];
  let retries = 0;
  c.on('state', (s, i) => states.push([s, i]));
  c.on('error', (e) => errors.push(e));
  c.on('reconnect', () => retries++);
  try {
    const stopped = next(c, 'state', (s) => s === 'disconnected');
    c.connect();
    const [, info] = await stopped;
    assert.equal(info.reason, 'refused');
    assert.equal(info.closeCode, 1008);
    assert.match(info.message ?? '', /\$connect/);
    // The hook's own code and message reach the app as an error event.
    assert.deepEqual(
      errors.map((e) => [e.code, e.message]),
      [['maintenance', 'closed for maintenance']],
    );
    await sleep(600);
    assert.equal(retries, 0);
    // The welcome came before the refusal, so the client was briefly connected.
    assert.deepEqual(
      states.map(([s]) => s),
      ['connecting', 'connected', 'disconnected'],
    );
  } finally {
    c.disconnect();
    await server.kill();
  }
});
