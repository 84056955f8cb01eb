// The admin dashboard in a real browser (Debian's chromium through playwright-core;
// no browser is ever downloaded): Redis and two nodes on free ports, a wrong key and a
// key without the admin scope refused, sign in, both nodes listed, an event sent from
// the form reaching a WebSocket client on the other node (its schema errors shown
// inline first), a user disconnected, the page on a phone-sized screen. Screenshots go
// to target/screenshots/admin-*.png.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import WebSocket from "ws";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../..");
const target = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(root, "target");
const bin = process.env.WSS_ENGINE_BIN || join(target, "debug/wss-engine");
const shots = join(target, "screenshots");
const ADMIN = "admin-key-for-the-browser-test";
const READER = "reader-key-for-the-browser-test";
const JWT = "browser-test-jwt-secret";
const WAIT = 15_000;

const children = [];
const cleanups = [];
// A test process that ends early (a failed `before`) still takes its children along.
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});
let browser;
let nodes;

function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
    server.on("error", fail);
  });
}

/** Start a process; resolve with it once `ready(line)` matches a line of its output. */
function start(cmd, args, ready) {
  return new Promise((ok, fail) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, NO_COLOR: "1", WSS_LOG: "info" } });
    children.push(child);
    const log = [];
    const timer = setTimeout(() => fail(new Error(`${cmd} not ready in ${WAIT} ms:\n${log.join("")}`)), WAIT);
    const watch = (chunk) => {
      const text = chunk.toString();
      log.push(text);
      const found = ready(log.join(""));
      if (found) {
        clearTimeout(timer);
        ok({ child, found });
      }
    };
    child.stdout.on("data", watch);
    child.stderr.on("data", watch);
    child.on("exit", (code) => fail(new Error(`${cmd} exited with ${code}:\n${log.join("")}`)));
  });
}

async function startNode(redisUrl, prefix) {
  const { found } = await start(bin, [
    "--config", join(root, "examples/notify"),
    "--listen", "127.0.0.1:0",
    "--redis", redisUrl, "--redis-prefix", prefix,
    "--api-key", `admin=${ADMIN}`, "--api-key", `reader=${READER}:read`,
    "--jwt-secret", JWT,
  ], (log) => {
    const m = log.match(/listening: ws:\/\/([0-9.:]+)\/ws.*node=(\w+)/);
    return m && { addr: m[1], id: m[2] };
  });
  return found;
}

async function api(addr, method, path) {
  const response = await fetch(`http://${addr}${path}`, { method, headers: { Authorization: `Bearer ${ADMIN}` } });
  return response.json();
}

function token(sub) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + 600 })}`;
  return `${body}.${createHmac("sha256", JWT).update(body).digest("base64url")}`;
}

/** A WebSocket client that keeps every frame and can wait for one. */
function client(url) {
  const ws = new WebSocket(url);
  const frames = [];
  const waiters = [];
  ws.on("message", (data) => {
    frames.push(JSON.parse(data.toString()));
    for (const w of waiters.splice(0)) w();
  });
  const closed = new Promise((ok) => ws.on("close", (code, reason) => ok({ code, reason: reason.toString() })));
  return {
    ws,
    frames,
    closed,
    async next(match) {
      const deadline = Date.now() + WAIT;
      for (;;) {
        const found = frames.find(match);
        if (found) return found;
        if (Date.now() > deadline) throw new Error(`no matching frame; got ${JSON.stringify(frames)}`);
        await new Promise((ok) => { waiters.push(ok); setTimeout(ok, 200); });
      }
    },
    send(frame) { ws.send(JSON.stringify(frame)); },
  };
}

before(async () => {
  mkdirSync(shots, { recursive: true });
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "wss-admin-redis-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  await start("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir],
    (log) => log.includes("Ready to accept connections"));
  const prefix = `browser-${process.pid}:`;
  nodes = [await startNode(`redis://127.0.0.1:${port}`, prefix), await startNode(`redis://127.0.0.1:${port}`, prefix)];
  const userDataDir = mkdtempSync(join(tmpdir(), "wss-admin-chromium-"));
  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 900 },
  });
  browser.userDataDir = userDataDir;
});

after(async () => {
  try {
    if (browser) {
      await browser.close();
      rmSync(browser.userDataDir, { recursive: true, force: true });
    }
  } finally {
    // Only the processes this test started, by their handles; even when closing the
    // browser failed, so no redis-server or node outlives the test.
    for (const child of children.reverse()) child.kill("SIGKILL");
    for (const cleanup of cleanups) cleanup();
  }
});

