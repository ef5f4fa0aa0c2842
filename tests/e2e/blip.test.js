// A network blip (the network between browser and server drops while the server stays
// up): the app notices, reconnects with backoff, resubscribes with `since` and applies
// what it missed.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { JetwayServer, NetworkGate, launchBrowser, openPage, Api, pickFlight, requestId, liveConn } from './harness.js';

describe('network blip', () => {
  let server;
  let gate;
  let browser;

  before(async () => {
    server = await new JetwayServer().start();
    gate = await new NetworkGate(server).start();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await gate?.close();
    await server?.dispose();
  });

  it('catches up on changes made while offline', async () => {
    const api = await Api.open(browser, server);
    await api.register();
    const flight = await pickFlight(api, { skip: 6 });
    const { seats } = await api.call('flights.get', { flight_id: flight.flight_id });
    const free = seats.filter((s) => s.status === 'available').map((s) => s.seat);

    const page = await openPage(browser);
    await page.goto(`${gate.url}/#/flight/${encodeURIComponent(flight.flight_id)}`);
    await liveConn(page).waitFor();
    await page.locator(`button.seat[data-seat="${free[0]}"][data-status="available"]`).waitFor();
    // the map is drawn from `flights.get` first; the live feed (whose version a
    // reconnect resumes from) loads with its `seats.subscribe` answer
    await page.waitForFunction((id) => window.jetway.watcher.feeds.get(id)?.loaded === true, flight.flight_id);

    // Track how the seat feed resynchronised: replay (changes) or snapshot (seats).
    await page.evaluate(() => {
      const ws = window.WebSocket;
      window.__subs = [];
      const orig = ws.prototype.send;
      ws.prototype.send = function send(data) {
        try {
          const m = JSON.parse(data);
          if (m.method === 'seats.subscribe') window.__subs.push(m.params);
        } catch {
          /* not json */
        }
        return orig.call(this, data);
      };
    });

    // Every state the connection goes through from here on. The indicator shows
    // `reconnecting` only while the client waits between attempts (a few hundred ms at
    // first), which a poll of the page can miss on a busy machine; the record cannot.
    await page.evaluate(() => {
      window.__states = [];
      window.jetway.client.addEventListener('state', (e) => window.__states.push(e.detail));
    });

    // The network drops: the open socket closes and new connections fail until it is back.
    gate.cut();
    await page.waitForFunction(() => window.__states.some((s) => s.state === 'reconnecting' && s.retryAt));
    await api.call('booking.hold', { flight_id: flight.flight_id, seats: [free[0], free[1]], passengers: [{ name: 'Off Line' }, { name: 'Off Line Two' }], request_id: requestId() });
    gate.restore();
    await liveConn(page).waitFor({ timeout: 40000 });
    await page.locator(`button.seat[data-seat="${free[0]}"][data-status="held"]`).waitFor();
    await page.locator(`button.seat[data-seat="${free[1]}"][data-status="held"]`).waitFor();
    const subs = await page.evaluate(() => window.__subs);
    assert.ok(subs.some((p) => p.flight_id === flight.flight_id && typeof p.since === 'number'), `resubscribed with since: ${JSON.stringify(subs)}`);
    assert.deepEqual(page.consoleErrors(true), []);
    await api.close();
    await page.context().close();
  });

  it('a logout while offline forgets the session at once, and the next connect revokes it', async () => {
    const api = await Api.open(browser, server);
    await api.register();
    const token = api.token;
    const page = await openPage(browser);
    await page.goto(`${gate.url}/`);
    await page.evaluate((t) => localStorage.setItem('jetway.token', t), token);
    await page.goto('about:blank');
    await page.goto(`${gate.url}/#/trips`);
    await liveConn(page).waitFor();
    const logout = page.getByRole('button', { name: 'Log out' });
    await logout.waitFor();
    await page.evaluate(() => {
      window.__states = [];
      window.jetway.client.addEventListener('state', (e) => window.__states.push(e.detail));
    });

    gate.cut();
    await page.waitForFunction(() => window.__states.some((s) => s.state === 'reconnecting'));
    await logout.click();
    // before anything reaches the server: the next user of this browser is not this one
    await page.waitForFunction(() => localStorage.getItem('jetway.token') === null);
    assert.equal(await page.evaluate(() => localStorage.getItem('jetway.revoke')), token);
    // the tab is closed while still offline; someone else opens the app later
    const context = page.context();
    await page.close();
    gate.restore();
    const next = await openPage(browser, { context });
    await next.goto(`${gate.url}/#/trips`);
    await liveConn(next).waitFor();
    await next.waitForFunction(() => localStorage.getItem('jetway.revoke') === null);
    await next.getByRole('link', { name: 'Log in' }).first().waitFor();
    const other = await Api.open(browser, server);
    await assert.rejects(other.call('auth.resume', { token }), (e) => e.rpc?.data?.reason === 'invalid_token');
    await other.close();
    await api.close();
    await context.close();
  });
});
