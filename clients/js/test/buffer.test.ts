/**
 * The offline buffer, and what becomes of sends when a connection drops.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WssError } from '@wss-engine/client';
import { CHAT, client, connected, next, startServer, withTimeout } from './helpers.js';

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof WssError);
    return e.code;
  }
  return 'resolved';
}

test('sends made before connect() leave in order once connected', async () => {
  const server = await startServer(CHAT);
  const c = client(server.url);
  try {
    const join = c.send('chat.join', { room: 'early' });
    // Only accepted if the join before it was handled first.
    const post = c.send('chat.message', { room: 'early', text: 'queued' });
    c.connect();
    assert.deepEqual(await join, { room: 'early', members: 1 });
    assert.equal(await post, null);
  } finally {
    c.disconnect();
    await server.kill();
  }
});

test('sends made during an outage are flushed after the reconnect', async () => {
  let server = await startServer(CHAT);
  const port = server.port;
  const c = await connected(client(server.url));
  try {
    const down = next(c, 'state', (s) => s === 'connecting');
    await server.kill();
    await down;
    const join = c.send('chat.join', { room: 'outage' }, { timeout: 5000 });
    const post = c.send('chat.message', { room: 'outage', text: 'while away' }, { timeout: 5000 });
    server = await startServer(CHAT, { port });
    assert.deepEqual(await join, { room: 'outage', members: 1 });
    assert.equal(await post, null);
  } finally {
    c.disconnect();
    await server.kill();
  }
});

test('the buffer is bounded; a buffered send times out and is never sent', async () => {
  const server = await startServer(CHAT);
  const c = client(server.url, { maxBufferSize: 2 });
  try {
    const expiring = c.send('chat.join', { room: 'never' }, { timeout: 100 });
    const kept = c.send('chat.join', { room: 'kept' });
    assert.equal(await code(c.send('chat.join', { room: 'third' })), 'buffer_full');
    assert.equal(await code(expiring), 'timeout');
    c.connect();
    assert.deepEqual(await kept, { room: 'kept', members: 1 });
    // The timed-out join was dropped from the buffer, not sent late.
    assert.equal(await code(c.send('chat.history', { room: 'never' })), 'not_member');
  } finally {
    c.disconnect();
    await server.kill();
  }
});

test('with buffer: false, sends while not connected reject at once', async () => {
  const server = await startServer(CHAT);
  const c = client(server.url, { buffer: false });
  try {
    assert.equal(await code(c.send('chat.join', { room: 'x' })), 'disconnected');
    c.connect();
    // Still connecting: the welcome has not come yet.
    assert.equal(c.state, 'connecting');
    assert.equal(await code(c.send('chat.join', { room: 'x' })), 'disconnected');
    await c.ready(5000);
    assert.deepEqual(await c.send('chat.join', { room: 'x' }), { room: 'x', members: 1 });
  } finally {
    c.disconnect();
    await server.kill();
  }
});

test('a send whose connection drops before the ack rejects with disconnected', async () => {
  const server = await startServer(CHAT);
  const c = await connected(client(server.url));
  try {
    server.pause();
    const pending = code(c.send('chat.join', { room: 'lost' }, { timeout: 10_000 }));
    // SIGKILL works on a stopped process; the socket closes under the pending send.
    await server.kill();
    assert.equal(await withTimeout(pending, 3000, 'the pending send to settle'), 'disconnected');
  } finally {
    c.disconnect();
    await server.kill();
  }
});

test('disconnect() rejects what is still buffered', async () => {
  const server = await startServer(CHAT);
  const c = client(server.url);
  try {
    c.connect();
    server.pause();
    const queued = c.send('chat.join', { room: 'q' }, { timeout: 10_000 });
    c.disconnect();
    assert.equal(await code(queued), 'disconnected');
    assert.equal(c.state, 'disconnected');
  } finally {
    server.resume();
    await server.kill();
  }
});
