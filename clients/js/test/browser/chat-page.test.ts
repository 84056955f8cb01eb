/**
 * The chat page (examples/chat/web) in a real browser: Debian's Chromium driven by
 * playwright-core (never a downloaded browser), two wss-engine nodes sharing one Redis,
 * each serving the page with `--static`.
 *
 * Two pages, each on another node, join a room and chat. Then the first page's node is
 * killed (SIGKILL): the page reconnects to the other URL of its list, resumes, and the
 * messages the second page sent meanwhile appear once, in order; the state indicator
 * says so. A screenshot of each step goes to target/screenshots/ (not committed).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { build } from 'esbuild';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { CHAT, ROOT, startServer, withTimeout, type Server } from '../helpers.js';

const CHROMIUM = '/usr/bin/chromium';
const REPO = path.resolve(ROOT, '../..');
const SHOTS = path.join(REPO, 'target/screenshots');
/** Every wait of this test; a passing run takes a fraction of it. */
const WAIT = 15_000;

const redisProcs = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of redisProcs) p.kill('SIGKILL');
});

/** A free port, by binding port 0 and letting it go. */
async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** Our own redis-server on a free port, nothing kept on disk; resolves once it answers PING. */
async function startRedis(dir: string): Promise<{ url: string; stop(): void }> {
  const port = await freePort();
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
    stdio: 'ignore',
  });
  redisProcs.add(proc);
  const ping = (): Promise<boolean> =>
    new Promise((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('error', () => resolve(false));
      s.once('data', (d) => {
        s.destroy();
        resolve(d.toString().startsWith('+PONG'));
      });
      s.once('connect', () => s.write('PING\r\n'));
    });
  const deadline = Date.now() + 10_000;
  while (!(await ping())) {
    if (Date.now() > deadline || proc.exitCode !== null) throw new Error(`redis-server did not answer on port ${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    stop: () => {
      proc.kill('SIGKILL');
      redisProcs.delete(proc);
    },
  };
}

/** The page's files with a fresh bundle of the built client beside them. */
async function webDir(into: string): Promise<string> {
  const web = path.join(into, 'web');
  mkdirSync(web);
  for (const f of ['index.html', 'app.js', 'style.css']) copyFileSync(path.join(CHAT, 'web', f), path.join(web, f));
  await build({
    entryPoints: [path.join(ROOT, 'dist/index.js')],
    bundle: true,
    minify: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    outfile: path.join(web, 'wss-client.js'),
    logLevel: 'silent',
  });
  return web;
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

/** What the page shows: its state indicator and its message lines. */
async function view(page: Page): Promise<{ state: string; resumed: string; text: string; lines: string[]; offsets: number[] }> {
  return page.evaluate(() => {
    const status = document.getElementById('status')!;
    const items = [...document.querySelectorAll<HTMLLIElement>('#messages li')];
    return {
      state: status.dataset.state ?? '',
      resumed: status.dataset.resumed ?? '',
      text: document.getElementById('state-text')!.textContent ?? '',
      lines: items.map((li) => li.textContent ?? ''),
      offsets: items.filter((li) => li.dataset.offset).map((li) => Number(li.dataset.offset)),
    };
  });
}

/** Chat lines only ("Ann: hello#3" → "Ann: hello"), in the order shown. */
const chatLines = (lines: string[]): string[] => lines.filter((l) => /^\w+: /.test(l)).map((l) => l.replace(/#\d+$/, ''));

async function until(page: Page, what: string, check: (v: Awaited<ReturnType<typeof view>>) => boolean): Promise<void> {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const v = await view(page);
    if (check(v)) return;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}; the page shows ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function say(page: Page, text: string): Promise<void> {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

test('two pages on two nodes chat, and one survives its node being killed', { timeout: 60_000 }, async (t) => {
  if (!existsSync(CHROMIUM)) {
    t.skip(`no ${CHROMIUM}: scripts/test-deps installs Debian's chromium`);
    return;
  }
  mkdirSync(SHOTS, { recursive: true });
  const tmp = mkdtempSync(path.join(tmpdir(), 'wss-browser-'));
  let context: BrowserContext | undefined;
  let redis: Awaited<ReturnType<typeof startRedis>> | undefined;
  const nodes: Server[] = [];
  try {
    const web = await webDir(tmp);
    redis = await startRedis(tmp);
    // Each page comes from one node and reconnects to the other, another origin (port):
    // the nodes must allow it, as a deployment behind one domain would not need to.
    const origins = ['--allowed-origins', 'http://127.0.0.1:*'];
    for (let i = 0; i < 2; i++) {
      nodes.push(await startServer(CHAT, { args: ['--redis', redis.url, '--static', web, ...origins] }));
    }
    const [a, b] = nodes as [Server, Server];

    context = await withTimeout(
      chromium.launchPersistentContext(path.join(tmp, 'profile'), {
        executablePath: CHROMIUM,
        headless: true,
        viewport: { width: 900, height: 640 },
        args: [
          '--headless',
          '--no-sandbox',
          '--disable-gpu',
          '--disable-quic',
          '--no-first-run',
          '--disable-background-networking',
          '--disable-component-update',
          '--disable-sync',
        ],
      }),
      WAIT,
      'chromium to start',
    );
    context.setDefaultTimeout(WAIT);
    const open = async (server: Server, other: Server, name: string): Promise<Page> => {
      const page = await context!.newPage();
      page.on('pageerror', (e) => t.diagnostic(`${name}'s page: ${e.message}`));
      const list = `${server.url},${other.url}`;
      await page.goto(`http://127.0.0.1:${server.port}/?nodes=${encodeURIComponent(list)}&name=${name}&room=lobby`);
      return page;
    };
    // Ann's page comes from node A and lists A first; Bob's from B, B first.
    const ann = await open(a, b, 'Ann');
    const bob = await open(b, a, 'Bob');

    // 1. Both connected.
    await until(ann, 'Ann connected', (v) => v.state === 'connected');
    await until(bob, 'Bob connected', (v) => v.state === 'connected');
    const annNode = await ann.textContent('#connection');
    const bobNode = await bob.textContent('#connection');
    assert.notEqual(annNode?.split(' · ')[0], bobNode?.split(' · ')[0], 'the two pages are on two nodes');
    await shot(ann, '1-connected-ann');
    await shot(bob, '1-connected-bob');

    // 2. Both join #lobby; each sees the other arrive.
    await ann.click('#join-button');
    await until(ann, 'Ann in the room', (v) => v.lines.some((l) => l.startsWith('you joined #lobby')));
    await bob.click('#join-button');
    await until(ann, 'Ann sees Bob join', (v) => v.lines.some((l) => l.startsWith('Bob joined')));
    await until(bob, 'Bob in the room', (v) => v.lines.some((l) => l.startsWith('you joined #lobby')));
    await shot(ann, '2-joined-ann');
    await shot(bob, '2-joined-bob');

    // 3. They chat across the two nodes.
    await say(ann, 'hello from Ann');
    await until(bob, "Bob sees Ann's message", (v) => chatLines(v.lines).includes('Ann: hello from Ann'));
    await say(bob, 'hi Ann');
    const before = ['Ann: hello from Ann', 'Bob: hi Ann'];
    await until(ann, "Ann sees Bob's answer", (v) => chatLines(v.lines).join('\n') === before.join('\n'));
    await until(bob, 'Bob sees both', (v) => chatLines(v.lines).join('\n') === before.join('\n'));
    await shot(ann, '3-chatting-ann');
    await shot(bob, '3-chatting-bob');

    // 4. Ann's node dies. Bob keeps talking meanwhile.
    await a.kill();
    const away = ['Bob: are you there?', 'Bob: your node is gone', 'Bob: say something when you are back'];
    for (const line of away) await say(bob, line.slice('Bob: '.length));
    await shot(ann, '4-node-killed-ann');
    await until(bob, 'Bob sees his own messages', (v) => chatLines(v.lines).length === before.length + away.length);
    await shot(bob, '4-node-killed-bob');

    // 5. Ann's page is back, on node B, with every message once and in order.
    await until(ann, "Ann's page resumed", (v) => v.state === 'connected' && v.resumed !== '');
    const expected = [...before, ...away];
    await until(ann, 'the missed messages on Ann’s page', (v) => chatLines(v.lines).length >= expected.length);
    const resumed = await view(ann);
    t.diagnostic(`Ann's indicator after the kill: ${resumed.text}`);
    assert.equal(resumed.resumed, 'recovered', resumed.text);
    assert.match(resumed.text, /resumed · nothing lost/);
    assert.deepEqual(chatLines(resumed.lines), expected);
    // Offsets only grow: no line twice, none out of order.
    assert.deepEqual(
      resumed.offsets,
      [...resumed.offsets].sort((x, y) => x - y),
    );
    assert.equal(new Set(resumed.offsets).size, resumed.offsets.length);
    assert.equal((await ann.textContent('#connection'))?.split(' · ')[0], bobNode?.split(' · ')[0], "Ann's page is on Bob's node now");
    await shot(ann, '5-resumed-ann');

    // 6. And the conversation goes on.
    await say(ann, 'back, via node B');
    const after = [...expected, 'Ann: back, via node B'];
    await until(bob, "Bob sees Ann's return", (v) => chatLines(v.lines).join('\n') === after.join('\n'));
    await until(ann, 'Ann sees her message once', (v) => chatLines(v.lines).join('\n') === after.join('\n'));
    await shot(ann, '6-after-ann');
    await shot(bob, '6-after-bob');
  } finally {
    await context?.close().catch(() => {});
    for (const n of nodes) await n.kill().catch(() => {});
    redis?.stop();
    rmSync(tmp, { recursive: true, force: true });
  }
});
