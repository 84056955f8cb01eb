/**
 * `wss-types` end to end: the chat example's AsyncAPI document (through the binary, and
 * from a file) becomes an event map, and the TypeScript compiler then accepts a correct
 * app and rejects the mistakes the map exists for, with the expected error.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import ts from 'typescript';
import { BIN, CHAT, ROOT } from './helpers.js';

const WSS_TYPES = path.join(ROOT, 'bin/wss-types.js');
// Inside the package, so `@wss-engine/client` resolves to this package's dist/ by name.
const WORK = path.join(ROOT, 'build-test/wss-types');

function wssTypes(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [WSS_TYPES, ...args], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Type-check `source` (beside the generated `chat-events.d.ts`); its diagnostics. */
function compile(name: string, source: string): ts.Diagnostic[] {
  const file = path.join(WORK, name);
  writeFileSync(file, source);
  const program = ts.createProgram([file], {
    strict: true,
    noEmit: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    lib: ['lib.es2022.d.ts', 'lib.dom.d.ts'],
    types: [],
  });
  return [...ts.getPreEmitDiagnostics(program)];
}

const text = (d: ts.Diagnostic): string => ts.flattenDiagnosticMessageText(d.messageText, '\n');

const HEADER = `import { WssClient } from '@wss-engine/client';
import type { ChatEvents } from './chat-events.js';
const client = new WssClient<ChatEvents>('ws://127.0.0.1:3000/ws');
`;

test('wss-types --pack writes an event map the compiler enforces', async (t) => {
  mkdirSync(WORK, { recursive: true });
  const out = path.join(WORK, 'chat-events.d.ts');
  const r = wssTypes(['--pack', CHAT, '--bin', BIN, '--name', 'ChatEvents', '-o', out]);
  assert.equal(r.status, 0, r.stderr);
  const dts = readFileSync(out, 'utf8');
  assert.match(dts, /export interface ChatEvents/);
  assert.match(dts, /"chat\.message": \{/);

  await t.test('a correct app compiles', () => {
    const diagnostics = compile(
      'good.mts',
      `${HEADER}
export async function app(): Promise<void> {
  const joined = await client.send('chat.join', { room: 'lobby' });
  const members: number = joined.members;
  const none: null = await client.send('chat.message', { room: 'lobby', text: 'hi' });
  client.on('chat.message', (data, meta) => {
    const text: string = data.text;
    const from: string = data.from;
    const user: string | null = data.user;
    void [text, from, user, meta.offset];
  });
  client.on('chat.joined', (data) => void data.conn);
  client.on('state', (state) => void state);
  void [members, none];
}
`,
    );
    assert.deepEqual(diagnostics.map(text), []);
  });

  await t.test('a message without its text does not compile', () => {
    const diagnostics = compile('bad-send.mts', `${HEADER}void client.send('chat.message', { room: 'lobby' });\n`);
    assert.equal(diagnostics.length, 1, diagnostics.map(text).join('\n'));
    assert.equal(diagnostics[0]!.code, 2345);
    assert.match(text(diagnostics[0]!), /Property 'text' is missing in type '\{ room: string; \}'/);
  });

  await t.test('a delivery is typed as delivered', () => {
    const diagnostics = compile(
      'bad-on.mts',
      `${HEADER}client.on('chat.message', (data) => { const n: number = data.text; void n; });\n`,
    );
    assert.equal(diagnostics.length, 1, diagnostics.map(text).join('\n'));
    assert.equal(diagnostics[0]!.code, 2322);
    assert.match(text(diagnostics[0]!), /Type 'string' is not assignable to type 'number'/);
  });

  await t.test('an event the pack does not have does not compile', () => {
    const diagnostics = compile('bad-name.mts', `${HEADER}void client.send('chat.mesage', { room: 'lobby', text: 'hi' });\n`);
    assert.equal(diagnostics.length, 1, diagnostics.map(text).join('\n'));
    assert.match(text(diagnostics[0]!), /"chat\.mesage"/);
  });
});

test('wss-types reads a document from a file and refuses what is not AsyncAPI 3', () => {
  mkdirSync(WORK, { recursive: true });
  const doc = path.join(WORK, 'chat.json');
  writeFileSync(doc, execFileSync(BIN, ['asyncapi', CHAT], { encoding: 'utf8', timeout: 10_000 }));
  const r = wssTypes([doc]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /export interface PackEvents \{/);
  assert.doesNotMatch(r.stdout, /\$welcome|\$resume/, 'the protocol events are the client library\'s business');

  const old = path.join(WORK, 'old.json');
  writeFileSync(old, JSON.stringify({ asyncapi: '2.6.0', info: {}, channels: {} }));
  const refused = wssTypes([old]);
  assert.equal(refused.status, 1);
  assert.match(refused.stderr, /not an AsyncAPI 3 document/);

  const usage = wssTypes([]);
  assert.equal(usage.status, 2);
  assert.match(usage.stderr, /usage: wss-types/);

  const broken = wssTypes(['--pack', path.join(ROOT, '../../tests/fixtures/broken/bad-scope'), '--bin', BIN]);
  assert.equal(broken.status, 1);
  assert.match(broken.stderr, /asyncapi .* failed/);
});
