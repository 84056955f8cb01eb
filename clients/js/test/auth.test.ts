/**
 * Tokens: `?token=`, `getToken` on every (re)connect, and a refused token that stops
 * the client, against a server started with --jwt-secret and --auth-required.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { WssError, type ReconnectInfo, type State, type StateInfo, type WssClient } from '@wss-engine/client';
import { CHAT, client, connected, jwt, next, sleep, startServer, withTimeout, type Server } from './helpers.js';

const SECRET = 'test-secret-of-enough-length';
const AUTH = ['--jwt-secret', SECRET, '--auth-required'];

let server: Server;
before(async () => {
  server = await startServer(CHAT, { args: AUTH });
});
after(() => server.kill());

/** The user the server attached to this connection, as its chat.joined delivery says. */
async function userOf(c: WssClient, room: string): Promise<unknown> {
  const joined = new Promise<unknown>((resolve) => {
    const off = c.on('chat.joined', (data) => {
      off();
      resolve((data as { user?: unknown }).user);
    });
  });
  await c.send('chat.join', { room });
  return withTimeout(joined, 5000, 'chat.joined');
}

test('a static token is sent as ?token= and names the user', async () => {
  const c = await connected(client(server.url, { token: jwt({ sub: 'alice' }, SECRET) }));
  try {
    assert.equal(await userOf(c, 'static'), 'alice');
  } finally {
    c.disconnect();
  }
});

test('getToken is awaited before every connection attempt', async () => {
  const own = await startServer(CHAT, { args: AUTH });
  let calls = 0;
  const c = client(own.url, {
    getToken: async () => {
      calls++;
      await sleep(5); // an asynchronous refresh, as from a fetch
      return jwt({ sub: `bob-${calls}` }, SECRET);
    },
  });
  const retries: ReconnectInfo[] = [];
  c.on('reconnect', (r) => retries.push(r));
  let restarted = own;
  try {
    await connected(c);
    assert.equal(await userOf(c, 'refresh'), 'bob-1');

    const down = next(c, 'state', (s) => s === 'connecting');
    await own.kill();
    await down;
    restarted = await startServer(CHAT, { args: AUTH, port: own.port });
    await next(c, 'state', (s) => s === 'connected');
    // One call per dial: the first, then one per scheduled retry (failed ones included).
    assert.equal(calls, 1 + retries.length);
    assert.ok(calls >= 2);
    assert.equal(await userOf(c, 'refresh'), `bob-${calls}`, 'the newest token is the one in use');
  } finally {
    c.disconnect();
    await restarted.kill();
  }
});

test('a refused token stops the client instead of retrying', async () => {
  let calls = 0;
  const c = client(server.url, {
    getToken: () => {
      calls++;
      return jwt({ sub: 'mallory' }, 'not-the-secret');
    },
  });
  const errors: WssError[] = [];
  const states: [State, StateInfo][] = [];
  c.on('error', (e) => errors.push(e));
  c.on('state', (s, i) => states.push([s, i]));
  c.connect();
  await assert.rejects(c.ready(5000), (e: unknown) => e instanceof WssError && e.code === 'disconnected');
  // Several backoff periods (50-400 ms here) with no new attempt.
  await sleep(800);
  assert.equal(calls, 1);
  assert.deepEqual(
    states.map(([s, i]) => [s, i.reason]),
    [
      ['connecting', undefined],
      ['disconnected', 'unauthorized'],
    ],
  );
  assert.equal(errors.length, 1);
  assert.equal(errors[0]!.code, 'unauthorized');
  assert.match(errors[0]!.message, /401/);
});

test('no token at all, where one is required, also stops with unauthorized', async () => {
  const c = client(server.url);
  const stopped = next(c, 'state', (s) => s === 'disconnected');
  c.connect();
  const [, info] = await stopped;
  assert.equal(info.reason, 'unauthorized');
});
