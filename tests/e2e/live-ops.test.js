// Live operations in the browser: the seat-map display and the departures board show
// an airline delay and a cancellation within 2 s of the admin's call, a passenger with
// a booking on the flight sees the new time in the app at once (local time, with the
// zone), the flight page's viewer count follows a second browser opening and
// closing the flight, and a board or flight page that lost its connection shows,
// once back, a delay made while it was away.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { JetwayServer, NetworkGate, launchBrowser, openPage, Api, registerViaUi, requestId, liveConn, until } from './harness.js';

const ADMIN_PASSWORD = 'e2e-admin-pass-42';
const WITHIN = 2000;

const iso = (ms) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
/** What is left of the 2 s since `t0`. */
const left = (t0) => Math.max(1, WITHIN - (Date.now() - t0));

async function createFlight(admin, number, from, minutes) {
  const dep = Date.now() + minutes * 60000;
  const { flight } = await admin.call('admin.flights.create', {
    number,
    from,
    to: 'VIE',
    departs_at: iso(dep),
    arrives_at: iso(dep + 100 * 60000),
    aircraft: 'E190',
    fares: { economy: { amount: 9900, currency: 'EUR' }, business: { amount: 39900, currency: 'EUR' } },
  });
  return flight;
}

describe('live operations', () => {
  let server;
  let browser;
  let admin;

  before(async () => {
    server = await new JetwayServer({ env: { JETWAY_ADMIN_PASSWORD: ADMIN_PASSWORD } }).start();
    browser = await launchBrowser();
    admin = await Api.open(browser, server);
    await admin.call('auth.login', { username: 'admin', password: ADMIN_PASSWORD });
  });

  after(async () => {
    await admin?.close();
    await browser?.close();
    await server?.dispose();
  });

  it('display and board show a delay and a cancel within 2 s', async () => {
    const flight = await createFlight(admin, 'JW9101', 'DUB', 180);
    const display = await openPage(browser, { viewport: { width: 1920, height: 1080 } });
    await display.goto(`${server.url}/display.html?flight=${encodeURIComponent(flight.flight_id)}`);
    await display.locator('#d-conn[data-state="live"]').waitFor();
    await display.locator('[data-testid="flight-status"][data-value="scheduled"]').waitFor();
    assert.match(await display.locator('[data-testid="when"]').textContent(), /GMT|IST/);
    // the display counts itself among the flight's viewers, and keeps Dublin's clock
    await display.locator('[data-testid="viewers"][data-value="1"]').waitFor();
    assert.match(await display.locator('#d-clock').textContent(), /^\d\d:\d\d (GMT|IST)$/);

    const board = await openPage(browser, { viewport: { width: 1920, height: 1080 } });
    await board.goto(`${server.url}/board.html?airport=DUB`);
    await board.locator('#d-conn[data-state="live"]').waitFor();
    const row = (status) => board.locator(`tr[data-flight="${flight.flight_id}"][data-status="${status}"]`);
    await row('scheduled').waitFor();
    assert.match(await board.locator('#b-zone').textContent(), /Europe\/Dublin/);

    // a delay of 45 minutes
    const est = iso(Date.parse(flight.departs_at) + 45 * 60000);
    const delayedAt = Date.now();
    await admin.call('admin.flights.update', { flight_id: flight.flight_id, estimated_departs_at: est, reason: 'late inbound aircraft' });
    await display.locator('[data-testid="flight-status"][data-value="delayed"]').waitFor({ timeout: left(delayedAt) });
    await row('delayed').waitFor({ timeout: left(delayedAt) });
    assert.match(await row('delayed').locator('[data-testid="remark"]').textContent(), /^DELAYED \d\d:\d\d$/);
    assert.match(await display.locator('[data-testid="when"]').textContent(), /estimated/);

    // the airline cancels
    const cancelledAt = Date.now();
    await admin.call('admin.flights.cancel', { flight_id: flight.flight_id, reason: 'technical fault' });
    await display.locator('[data-testid="flight-status"][data-value="cancelled"]').waitFor({ timeout: left(cancelledAt) });
    await row('cancelled').waitFor({ timeout: left(cancelledAt) });
    assert.equal(await row('cancelled').locator('[data-testid="remark"]').textContent(), 'CANCELLED');

    assert.deepEqual(display.consoleErrors(), []);
    assert.deepEqual(board.consoleErrors(), []);
    await display.context().close();
    await board.context().close();
  });

  it('a display and a board whose first read fails try again', async () => {
    const flight = await createFlight(admin, 'JW9107', 'MAD', 180);
    /** A page whose first call of `method` is answered `internal` (not by the server). */
    const failingOnce = async (method) => {
      const page = await openPage(browser, { viewport: { width: 1920, height: 1080 } });
      let failed = 0;
      await page.routeWebSocket(/\/ws$/, (ws) => {
        const upstream = ws.connectToServer();
        ws.onMessage((text) => {
          const m = JSON.parse(text);
          if (m.method === method && failed === 0) {
            failed += 1;
            ws.send(JSON.stringify({ jsonrpc: '2.0', id: m.id, error: { code: -32603, message: 'internal error', data: { reason: 'internal' } } }));
            return;
          }
          upstream.send(text);
        });
      });
      return { page, failed: () => failed };
    };
    // before, the display showed "Cannot show flight" for good, and the board an empty
    // list that no push would ever fill
    const display = await failingOnce('flights.get');
    await display.page.goto(`${server.url}/display.html?flight=${encodeURIComponent(flight.flight_id)}`);
    await display.page.locator('.d-number', { hasText: 'JW9107' }).waitFor({ timeout: 15000 });
    assert.equal(display.failed(), 1);
    const board = await failingOnce('flights.watch');
    await board.page.goto(`${server.url}/board.html?airport=MAD`);
    await board.page.locator(`tr[data-flight="${flight.flight_id}"][data-status="scheduled"]`).waitFor({ timeout: 15000 });
    assert.equal(board.failed(), 1);
    // and the board's watch is live: a delay is shown
    await admin.call('admin.flights.update', { flight_id: flight.flight_id, estimated_departs_at: iso(Date.parse(flight.departs_at) + 30 * 60000), reason: 'late crew' });
    await board.page.locator(`tr[data-flight="${flight.flight_id}"][data-status="delayed"]`).waitFor();
    // a display whose seat-map subscribe fails subscribes again, and goes live (before,
    // it showed the map of its first read for good)
    const seatless = await failingOnce('seats.subscribe');
    await seatless.page.goto(`${server.url}/display.html?flight=${encodeURIComponent(flight.flight_id)}`);
    await seatless.page.locator('.d-number', { hasText: 'JW9107' }).waitFor();
    const passenger = await Api.open(browser, server);
    await passenger.register();
    const { seats } = await passenger.call('flights.get', { flight_id: flight.flight_id });
    const seat = seats.find((s) => s.status === 'available').seat;
    await until(() => seatless.failed() === 1, { message: 'the first subscribe refused' });
    await passenger.call('booking.hold', { flight_id: flight.flight_id, seats: [seat], passengers: [{ name: 'Ada Lovelace' }], request_id: requestId() });
    await seatless.page.locator(`.d-seat[data-seat="${seat}"][data-status="held"]`).waitFor({ timeout: 20000 });
    assert.equal(seatless.failed(), 1);
    await seatless.page.context().close();
    await passenger.ctx.close();
    await display.page.context().close();
    await board.page.context().close();
  });

  it('a booked passenger sees a delay in the app within 2 s, in local time', async () => {
    const flight = await createFlight(admin, 'JW9104', 'DUB', 8 * 60);
    const page = await openPage(browser);
    await registerViaUi(page, server.url);
    // a hold made for the same user on a connection of its own
    const passenger = await Api.open(browser, server);
    passenger.token = await page.evaluate(() => localStorage.getItem('jetway.token'));
    const { seats } = await passenger.call('flights.get', { flight_id: flight.flight_id });
    const seat = seats.find((s) => s.status === 'available' && s.cabin === 'economy').seat;
    const { booking } = await passenger.call('booking.hold', {
      flight_id: flight.flight_id, seats: [seat], passengers: [{ name: 'Ada Lovelace' }], request_id: requestId('h'),
    });
    const zoned = (hhmm) => new RegExp(`${hhmm} (GMT|IST)`);
    const hhmm = (t) => t.slice(11, 16); // Dublin in winter is on UTC

    await page.goto(`${server.url}/#/booking/${booking.locator}`);
    await liveConn(page).waitFor();
    const head = page.locator('.bh-flight');
    await head.filter({ hasText: zoned(`Departs ${hhmm(flight.departs_at)}`) }).waitFor();
    assert.doesNotMatch(await head.textContent(), /estimated|UTC/);

    const est = iso(Date.parse(flight.departs_at) + 50 * 60000);
    const delayedAt = Date.now();
    await admin.call('admin.flights.update', { flight_id: flight.flight_id, estimated_departs_at: est, reason: 'late crew' });
    await head.filter({ hasText: zoned(`estimated ${hhmm(est)}`) }).waitFor({ timeout: left(delayedAt) });
    await page.locator('.toast', { hasText: /is delayed/ }).first().waitFor();

    // the trips list shows the same local times
    await page.goto(`${server.url}/#/trips`);
    const card = page.locator(`li[data-locator="${booking.locator}"]`);
    await card.filter({ hasText: zoned(`estimated ${hhmm(est)}`) }).waitFor();
    assert.doesNotMatch(await card.locator('.bc-main p.muted').textContent(), /UTC/);
    assert.deepEqual(page.consoleErrors(), []);
    await passenger.close();
    await page.context().close();
  });

  it("the flight page's viewer count follows a second browser", async () => {
    const flight = await createFlight(admin, 'JW9102', 'DUB', 24 * 60);
    const url = `${server.url}/#/flight/${encodeURIComponent(flight.flight_id)}`;
    const first = await openPage(browser);
    await first.goto(url);
    const viewers = (n) => first.locator(`[data-testid="viewers"][data-value="${n}"]`);
    await viewers(1).waitFor();
    assert.equal(await viewers(1).textContent(), '1 person is viewing this flight');

    const second = await openPage(browser);
    await second.goto(url);
    await second.locator('[data-testid="viewers"][data-value="2"]').waitFor();
    await viewers(2).waitFor({ timeout: WITHIN + 1000 });
    assert.equal(await viewers(2).textContent(), '2 people are viewing this flight');

    await second.context().close();
    await viewers(1).waitFor({ timeout: WITHIN + 1000 });
    assert.deepEqual(first.consoleErrors(), []);
    await first.context().close();
  });

  /** A flight's page, live through a gate that can cut it off; its client's states recorded. */
  async function flightPageBehindGate(flight) {
    const gate = await new NetworkGate(server).start();
    const page = await openPage(browser);
    const close = async () => {
      await page.context().close();
      await gate.close();
    };
    try {
      await page.goto(`${gate.url}/#/flight/${encodeURIComponent(flight.flight_id)}`);
      await liveConn(page).waitFor();
      await page.getByTestId('hold').waitFor();
      await page.evaluate(() => {
        window.__states = [];
        window.jetway.client.addEventListener('state', (e) => window.__states.push(e.detail));
      });
    } catch (e) {
      await close();
      throw e;
    }
    return { page, gate, close };
  }
  const delay = (flight) =>
    admin.call('admin.flights.update', {
      flight_id: flight.flight_id,
      estimated_departs_at: iso(Date.parse(flight.departs_at) + 30 * 60000),
      reason: 'late crew',
    });

  it('a flight page back online shows a delay made while it was offline', async () => {
    const flight = await createFlight(admin, 'JW9108', 'DUB', 200);
    const { page, gate, close } = await flightPageBehindGate(flight);
    try {
      gate.cut();
      await page.waitForFunction(() => window.__states.some((s) => s.state === 'reconnecting'));
      await delay(flight);
      gate.restore();
      await liveConn(page).waitFor({ timeout: 40000 });
      // no push told of it (it was made while the page was away): read again once live
      await page.locator('[data-testid="flight-status"][data-value="delayed"]').waitFor();
    } finally {
      await close();
    }
  });

  it("a flight page's read after a reconnect does not undo a push that came while it was out", async () => {
    const flight = await createFlight(admin, 'JW9106', 'AMS', 200);
    const { page, gate, close } = await flightPageBehindGate(flight);
    try {
      // the page's flights.get is answered (as read: scheduled) only once let go
      await page.evaluate(() => {
        const c = window.jetway.client;
        const call = c.call.bind(c);
        let letGo;
        window.__letGo = new Promise((r) => (letGo = r));
        window.__release = () => letGo();
        c.call = async (method, params, ...rest) => {
          const r = await call(method, params, ...rest);
          if (method === 'flights.get') {
            window.__read = r.flight.status;
            await window.__letGo;
            window.__answered = true;
          }
          return r;
        };
      });
      gate.cut();
      await page.waitForFunction(() => window.__states.some((s) => s.state === 'reconnecting'));
      gate.restore();
      await liveConn(page).waitFor({ timeout: 40000 });
      await page.waitForFunction(() => window.__read !== undefined);
      assert.equal(await page.evaluate(() => window.__read), 'scheduled');
      await delay(flight);
      await page.locator('[data-testid="flight-status"][data-value="delayed"]').waitFor();
      await page.evaluate(() => window.__release());
      await page.waitForFunction(() => window.__answered === true);
      // the read's continuation ran in the microtasks of the task that set __answered
      assert.equal(await page.locator('[data-testid="flight-status"][data-value="delayed"]').count(), 1);
    } finally {
      await close();
    }
  });

  it('the dashboard delays a flight and starts boarding', async () => {
    const flight = await createFlight(admin, 'JW9103', 'FRA', 6 * 60);
    const page = await openPage(browser);
    await page.goto(`${server.url}/admin.html`);
    await page.locator('#admin-password').fill(ADMIN_PASSWORD);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('#conn[data-state="live"]').waitFor();
    await page.locator('#filter').fill('JW9103');
    const row = page.locator(`tr[data-flight="${flight.flight_id}"]`);
    await row.locator('[data-testid="status"][data-value="scheduled"]').waitFor();

    // a later estimate: delayed, the estimate shown next to the schedule
    await row.getByRole('button', { name: /Update status or times of flight JW9103/ }).click();
    const dialog = page.locator('dialog[open]');
    // times are Frankfurt's (not UTC), in the dialog as in the table
    // (the input has whole minutes)
    const est = Math.floor(Date.parse(flight.departs_at) / 60000) * 60000 + 30 * 60000;
    const local = (ms) => new Date(ms).toLocaleString('sv-SE', { timeZone: 'Europe/Berlin' }).replace(' ', 'T').slice(0, 16);
    assert.equal(await dialog.locator('#upd-dep').inputValue(), local(Date.parse(flight.departs_at)));
    await dialog.locator('#upd-dep').fill(local(est));
    await dialog.locator('#upd-reason').fill('late crew');
    await dialog.getByRole('button', { name: 'Update flight' }).click();
    await row.locator('[data-testid="status"][data-value="delayed"]').waitFor();
    await row.locator('[data-testid="estimate"]', { hasText: new RegExp(`^est\\. ${local(est).slice(11, 16)} (CET|CEST)$`) }).waitFor();
    assert.match(await row.locator('time').textContent(), new RegExp(`${local(Date.parse(flight.departs_at)).slice(11, 16)} (CET|CEST)$`));
    assert.doesNotMatch(await row.textContent(), /UTC/);

    // then boarding
    await row.getByRole('button', { name: /Update status or times of flight JW9103/ }).click();
    await dialog.locator('#upd-status').selectOption('boarding');
    await dialog.getByRole('button', { name: 'Update flight' }).click();
    await row.locator('[data-testid="status"][data-value="boarding"]').waitFor();
    const got = await admin.call('flights.get', { flight_id: flight.flight_id });
    assert.equal(got.flight.status, 'boarding');
    assert.equal(got.flight.estimated_departs_at, iso(est));
    assert.deepEqual(page.consoleErrors(), []);
    await page.context().close();
  });

  // Last: it restarts the server (same port, same data dir).
  it('the board reconnects after a restart and shows a delay made while it was away', async () => {
    const flight = await createFlight(admin, 'JW9105', 'AMS', 150);
    const board = await openPage(browser, { viewport: { width: 1920, height: 1080 } });
    await board.goto(`${server.url}/board.html?airport=AMS`);
    await board.locator('#d-conn[data-state="live"]').waitFor();
    const row = (status) => board.locator(`tr[data-flight="${flight.flight_id}"][data-status="${status}"]`);
    await row('scheduled').waitFor();

    const code = await server.stop();
    assert.equal(code, 0, `jetway exits 0 on SIGTERM:\n${server.tail()}`);
    await board.locator('#d-conn[data-state="reconnecting"]').waitFor();
    // offline before the server is back, so that the board cannot come back before the
    // delay is made (offline first, Chromium may hold back the close of the old
    // connection, and the board never sees it drop)
    await board.context().setOffline(true);
    await server.start();
    const est = iso(Date.parse(flight.departs_at) + 40 * 60000);
    await admin.call('admin.flights.update', { flight_id: flight.flight_id, estimated_departs_at: est, reason: 'late inbound aircraft' });
    assert.equal(await row('delayed').count(), 0);

    await board.context().setOffline(false);
    await board.locator('#d-conn[data-state="live"]').waitFor({ timeout: 40000 });
    const liveAt = Date.now();
    await row('delayed').waitFor({ timeout: left(liveAt) });
    assert.match(await row('delayed').locator('[data-testid="remark"]').textContent(), /^DELAYED \d\d:\d\d$/);
    assert.equal(await board.locator(`tr[data-flight="${flight.flight_id}"]`).count(), 1);

    // and live pushes flow again on the new connection
    const boardingAt = Date.now();
    await admin.call('admin.flights.update', { flight_id: flight.flight_id, status: 'boarding' });
    await row('boarding').waitFor({ timeout: left(boardingAt) });
    assert.deepEqual(board.consoleErrors(true), []);
    await board.context().close();
  });
});
