/**
 * A scripted WebSocket server for protocol cases the real binary cannot be made to
 * produce on demand (duplicates, gaps, expired sessions, close 4000): the test reads
 * what the client sent and writes exactly the frames it wants, connection by
 * connection. Every wait is bounded.
 */
import { WebSocketServer, type WebSocket } from 'ws';
import { withTimeout } from './helpers.js';

/** A client frame as the fake server sees it. */
export interface Frame {
  event?: string;
  id?: string;
  data?: Record<string, unknown>;
}

export class Peer {
  readonly received: Frame[] = [];
  readonly closed: Promise<{ code: number }>;
  #waiters: { accept: (f: Frame) => boolean; resolve: (f: Frame) => void }[] = [];
  #seen = 0;

  constructor(readonly ws: WebSocket) {
    ws.on('message', (raw) => {
      const frame = JSON.parse(String(raw)) as Frame;
      this.received.push(frame);
      this.#wake();
    });
    this.closed = new Promise((resolve) => ws.once('close', (code) => resolve({ code })));
  }

  #wake(): void {
    for (const w of [...this.#waiters]) {
      const frame = this.received.slice(this.#seen).find(w.accept);
      if (frame) {
        this.#seen = this.received.indexOf(frame) + 1;
        this.#waiters.splice(this.#waiters.indexOf(w), 1);
        w.resolve(frame);
      }
    }
  }

  /** The next frame from the client (after the last one returned) that `accept`s. */
  next(accept: (f: Frame) => boolean = () => true, ms = 3000): Promise<Frame> {
    const found = new Promise<Frame>((resolve) => {
      this.#waiters.push({ accept, resolve });
      this.#wake();
    });
    return withTimeout(found, ms, 'a frame from the client');
  }

  send(...frames: object[]): void {
    for (const f of frames) this.ws.send(JSON.stringify(f));
  }

  welcome(session?: string): void {
    this.send({ event: '$welcome', data: { conn: 'c', node: 'n', ...(session ? { session, resume_ttl: 120 } : {}) } });
  }

  ack(id: string | undefined, data: unknown = null): void {
    this.send({ ack: id, ok: true, data });
  }
}

export interface Fake {
  url: string;
  /** The next connection (in order of arrival). */
  peer(ms?: number): Promise<Peer>;
  count(): number;
  close(): Promise<void>;
}

/** `onConnect` runs for each new connection, for servers that act on their own. */
export async function fakeServer(onConnect: (peer: Peer) => void = () => {}): Promise<Fake> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((resolve) => wss.once('listening', resolve));
  const peers: Peer[] = [];
  let taken = 0;
  let wake = (): void => {};
  wss.on('connection', (ws) => {
    const peer = new Peer(ws);
    peers.push(peer);
    onConnect(peer);
    wake();
  });
  const { port } = wss.address() as { port: number };
  return {
    url: `ws://127.0.0.1:${port}/ws`,
    peer: (ms = 3000) => {
      const arrived = new Promise<Peer>((resolve) => {
        const check = (): void => {
          if (peers.length > taken) resolve(peers[taken++]!);
        };
        wake = check;
        check();
      });
      return withTimeout(arrived, ms, 'a connection from the client');
    },
    count: () => peers.length,
    close: () =>
      new Promise<void>((resolve) => {
        for (const ws of wss.clients) ws.terminate();
        wss.close(() => resolve());
      }),
  };
}
