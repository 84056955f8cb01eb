/**
 * The resume protocol (docs/protocol.md, "Resuming a session" and "`$gap`"),
 * client side, against a scripted server: positions from `$joined`, duplicate drop,
 * gaps, which session is presented, `session_expired`, `$gap`, close 4000.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Meta, ResumedInfo, WssClient } from '@wss-engine/client';
import { fakeServer, type Peer } from './fake.js';
import { client, next, sleep, withTimeout } from './helpers.js';

/** Deliveries the app saw, as `room@offset` (or the event name without a position). */
function record(c: WssClient): string[] {
  const seen: string[] = [];
  c.on('*', (_data, meta: Meta) => seen.push(meta.offset === undefined ? meta.event : `${meta.room}@${meta.offset}`));
  return seen;
}

function lobby(offset: number): object {
  return { event: 'room.post', data: { n: offset }, room: 'lobby', offset };
}

/** First connection: welcome with `session`, then the client joins lobby (at `offset`) and plain. */
async function joinedClient(peerOf: () => Promise<Peer>, c: WssClient, session: string, offset: number): Promise<Peer> {
  c.connect();
  const peer = await peerOf();
  peer.welcome(session);
  await c.ready(2000);
  const join = c.send('room.join', { room: 'lobby' });
  const frame = await peer.next((f) => f.event === 'room.join');
  peer.send({ event: '$joined', data: { room: 'lobby', epoch: 'e1', offset } }, { event: '$joined', data: { room: 'plain' } });
  peer.ack(frame.id);
  await join;
  return peer;
}

test('duplicates are dropped; an answered resume switches sessions; the buffer waits for it', async () => {
  const server = await fakeServer();
  const c = client(server.url);
  const seen = record(c);
  const log: string[] = [];
  c.on('state', (s) => log.push(s));
  c.on('joined', (j) => log.push(`joined ${j.room}`));
  c.on('resumed', (r) => log.push(`resumed ${r.room} ${r.recovered}`));
  c.on('*', (_d, m) => log.push(`delivery ${m.offset ?? m.event}`));
  try {
    const first = await joinedClient(() => server.peer(), c, 's1', 41);
    assert.deepEqual([...c.rooms], [
      ['lobby', { epoch: 'e1', offset: 41 }],
      ['plain', {}],
    ]);

    // In order, each offset once: 42 and 43 repeated (an overlap) are not delivered again.
    first.send(lobby(42), lobby(43), lobby(42), lobby(43), lobby(44), { event: 'room.post', data: {}, room: 'plain' });
    await withTimeout(
      (async () => {
        while (seen.length < 4) await sleep(5);
      })(),
      2000,
      'deliveries',
    );
    assert.deepEqual(seen, ['lobby@42', 'lobby@43', 'lobby@44', 'room.post']);
    assert.equal(c.rooms.get('lobby')?.offset, 44);

    // An abrupt drop. While away the app keeps sending: buffered.
    first.ws.terminate();
    await next(c, 'state', (s) => s === 'connecting');
    const buffered = c.send('room.post', { room: 'lobby', n: 1 });

    // Second connection: the server cannot resume right now. The first frame is the
    // resume, with the old session and the last offsets.
    const second = await server.peer();
    second.welcome('s2');
    const resume2 = await second.next();
    assert.equal(resume2.event, '$resume');
    assert.deepEqual(resume2.data, { session: 's1', rooms: { lobby: { epoch: 'e1', offset: 44 }, plain: {} } });
    second.send({ ack: resume2.id, ok: false, error: { code: 'unavailable', message: 'redis is down' } });
    await second.closed;

    // Third: dropped before answering. Nothing was restored, so still session s1.
    const third = await server.peer();
    third.welcome('s3');
    assert.equal((await third.next()).data?.session, 's1');
    third.ws.terminate();

    // Fourth: the resume succeeds; replays overlap what the client has (44) and are merged.
    const fourth = await server.peer();
    fourth.welcome('s4');
    const resume4 = await fourth.next();
    assert.equal(resume4.event, '$resume');
    assert.equal(resume4.data?.session, 's1');
    assert.equal(c.state, 'connecting', 'not connected before the resume is answered');
    log.length = 0;
    fourth.send(
      { event: '$joined', data: { room: 'lobby', epoch: 'e1', offset: 43 } },
      { event: '$joined', data: { room: 'plain' } },
      lobby(44),
      lobby(45),
      lobby(46),
      { ack: resume4.id, ok: true, data: { rooms: { lobby: { recovered: true, replayed: 3 }, plain: { recovered: false } } } },
    );
    // The buffered send leaves only now, after the resume.
    const post = await fourth.next((f) => f.event === 'room.post');
    assert.deepEqual(fourth.received.map((f) => f.event), ['$resume', 'room.post']);
    fourth.ack(post.id, 'stored');
    assert.equal(await buffered, 'stored');
    assert.deepEqual(log, [
      'joined lobby',
      'joined plain',
      'delivery 45',
      'delivery 46',
      'connected',
      'resumed lobby true',
      'resumed plain false',
    ]);
    assert.deepEqual(seen.slice(4), ['lobby@45', 'lobby@46']);

    // The next drop presents the session of the connection that resumed (s4).
    fourth.ws.terminate();
    const fifth = await server.peer();
    fifth.welcome('s5');
    const resume5 = await fifth.next();
    assert.deepEqual(resume5.data, { session: 's4', rooms: { lobby: { epoch: 'e1', offset: 46 }, plain: {} } });
  } finally {
    c.disconnect();
    await server.close();
  }
});

