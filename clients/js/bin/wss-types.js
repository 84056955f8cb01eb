#!/usr/bin/env node
// @ts-check
/**
 * wss-types: the events of a pack as a TypeScript event map for `WssClient<T>`.
 *
 *   wss-types asyncapi.json [-o events.d.ts] [--name PackEvents]
 *   wss-types --pack DIR [--bin wss-engine] [-o events.d.ts] [--name PackEvents]
 *
 * Reads an AsyncAPI 3 document (a file, or what `wss-engine asyncapi DIR` prints) and
 * writes `export interface PackEvents { send: {…}; receive: {…} }`: per client event its
 * `data` and `reply` (the ack's data), per delivered event its data. The protocol's own
 * `$` events are left out (the client handles them). The types come from the payload
 * schemas through json-schema-to-typescript, which this command needs (a development
 * dependency of the app: `npm install --save-dev json-schema-to-typescript`); the
 * client library itself needs nothing at run time.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

/** @typedef {Record<string, any>} Obj */

/**
 * Follow a local `$ref` (`#/a/b`) in `doc`, repeatedly.
 * @param {Obj} doc
 * @param {any} value
 * @returns {any}
 */
function deref(doc, value) {
  for (let hops = 0; value && typeof value.$ref === 'string'; hops++) {
    const ref = value.$ref;
    if (!ref.startsWith('#/') || hops > 32) throw new Error(`cannot follow $ref ${ref}: only references inside the document are read`);
    value = ref
      .slice(2)
      .split('/')
      .map((/** @type {string} */ t) => decodeURIComponent(t).replace(/~1/g, '/').replace(/~0/g, '~'))
      .reduce((/** @type {any} */ at, /** @type {string} */ key) => (at == null ? undefined : at[key]), doc);
    if (value === undefined) throw new Error(`$ref ${ref} points at nothing`);
  }
  return value;
}

/**
 * The event a message carries: its payload's `event` constant.
 * @param {Obj} payload
 * @returns {string | undefined}
 */
function eventName(payload) {
  const event = payload?.properties?.event;
  return typeof event?.const === 'string' ? event.const : Array.isArray(event?.enum) && event.enum.length === 1 ? event.enum[0] : undefined;
}

/**
 * One JSON Schema whose TypeScript type is the event map: `{ send, receive }`.
 * @param {Obj} doc an AsyncAPI 3 document
 * @param {string} name the interface's name
 * @returns {Obj}
 */
export function eventMapSchema(doc, name) {
  if (typeof doc?.asyncapi !== 'string' || !doc.asyncapi.startsWith('3.')) {
    throw new Error(`not an AsyncAPI 3 document (asyncapi: ${JSON.stringify(doc?.asyncapi)})`);
  }
  /** @type {Obj} */
  const send = {};
  /** @type {Obj} */
  const receive = {};
  for (const [id, raw] of Object.entries(doc.operations ?? {})) {
    const op = deref(doc, raw);
    for (const m of op.messages ?? []) {
      const message = deref(doc, m);
      const payload = deref(doc, message.payload ?? {});
      const event = eventName(payload);
      if (!event) throw new Error(`operation ${id}: its message's payload has no \`event\` constant`);
      if (event.startsWith('$')) continue;
      const data = payload.properties?.data ?? {};
      const description = op.summary ?? message.summary ?? op.description;
      if (op.action === 'send') {
        // The ack: the reply message whose payload says `ok: true`.
        const replies = (op.reply?.messages ?? []).map((/** @type {any} */ r) => deref(doc, deref(doc, r).payload ?? {}));
        const ok = replies.find((/** @type {any} */ p) => p?.properties?.ok?.const === true);
        send[event] = {
          type: 'object',
          ...(description ? { description } : {}),
          required: ['data', 'reply'],
          additionalProperties: false,
          properties: { data, reply: ok?.properties?.data ?? {} },
        };
      } else if (op.action === 'receive') {
        receive[event] = description ? { ...data, description: data.description ?? description } : data;
      }
    }
  }
  const map = (/** @type {Obj} */ properties) => ({
    type: 'object',
    additionalProperties: false,
    required: Object.keys(properties),
    properties,
  });
  return {
    title: name,
    description: `Events of ${doc.info?.title ?? 'the pack'} (AsyncAPI ${doc.info?.version ?? ''}), for \`new WssClient<${name}>(…)\`.`,
    ...map({ send: map(send), receive: map(receive) }),
    // So that references into the document's schemas resolve from this root.
    ...(doc.components ? { components: doc.components } : {}),
  };
}

/**
 * The `.d.ts` text of the event map of `doc`.
 * @param {Obj} doc
 * @param {{ name?: string }} [options]
 * @returns {Promise<string>}
 */
export async function generate(doc, options = {}) {
  const name = options.name ?? 'PackEvents';
  let compile;
  try {
    ({ compile } = await import('json-schema-to-typescript'));
  } catch {
    throw new Error('wss-types needs json-schema-to-typescript: npm install --save-dev json-schema-to-typescript');
  }
  const ts = await compile(/** @type {any} */ (eventMapSchema(doc, name)), name, {
    bannerComment: `/* Generated by wss-types from the AsyncAPI document of ${doc.info?.title ?? 'a pack'}: do not edit. */`,
    additionalProperties: true,
    strictIndexSignatures: false,
    format: true,
  });
  return ts;
}

/**
 * `wss-engine asyncapi DIR`, parsed.
 * @param {string} dir
 * @param {string} bin
 * @returns {Obj}
 */
export function packDocument(dir, bin = 'wss-engine') {
  let out;
  try {
    out = execFileSync(bin, ['asyncapi', dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20 });
  } catch (e) {
    const err = /** @type {{ stderr?: string, message: string }} */ (e);
    throw new Error(`${bin} asyncapi ${dir} failed:\n${err.stderr || err.message}`);
  }
  return JSON.parse(out);
}

const USAGE = `usage: wss-types FILE.json [-o OUT.d.ts] [--name NAME]
       wss-types --pack DIR [--bin wss-engine] [-o OUT.d.ts] [--name NAME]`;

/** @param {string[]} argv */
export async function main(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      pack: { type: 'string' },
      bin: { type: 'string' },
      out: { type: 'string', short: 'o' },
      name: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if ((values.pack ? 1 : 0) + positionals.length !== 1) {
    console.error(USAGE);
    return 2;
  }
  const doc = values.pack
    ? packDocument(values.pack, values.bin ?? process.env.WSS_ENGINE_BIN ?? 'wss-engine')
    : JSON.parse(readFileSync(/** @type {string} */ (positionals[0]), 'utf8'));
  const ts = await generate(doc, { name: values.name });
  if (values.out) writeFileSync(values.out, ts);
  else process.stdout.write(ts);
  return 0;
}

/** Run as a command (also through npm's bin symlink), not imported. */
function isMain() {
  try {
    return import.meta.url === pathToFileURL(realpathSync(process.argv[1] ?? '')).href;
  } catch {
    return false;
  }
}

if (isMain()) {
  main(process.argv.slice(2)).then(
    (code) => (process.exitCode = code),
    (e) => {
      console.error(`wss-types: ${e instanceof Error ? e.message : e}`);
      process.exitCode = 1;
    },
  );
}
