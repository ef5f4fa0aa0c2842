// Test harness: runs the real `jetway` binary on a free port with a fresh data dir,
// restarts it on the same port and data dir, launches headless Chromium, and offers a
// small JSON-RPC client (running inside a browser page) for test setup.

import { spawn } from 'node:child_process';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const STATIC_DIR = path.resolve(process.env.JETWAY_STATIC_DIR || path.join(here, '..', '..', 'static'));
export const JETWAY_BIN = process.env.JETWAY_BIN || path.join(here, '..', '..', 'target', 'release', 'jetway');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/** Poll `fn` until it returns a truthy value (expect-style polling, never a fixed sleep). */
export async function until(fn, { timeout = 15000, interval = 100, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let lastErr;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${message}${lastErr ? `: ${lastErr.message}` : ''}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export class JetwayServer {
  constructor({ holdTtl = 600, env = {} } = {}) {
    this.holdTtl = holdTtl;
    this.env = env;
    this.port = null;
    this.dataDir = null;
    this.proc = null;
    this.log = [];
    this.exitCode = null;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    if (!fs.existsSync(JETWAY_BIN)) throw new Error(`JETWAY_BIN not found: ${JETWAY_BIN} (build with cargo build --release --bin jetway)`);
    if (!this.port) this.port = await freePort();
    if (!this.dataDir) this.dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'jetway-e2e-'));
    const args = ['--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir, '--hold-ttl', String(this.holdTtl), '--static-dir', STATIC_DIR];
    const proc = spawn(JETWAY_BIN, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info', ...this.env },
    });
    this.proc = proc;
    this.exitCode = null;
    const collect = (chunk) => {
      for (const line of chunk.toString().split('\n')) if (line) this.log.push(line);
      if (this.log.length > 400) this.log.splice(0, this.log.length - 400);
    };
    proc.stdout.on('data', collect);
    proc.stderr.on('data', collect);
    proc.exited = new Promise((resolve) => proc.on('exit', (code, signal) => {
      this.exitCode = code;
      resolve({ code, signal });
    }));
    await this.waitHealthy(proc);
    return this;
  }

  async waitHealthy(proc, timeout = 60000) {
    const deadline = Date.now() + timeout;
    for (;;) {
      if (proc.exitCode !== null || proc.signalCode !== null) {
        throw new Error(`jetway exited early (${proc.exitCode ?? proc.signalCode}):\n${this.tail()}`);
      }
      try {
        const r = await fetch(`${this.url}/healthz`, { signal: AbortSignal.timeout(2000) });
        if (r.status === 200) return;
      } catch {
        /* not up yet */
      }
      if (Date.now() > deadline) throw new Error(`jetway did not become healthy on ${this.url}:\n${this.tail()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** SIGTERM and wait for exit; resolves with the exit code. */
  async stop({ timeout = 15000 } = {}) {
    const proc = this.proc;
    if (!proc) return null;
    this.proc = null;
    if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode;
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), timeout);
    const { code, signal } = await proc.exited;
    clearTimeout(timer);
    return signal === 'SIGKILL' ? `killed (did not stop within ${timeout} ms)` : code;
  }

  async restart() {
    const code = await this.stop();
    await this.start();
    return code;
  }

  async dispose() {
    await this.stop();
    if (this.dataDir && !process.env.KEEP_DATA) fs.rmSync(this.dataDir, { recursive: true, force: true });
  }

  tail(n = 40) {
    return this.log.slice(-n).join('\n');
  }
}

/**
 * A TCP relay in front of a server, for network-loss tests: `cut()` drops every
 * connection through it at once (the browser sees the socket close, as on a real loss)
 * and refuses new ones until `restore()`. Chromium's offline emulation is no substitute:
 * it may hold back the close of a socket the page closes itself, for as long as the
 * emulation lasts.
 */
export class NetworkGate {
  constructor(target) {
    this.target = target;
    this.open = true;
    this.sockets = new Set();
    this.server = net.createServer((client) => this._accept(client));
  }

  async start() {
    await new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', resolve);
    });
    return this;
  }

  get url() {
    return `http://127.0.0.1:${this.server.address().port}`;
  }

  _accept(client) {
    if (!this.open) {
      client.destroy();
      return;
    }
    const upstream = net.connect(this.target.port, '127.0.0.1');
    for (const [a, b] of [
      [client, upstream],
      [upstream, client],
    ]) {
      this.sockets.add(a);
      a.pipe(b);
      a.on('error', () => b.destroy());
      a.on('close', () => {
        this.sockets.delete(a);
        b.destroy();
      });
    }
  }

  cut() {
    this.open = false;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  restore() {
    this.open = true;
  }

  async close() {
    this.cut();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

// Console messages that are expected when the server goes away on purpose.
const NETWORK_NOISE = [/WebSocket connection to .* failed/i, /ERR_CONNECTION_REFUSED/i, /net::ERR_/i, /Failed to load resource/i];

/**
 * A fresh browser context + page that records console errors and page errors.
 * `page.consoleErrors(allowNetworkNoise)` returns the unexpected ones.
 */
export async function openPage(browser, { viewport = { width: 1280, height: 900 }, context } = {}) {
  const ctx = context || (await browser.newContext({ viewport }));
  ctx.setDefaultTimeout(20000);
  const page = await ctx.newPage();
  const errors = [];
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text());
  });
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.consoleErrors = (allowNetworkNoise = false) => errors.filter((t) => !(allowNetworkNoise && NETWORK_NOISE.some((re) => re.test(t))));
  return page;
}

let nameSeq = 0;
export function uniqueName(prefix = 'user') {
  nameSeq += 1;
  return `${prefix}_${Date.now().toString(36)}${nameSeq}${Math.floor(Math.random() * 1000)}`.slice(0, 32);
}

/** JSON-RPC client for setup and side effects, running inside a page on the server's origin. */
export class Api {
  static async open(browser, server) {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto(`${server.url}/healthz`);
    const api = new Api(ctx, page);
    return api;
  }

  constructor(ctx, page) {
    this.ctx = ctx;
    this.page = page;
    this.token = null;
  }

  async call(method, params = {}) {
    const msg = await this.page.evaluate(
      async ([method, params, token]) => {
        const open = async () => {
          const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
          window.__api = { ws, id: 0, pending: new Map() };
          ws.onmessage = (e) => {
            const m = JSON.parse(e.data);
            if (m.id !== undefined && window.__api.pending.has(m.id)) {
              window.__api.pending.get(m.id)(m);
              window.__api.pending.delete(m.id);
            }
          };
          ws.onclose = () => {
            for (const fn of window.__api.pending.values()) fn({ error: { message: 'connection closed', data: { reason: 'disconnected' } } });
          };
          await new Promise((res, rej) => {
            ws.onopen = res;
            ws.onerror = () => rej(new Error('websocket failed'));
          });
        };
        const send = (method, params) => {
          const a = window.__api;
          const id = ++a.id;
          return new Promise((res) => {
            a.pending.set(id, res);
            a.ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, params }));
          });
        };
        if (!window.__api || window.__api.ws.readyState > 1) {
          await open();
          if (token) await send('auth.resume', { token });
        }
        return send(method, params);
      },
      [method, params, this.token],
    );
    if (msg.error) {
      const e = new Error(`${method}: ${msg.error.message} (${msg.error.data?.reason})`);
      e.rpc = msg.error;
      throw e;
    }
    if (msg.result && msg.result.token) this.token = msg.result.token;
    return msg.result;
  }

  async register(username = uniqueName('api'), password = 'correct-horse-42') {
    return this.call('auth.register', { username, password });
  }

  async close() {
    await this.ctx.close();
  }
}

