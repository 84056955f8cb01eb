/**
 * Test support: real `wss-engine` processes on free ports, bounded waits, tokens.
 *
 * Every server a test starts is killed by PID when the test file's process exits, even
 * when an assertion failed halfway (the `exit` hook below), and every wait here has a
 * deadline, so a broken client fails a test instead of hanging the suite.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync } from 'node:fs';
import { connect, createServer, type Server as NetServer, type Socket } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { WssClient, type ClientEvents, type ClientOptions } from '@wss-engine/client';
import WebSocket from 'ws';

/** clients/js, whether this runs from test/ or from its build in build-test/. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const BIN = path.resolve(ROOT, process.env.WSS_ENGINE_BIN ?? '../../target/debug/wss-engine');
export const CHAT = path.resolve(ROOT, '../../examples/chat');
export const PACKS = path.join(ROOT, 'test/packs');

if (!existsSync(BIN)) {
  throw new Error(`no wss-engine binary at ${BIN}: build it (cargo build --bin wss-engine) or set WSS_ENGINE_BIN`);
}

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const proc of running) proc.kill('SIGKILL');
});

export interface Server {
  port: number;
  url: string;
  /** Everything the server logged so far (stderr). */
  log(): string;
  /** SIGSTOP: the socket stays open, nothing is answered. */
  pause(): void;
  /** SIGCONT. */
  resume(): void;
  /** SIGKILL and wait for the exit: an abrupt end, as in a crash. */
  kill(): Promise<void>;
}

export interface ServerOptions {
  args?: string[];
  /** A fixed port, to restart a server where its clients expect it. */
  port?: number;
}

/** Start a server and resolve once it listens; rejects with its log if it exits first. */
export async function startServer(pack: string, options: ServerOptions = {}): Promise<Server> {
  // A restart on the same port can race the kernel releasing it: retry briefly.
  for (let tries = 0; ; tries++) {
    try {
      return await spawnServer(pack, options);
    } catch (e) {
      if (tries < 20 && options.port && /in use/i.test(String(e))) await sleep(100);
      else throw e;
    }
  }
}

function spawnServer(pack: string, options: ServerOptions): Promise<Server> {
  const proc = spawn(
    BIN,
    ['--config', pack, '--listen', `127.0.0.1:${options.port ?? 0}`, '--shutdown-timeout', '1', ...(options.args ?? [])],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, NO_COLOR: '1', WSS_LOG: 'info' } },
  );
  running.add(proc);
  let log = '';
  const exited = new Promise<void>((resolve) =>
    proc.once('exit', () => {
      running.delete(proc);
      resolve();
    }),
  );
  return new Promise((resolve, reject) => {
    let listening = false;
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`wss-engine did not listen within 10 s:\n${log}`));
    }, 10_000);
    proc.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      log += chunk;
      const m = /listening: ws:\/\/[\d.]+:(\d+)\/ws/.exec(log);
      if (!m || listening) return;
      listening = true;
      clearTimeout(timer);
      const port = Number(m[1]);
      resolve({
        port,
        url: `ws://127.0.0.1:${port}/ws`,
        log: () => log,
        pause: () => proc.kill('SIGSTOP'),
        resume: () => proc.kill('SIGCONT'),
        kill: async () => {
          proc.kill('SIGKILL');
          await withTimeout(exited, 5000, 'wss-engine did not exit after SIGKILL');
        },
      });
    });
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`wss-engine exited before listening:\n${log}`));
    });
  });
}

/** A TCP proxy whose connections the test can cut abruptly, and refuse for a while. */
export class Proxy {
  readonly #server: NetServer;
  readonly #sockets = new Set<Socket>();
  #open = true;
  port = 0;

  constructor(target: number) {
    this.#server = createServer((down) => {
      if (!this.#open) {
        down.destroy();
        return;
      }
      const up = connect(target, '127.0.0.1');
      for (const s of [down, up]) {
        this.#sockets.add(s);
        s.on('error', () => {});
        s.on('close', () => {
          this.#sockets.delete(s);
          down.destroy();
          up.destroy();
        });
      }
      down.pipe(up).pipe(down);
    });
  }

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    this.port = (this.#server.address() as { port: number }).port;
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** Reset every connection: no close frame either way, as when a network vanishes. */
  cut(): void {
    for (const s of this.#sockets) s.resetAndDestroy();
  }

  refuse(): void {
    this.#open = false;
  }

  accept(): void {
    this.#open = true;
  }

  close(): Promise<void> {
    this.cut();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]);
}

/** The arguments of the next `event` of `client` that satisfies `accept`. */
export function next<K extends keyof ClientEvents>(
  client: WssClient,
  event: K,
  accept: (...args: Parameters<ClientEvents[K]>) => boolean = () => true,
  ms = 5000,
): Promise<Parameters<ClientEvents[K]>> {
  let off = (): void => {};
  const seen = new Promise<Parameters<ClientEvents[K]>>((resolve) => {
    const fn = (...args: Parameters<ClientEvents[K]>): void => {
      if (accept(...args)) resolve(args);
    };
    off = client.on(event, fn as ClientEvents[K]);
  });
  return withTimeout(seen, ms, `client event ${event}`).finally(() => off());
}

/** A client on the `ws` package, with short delays so reconnect tests stay quick. */
export function client(url: string | string[], options: ClientOptions = {}): WssClient {
  return new WssClient(url, { websocket: WebSocket, minReconnectDelay: 50, maxReconnectDelay: 400, timeout: 2000, ...options });
}

/** Connect and wait for `connected` (bounded). */
export async function connected(c: WssClient, ms = 5000): Promise<WssClient> {
  c.connect();
  await c.ready(ms);
  return c;
}

/** An HS256 JWT signed with `secret`. */
export function jwt(claims: Record<string, unknown>, secret: string): string {
  const part = (x: object): string => Buffer.from(JSON.stringify(x)).toString('base64url');
  const unsigned = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`;
}
