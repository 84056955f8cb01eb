/**
 * Acks, errors, deliveries and timeouts against a real wss-engine serving examples/chat.
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { after, before, test } from 'node:test';
import { WssError, type Meta, type WssClient } from '@wss-engine/client';
import { CHAT, Proxy, client, connected, next, startServer, withTimeout, type Server } from './helpers.js';

let server: Server;
before(async () => {
  server = await startServer(CHAT);
});
after(() => server.kill());

async function conn(c: WssClient): Promise<[WssClient, string]> {
  const welcome = next(c, 'welcome');
  await connected(c);
  return [c, (await welcome)[0].conn];
}

/** The error a promise rejects with (fails if it resolves). */
async function rejection(p: Promise<unknown>): Promise<WssError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof WssError, `expected a WssError, got ${String(e)}`);
    return e;
  }
  assert.fail('expected a rejection');
}

test('acks resolve with the reply; deliveries carry data and the raw event name', async () => {
  const [a] = await conn(client(server.url));
  const [b, bConn] = await conn(client(server.url));
  try {
    assert.deepEqual(await a.send('chat.join', { room: 'acks' }), { room: 'acks', members: 1 });

    const joined = new Promise<[unknown, Meta]>((resolve) =>
      a.on('chat.joined', (data, meta) => {
        if ((data as { conn?: string }).conn === bConn) resolve([data, meta]);
      }),
    );
    const all: Meta[] = [];
    a.on('*', (_data, meta) => all.push(meta));
    const errors: WssError[] = [];
    a.on('error', (e) => errors.push(e));
    assert.deepEqual(await b.send('chat.join', { room: 'acks' }), { room: 'acks', members: 2 });
    const [data, meta] = await withTimeout(joined, 5000, 'chat.joined for b');
    assert.deepEqual(data, { room: 'acks', conn: bConn, user: null, name: null });
    // examples/chat keeps every room's history: the delivery carries its position
    // (a's join was offset 1, b's announcement 2).
    assert.deepEqual(meta, { event: 'chat.joined', room: 'acks', offset: 2 });

    // No reply from the script: the ack's data is null.
    const got = new Promise<unknown>((resolve) => a.on('chat.message', resolve));
    assert.equal(await b.send('chat.message', { room: 'acks', text: 'hello' }), null);
    assert.deepEqual(await withTimeout(got, 5000, 'chat.message'), { room: 'acks', text: 'hello', from: bConn, user: null });
    assert.deepEqual(errors, []);
    assert.deepEqual(
      all.map((m) => m.event),
      ['chat.joined', 'chat.message'],
    );
  } finally {
    a.disconnect();
    b.disconnect();
  }
});

test('off() and the returned function both remove a listener', async () => {
  const [a] = await conn(client(server.url));
  try {
    await a.send('chat.join', { room: 'off' });
    let viaOff = 0;
    let viaReturn = 0;
    const counter = (): void => {
      viaOff++;
    };
    a.on('chat.message', counter);
    const stop = a.on('chat.message', () => viaReturn++);
    await a.send('chat.message', { room: 'off', text: 'one' });
    a.off('chat.message', counter);
    stop();
    // The sender's own delivery is queued before its ack, so by the ack it has arrived.
    await a.send('chat.message', { room: 'off', text: 'two' });
    assert.deepEqual([viaOff, viaReturn], [1, 1]);
  } finally {
    a.disconnect();
  }
});

test('errors reject with the code, message and schema details', async () => {
  const [a] = await conn(client(server.url));
  try {
    const invalid = await rejection(a.send('chat.message', { room: 'lobby', text: '' }));
    assert.equal(invalid.code, 'invalid_payload');
    assert.equal(invalid.name, 'WssError');
    assert.match(invalid.message, /schema/);
    assert.equal(invalid.details?.length, 1);
    assert.equal(invalid.details[0]!.path, '/text');
    assert.match(invalid.details[0]!.message, /shorter/);

    // One detail per violation.
    const many = await rejection(a.send('chat.message', { room: 'Not A Room', text: 7 }));
    assert.deepEqual(many.details?.map((d) => d.path).sort(), ['/room', '/text']);

    // A code chosen by the pack's script.
    const script = await rejection(a.send('chat.message', { room: 'elsewhere', text: 'hi' }));
    assert.equal(script.code, 'not_member');
    assert.equal(script.details, undefined);

    assert.equal((await rejection(a.send('no.such.event', {}))).code, 'unknown_event');

    // Refused before it leaves: nothing JSON can say.
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    assert.equal((await rejection(a.send('chat.message', cyclic))).code, 'bad_json');
    assert.equal((await rejection(a.send('chat.message', { n: 1n }))).code, 'bad_json');
  } finally {
    a.disconnect();
  }
});

test('a send to a server that stopped answering rejects with timeout; the late ack is ignored', async () => {
  const own = await startServer(CHAT);
  const a = await connected(client(own.url));
  try {
    own.pause();
    const started = Date.now();
    const err = await rejection(a.send('chat.join', { room: 'slow' }, { timeout: 300 }));
    assert.equal(err.code, 'timeout');
    assert.ok(Date.now() - started >= 290, 'not before its timeout');
    own.resume();
    // The late ack of the timed-out send arrives now and must not disturb the next one.
    assert.deepEqual(await a.send('chat.join', { room: 'slow2' }), { room: 'slow2', members: 1 });
    assert.equal(a.state, 'connected');
  } finally {
    own.resume();
    a.disconnect();
    await own.kill();
  }
});

test('several URLs are tried in turn', async () => {
  // A port nobody listens on: bind one, then release it.
  const dead = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
  const c = client([`ws://127.0.0.1:${dead}/ws`, server.url]);
  const retries: number[] = [];
  c.on('reconnect', (info) => retries.push(info.attempt));
  try {
    await connected(c);
    assert.deepEqual(retries, [0], 'one failed dial, then the second URL');
    assert.deepEqual(await c.send('chat.join', { room: 'rotate' }), { room: 'rotate', members: 1 });
  } finally {
    c.disconnect();
  }
});

test('a vanished network (connections reset, no close frame) is noticed and redialled', async () => {
  const proxy = new Proxy(server.port);
  const c = client(await proxy.listen());
  try {
    await connected(c);
    proxy.refuse();
    const dropped = next(c, 'state', (s) => s === 'connecting');
    proxy.cut();
    const [, info] = await dropped;
    assert.deepEqual([info.reason, info.closeCode], ['closed', 1006]);
    // Refused dials count up until the network is back.
    await next(c, 'reconnect', (r) => r.attempt >= 1);
    proxy.accept();
    await next(c, 'state', (s) => s === 'connected');
    assert.deepEqual(await c.send('chat.join', { room: 'cut' }), { room: 'cut', members: 1 });
  } finally {
    c.disconnect();
    await proxy.close();
  }
});