let reqSeq = 0;
export const requestId = (p = 't') => `${p}-${Date.now()}-${++reqSeq}-${Math.floor(Math.random() * 1e6)}`;

/** Pick a bookable flight at least `minHours` ahead (so refunds are full). */
export async function pickFlight(api, { minHours = 48, skip = 0 } = {}) {
  const firstDay = Math.ceil(minHours / 24);
  for (let d = firstDay; d < firstDay + 10; d++) {
    const date = new Date(Date.now() + d * 86400000).toISOString().slice(0, 10);
    const { flights } = await api.call('flights.search', { date, limit: 100 });
    const ok = flights.filter((f) => (!f.status || f.status === 'scheduled') && new Date(f.departs_at) - Date.now() > minHours * 3600000);
    if (ok.length) return ok[skip % ok.length];
  }
  throw new Error('no suitable flight in the seeded schedule');
}

/** Register a new user through the app's UI; leaves the page logged in. */
export async function registerViaUi(page, baseUrl, username = uniqueName('ui'), password = 'secret-pass-123') {
  await page.goto(`${baseUrl}/#/login?mode=register&next=${encodeURIComponent('#/trips')}`);
  await page.locator('#auth-username').fill(username);
  await page.locator('#auth-password').fill(password);
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.locator('[data-testid="account-name"]', { hasText: username }).waitFor();
  return { username, password };
}

export const liveConn = (page) => page.locator('#conn[data-state="live"]');
export const seatButton = (page, seat) => page.locator(`button.seat[data-seat="${seat}"]`);
