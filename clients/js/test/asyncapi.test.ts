/**
 * `wss-engine asyncapi DIR` for every pack this repository ships (`events/` and each
 * `examples/*`), in JSON and YAML, read by the AsyncAPI project's own parser: no
 * diagnostic of severity error.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { BIN, ROOT } from './helpers.js';

/**
 * The part of @asyncapi/parser used here. Imported by a name TypeScript does not
 * resolve: its declarations need types of packages it does not depend on (node-fetch).
 */
interface Operation {
  id(): string;
}
interface ParserModule {
  Parser: new () => {
    parse(text: string): Promise<{
      document?: { operations(): { filterBySend(): Operation[]; filterByReceive(): Operation[] } };
      diagnostics: { severity: number; code: string | number; message: string; path: (string | number)[] }[];
    }>;
  };
}
const PARSER = '@asyncapi/parser';
const { Parser } = (await import(PARSER)) as ParserModule;
/** Spectral's severities: 0 error, 1 warning, 2 information, 3 hint. */
const SEVERITY = ['error', 'warning', 'information', 'hint'];

const REPO = path.resolve(ROOT, '../..');
const PACKS = [
  'events',
  ...readdirSync(path.join(REPO, 'examples'))
    .filter((name) => statSync(path.join(REPO, 'examples', name)).isDirectory())
    .map((name) => `examples/${name}`),
];

const parser = new Parser();

for (const pack of PACKS) {
  for (const format of ['json', 'yaml']) {
    test(`the AsyncAPI document of ${pack} (${format}) parses without errors`, async (t) => {
      const text = execFileSync(BIN, ['asyncapi', path.join(REPO, pack), '--format', format], { encoding: 'utf8', timeout: 10_000 });
      const { document, diagnostics } = await parser.parse(text);
      const errors = diagnostics.filter((d) => d.severity === 0);
      assert.deepEqual(
        errors.map((d) => `${d.code}: ${d.message} at ${d.path.join('/')}`),
        [],
      );
      assert.ok(document, 'no document');
      for (const d of diagnostics) t.diagnostic(`${SEVERITY[d.severity]} ${d.code}: ${d.message}`);
      // Every client event of the pack is a send operation, and the system events are there.
      const check = JSON.parse(execFileSync(BIN, ['check', path.join(REPO, pack), '--list', '--format', 'json'], { encoding: 'utf8', timeout: 10_000 })) as {
        kind: string;
        name?: string;
      }[];
      const sends = document.operations().filterBySend().map((op) => op.id());
      for (const e of check.filter((e) => e.kind === 'event')) assert.ok(sends.includes(`send.${e.name}`), `no send operation for ${e.name}`);
      const receives = document.operations().filterByReceive().map((op) => op.id());
      for (const sys of ['$welcome', '$error', '$joined', '$left', '$gap']) assert.ok(receives.includes(`receive.${sys}`), sys);
      assert.ok(sends.includes('send.$resume'));
    });
  }
}