test('session_expired: every room is reported lost and forgotten; the new session is used next', async () => {
  const server = await fakeServer();
  const c = client(server.url);
  const errors: string[] = [];
  c.on('error', (e) => errors.push(e.code));
  try {
    const first = await joinedClient(() => server.peer(), c, 's1', 0);
    first.ws.terminate();
    const second = await server.peer();
    second.welcome('s2');
    const resume = await second.next();
    const resumed: ResumedInfo[] = [];
    c.on('resumed', (r) => resumed.push(r));
    second.send({ ack: resume.id, ok: false, error: { code: 'session_expired', message: 'no such session' } });
    await next(c, 'state', (s) => s === 'connected');
    assert.deepEqual(resumed, [
      { room: 'lobby', recovered: false },
      { room: 'plain', recovered: false },
    ]);
    assert.equal(c.rooms.size, 0, 'the app joins again');
    assert.deepEqual(errors, [], 'an expired session is an outcome, not an error');

    // Rejoined on this connection: a later resume presents its session, s2.
    const join = c.send('room.join', { room: 'lobby' });
    const frame = await second.next((f) => f.event === 'room.join');
    second.send({ event: '$joined', data: { room: 'lobby', epoch: 'e9', offset: 5 } });
    second.ack(frame.id);
    await join;
    second.ws.terminate();
    const third = await server.peer();
    third.welcome('s3');
    assert.deepEqual((await third.next()).data, { session: 's2', rooms: { lobby: { epoch: 'e9', offset: 5 } } });
  } finally {
    c.disconnect();
    await server.close();
  }
});

test('a gap is not delivered: the client reconnects and resumes from the last offset it has', async () => {
  const server = await fakeServer();
  const c = client(server.url);
  const seen = record(c);
  try {
    const first = await joinedClient(() => server.peer(), c, 's1', 0);
    const dropped = next(c, 'state', (s, info) => s === 'connecting' && info.reason === 'gap');
    first.send(lobby(1), lobby(2), lobby(5), lobby(6));
    await dropped;
    await first.closed;
    assert.deepEqual(seen, ['lobby@1', 'lobby@2']);

    const second = await server.peer();
    second.welcome('s2');
    const resume = await second.next();
    assert.deepEqual(resume.data, { session: 's1', rooms: { lobby: { epoch: 'e1', offset: 2 }, plain: {} } });
    second.send(
      { event: '$joined', data: { room: 'lobby', epoch: 'e1', offset: 2 } },
      { event: '$joined', data: { room: 'plain' } },
      lobby(3),
      lobby(4),
      lobby(5),
      lobby(6),
      { ack: resume.id, ok: true, data: { rooms: { lobby: { recovered: true, replayed: 4 }, plain: { recovered: false } } } },
    );
    await next(c, 'state', (s) => s === 'connected');
    assert.deepEqual(seen, ['lobby@1', 'lobby@2', 'lobby@3', 'lobby@4', 'lobby@5', 'lobby@6']);
  } finally {
    c.disconnect();
    await server.close();
  }
});

