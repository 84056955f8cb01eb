/**
 * The reconnect delay: the pure function's bounds, then a real server killed and
 * restarted on the same port.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backoff, type ReconnectInfo, type State, type StateInfo } from '@wss-engine/client';
import { CHAT, client, next, sleep, startServer } from './helpers.js';

test('the delay spans [0, min(max, min * 2^attempt)]', () => {
  const low = (): number => 0;
  const high = (): number => 1 - Number.EPSILON;
  const caps = [500, 1000, 2000, 4000, 8000, 16000, 20000, 20000];
  caps.forEach((cap, attempt) => {
    assert.equal(backoff(attempt, 500, 20000, low), 0, `attempt ${attempt} may be immediate`);
    assert.equal(backoff(attempt, 500, 20000, high), cap, `attempt ${attempt} is capped at ${cap}`);
  });
  // Far past the cap the exponent must neither overflow nor lose the cap.
  assert.equal(backoff(5000, 500, 20000, high), 20000);
  assert.equal(backoff(-3, 500, 20000, high), 500, 'a negative attempt counts as the first');
});

test('with Math.random the delays are integers inside the range and spread over it', () => {
  const draws = Array.from({ length: 2000 }, () => backoff(3, 100, 20000));
  assert.ok(draws.every((d) => Number.isInteger(d) && d >= 0 && d <= 800));
  // Full jitter: the whole range is used, not just its top (both halves well filled).
  assert.ok(draws.filter((d) => d < 400).length > 600);
  assert.ok(draws.filter((d) => d >= 400).length > 600);
});

test('reconnects after the server restarts; the attempt counter resets after a good connection', async () => {
  let server = await startServer(CHAT);
  const port = server.port;
  const c = client(server.url, { minReconnectDelay: 50, maxReconnectDelay: 400 });
  const retries: ReconnectInfo[] = [];
  const states: [State, StateInfo][] = [];
  c.on('reconnect', (info) => retries.push(info));
  c.on('state', (state, info) => states.push([state, info]));
  try {
    c.connect();
    await c.ready(5000);

    await server.kill();
    // Long enough for several failed dials at growing delays (50, 100, 200, 400 ms caps).
    await sleep(1500);
    assert.ok(retries.length >= 3, `several retries while down, got ${retries.length}`);
    retries.forEach((r, i) => {
      assert.equal(r.attempt, i, 'attempts count up while dials fail');
      assert.ok(r.delay >= 0 && r.delay <= Math.min(400, 50 * 2 ** r.attempt), `delay ${r.delay} of attempt ${r.attempt}`);
    });
    assert.deepEqual(
      states.map(([s, i]) => [s, i.reason]),
      [
        ['connecting', undefined],
        ['connected', undefined],
        ['connecting', 'closed'],
      ],
    );

    server = await startServer(CHAT, { port });
    await next(c, 'state', (s) => s === 'connected', 3000);
    assert.deepEqual(await c.send('chat.join', { room: 'back' }), { room: 'back', members: 1 });

    const firstRetry = next(c, 'reconnect', () => true, 3000);
    await server.kill();
    const [first] = await firstRetry;
    assert.equal(first.attempt, 0, 'the first retry after a good connection starts over');
    assert.ok(first.delay <= 50);
  } finally {
    c.disconnect();
    await server.kill();
  }
});
