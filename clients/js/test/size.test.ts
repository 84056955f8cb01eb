/**
 * The package stays small and self-contained: a browser bundle of the ESM build is at
 * most 6 KB minified and gzipped, and nothing is needed at run time.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { test } from 'node:test';
import { build } from 'esbuild';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const LIMIT = 6144;

test(`the ESM bundle is at most ${LIMIT} bytes minified and gzipped`, async (t) => {
  const out = await build({
    entryPoints: [path.join(ROOT, 'dist/index.js')],
    bundle: true,
    minify: true,
    format: 'esm',
    // A browser target: an import of a Node.js module would fail the build.
    platform: 'browser',
    target: 'es2022',
    write: false,
    logLevel: 'silent',
  });
  const minified = out.outputFiles[0]!.contents;
  const gzipped = gzipSync(minified, { level: 9 }).length;
  t.diagnostic(`bundle: ${minified.length} bytes minified, ${gzipped} bytes gzipped`);
  assert.ok(gzipped <= LIMIT, `${gzipped} bytes gzipped`);
});

test('no runtime dependencies', () => {
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as Record<string, unknown>;
  for (const field of ['dependencies', 'peerDependencies', 'optionalDependencies']) {
    assert.equal(pkg[field], undefined, `package.json has ${field}`);
  }
});