test('$gap: the position is unknown until the next $joined, and a resume says so', async () => {
  const server = await fakeServer();
  const c = client(server.url);
  const seen = record(c);
  try {
    const first = await joinedClient(() => server.peer(), c, 's1', 10);
    const gap = next(c, 'gap');
    first.send({ event: '$gap', data: { room: 'lobby' } }, lobby(20), lobby(25));
    assert.deepEqual((await gap)[0], { room: 'lobby' });
    await withTimeout(
      (async () => {
        while (seen.length < 2) await sleep(5);
      })(),
      2000,
      'deliveries after $gap',
    );
    // No position to check against: delivered as they come, and not reconnected.
    assert.deepEqual(seen, ['lobby@20', 'lobby@25']);
    assert.deepEqual(c.rooms.get('lobby'), { epoch: 'e1' });
    assert.equal(server.count(), 1);

    first.ws.terminate();
    const second = await server.peer();
    second.welcome('s2');
    assert.deepEqual((await second.next()).data, { session: 's1', rooms: { lobby: {}, plain: {} } });
  } finally {
    c.disconnect();
    await server.close();
  }
});

test('rooms the server did not restore are dropped and reported as not recovered', async () => {
  const server = await fakeServer();
  const c = client(server.url);
  try {
    const first = await joinedClient(() => server.peer(), c, 's1', 3);
    first.ws.terminate();
    const second = await server.peer();
    second.welcome('s2');
    const resume = await second.next();
    const resumed: ResumedInfo[] = [];
    c.on('resumed', (r) => resumed.push(r));
    // Only lobby comes back (plain was left by the old connection before it died).
    second.send(
      { event: '$joined', data: { room: 'lobby', epoch: 'e1', offset: 3 } },
      { ack: resume.id, ok: true, data: { rooms: { lobby: { recovered: true, replayed: 0 } } } },
    );
    await next(c, 'state', (s) => s === 'connected');
    assert.deepEqual(resumed, [
      { room: 'lobby', recovered: true, replayed: 0 },
      { room: 'plain', recovered: false },
    ]);
    assert.deepEqual([...c.rooms.keys()], ['lobby']);
  } finally {
    c.disconnect();
    await server.close();
  }
});

test('a server without sessions: held rooms are reported lost, no $resume is sent', async () => {
  const server = await fakeServer();
  const c = client(server.url);
  try {
    const first = await joinedClient(() => server.peer(), c, '', 0);
    first.ws.terminate();
    const second = await server.peer();
    const resumed = next(c, 'resumed', (r) => r.room === 'plain');
    second.welcome();
    await resumed;
    assert.equal(c.state, 'connected');
    assert.equal(c.rooms.size, 0);
    const join = c.send('room.join', { room: 'lobby' });
    assert.equal((await second.next()).event, 'room.join', 'the first frame is the app\'s, not a $resume');
    second.ack(second.received[0]!.id);
    await join;
  } finally {
    c.disconnect();
    await server.close();
  }
});

test('close 4000 (resumed elsewhere) stops the client and gives up the session', async () => {
  const server = await fakeServer();
  const c = client(server.url);
  let retries = 0;
  c.on('reconnect', () => retries++);
  try {
    const first = await joinedClient(() => server.peer(), c, 's1', 0);
    const stopped = next(c, 'state', (s) => s === 'disconnected');
    first.ws.close(4000, 'resumed elsewhere');
    const [, info] = await stopped;
    assert.deepEqual(info, { reason: 'resumed_elsewhere', closeCode: 4000, message: 'resumed elsewhere' });
    await sleep(500);
    assert.equal(retries, 0);
    assert.equal(server.count(), 1);
    assert.equal(c.rooms.size, 0);

    // If the app connects again, it starts afresh rather than taking the session back.
    c.connect();
    const second = await server.peer();
    second.welcome('s2');
    await c.ready(2000);
    const join = c.send('room.join', { room: 'lobby' });
    assert.equal((await second.next()).event, 'room.join');
    second.ack(second.received[0]!.id);
    await join;
  } finally {
    c.disconnect();
    await server.close();
  }
});