test("the dashboard signs in with an admin key, lists both nodes, sends and disconnects", async () => {
  const [n1, n2] = nodes;
  const page = await browser.newPage();
  await page.goto(`http://${n1.addr}/admin/`);
  await page.locator("#sign-in").waitFor();
  await page.screenshot({ path: join(shots, "admin-1-sign-in.png") });

  // A wrong key, then a key without the admin scope: both refused, nothing shown.
  await page.fill("#key", "not-a-key-of-this-server");
  await page.click("#sign-in-form button");
  await page.locator("#sign-in-error", { hasText: "This key is not accepted." }).waitFor({ timeout: WAIT });
  await page.screenshot({ path: join(shots, "admin-2-wrong-key.png") });
  assert.equal(await page.locator("#dashboard").isVisible(), false);
  await page.fill("#key", READER);
  await page.click("#sign-in-form button");
  await page.locator("#sign-in-error", { hasText: "lacks the admin scope" }).waitFor({ timeout: WAIT });
  assert.equal(await page.evaluate(() => sessionStorage.getItem("wss-admin-key")), null);

  await page.fill("#key", ADMIN);
  await page.click("#sign-in-form button");
  await page.locator("#dashboard").waitFor({ timeout: WAIT });
  // Kept in this tab's session storage, never in a cookie.
  assert.equal(await page.evaluate(() => sessionStorage.getItem("wss-admin-key")), ADMIN);
  assert.deepEqual(await browser.cookies(), []);
  for (const node of nodes) {
    await page.locator(`#nodes tr[data-node="${node.id}"]`).waitFor({ timeout: WAIT });
  }
  assert.equal(await page.locator("#nodes tbody tr").count(), 2);

  // A client on the other node joins the room the form will post to.
  const reader = client(`ws://${n2.addr}/ws`);
  await reader.next((f) => f.event === "$welcome");
  reader.send({ event: "room.join", data: { room: "news" }, id: "j1" });
  await reader.next((f) => f.ack === "j1");
  await page.locator("#rooms tbody tr", { hasText: "news" }).waitFor({ timeout: WAIT });
  await page.screenshot({ path: join(shots, "admin-3-dashboard.png"), fullPage: true });

  // A payload the schema refuses: its errors appear under the payload.
  await page.selectOption("#event", "news.post");
  await page.fill("#payload", JSON.stringify({ room: "news", text: "" }));
  await page.click("#send-form button");
  await page.locator("#payload-errors li", { hasText: "/text" }).waitFor({ timeout: WAIT });
  await page.locator("#send-result", { hasText: "400 invalid_payload" }).waitFor();
  await page.locator("#send-form").screenshot({ path: join(shots, "admin-4-schema-errors.png") });

  await page.fill("#payload", JSON.stringify({ room: "news", text: "Sent from the dashboard" }));
  await page.click("#send-form button");
  await page.locator("#send-result", { hasText: "200 ok" }).waitFor({ timeout: WAIT });
  assert.equal(await page.locator("#payload-errors").isVisible(), false);
  const delivered = await reader.next((f) => f.event === "news.post");
  assert.equal(delivered.data.text, "Sent from the dashboard");
  assert.equal(delivered.room, "news");
  await page.locator("#send-form").screenshot({ path: join(shots, "admin-5-sent.png") });

  // Disconnect a user connected to the other node.
  const dave = client(`ws://${n2.addr}/ws?token=${token("dave")}`);
  await dave.next((f) => f.event === "$welcome");
  await page.fill("#user", "dave");
  await page.click("#kick-form button");
  await page.locator("#kick-result", { hasText: "1 connection(s) of “dave” asked to close." }).waitFor({ timeout: WAIT });
  const closed = await dave.closed;
  assert.deepEqual(closed, { code: 4001, reason: "disconnected by the server" });

  // Rates and errors: the refused payload counts as an invalid_payload.
  await page.locator("#errors tbody tr", { hasText: "invalid_payload" }).waitFor({ timeout: WAIT });
  await page.screenshot({ path: join(shots, "admin-6-after.png"), fullPage: true });

  // A phone-sized screen: one column, nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone`);
  await page.screenshot({ path: join(shots, "admin-7-phone.png"), fullPage: true });

  // The API agrees with the page.
  const listed = await api(n2.addr, "GET", "/api/nodes");
  assert.deepEqual(listed.data.nodes.map((n) => n.id).sort(), nodes.map((n) => n.id).sort());
  reader.ws.close();
  await page.close();
});
