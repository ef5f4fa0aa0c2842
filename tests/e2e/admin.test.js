// The airline operations dashboard (/admin.html): admin login (and a passenger
// refused), a flight's load factor and revenue following another client's bookings
// live, and cancelling the flight with a reason from a confirm dialog.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { JetwayServer, NetworkGate, launchBrowser, openPage, Api, requestId, until } from './harness.js';

const ADMIN_PASSWORD = 'e2e-admin-pass-42';

function isoAt(days, hh, mm) {
  const d = new Date(Date.now() + days * 86400000);
  d.setUTCHours(hh, mm, 0, 0);
  return d.toISOString().replace('.000Z', 'Z');
}

describe('admin dashboard', () => {
  let server;
  let browser;

  before(async () => {
    server = await new JetwayServer({ env: { JETWAY_ADMIN_PASSWORD: ADMIN_PASSWORD } }).start();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.dispose();
  });

  it('refuses a passenger', async () => {
    const api = await Api.open(browser, server);
    const username = `pax_${Date.now().toString(36)}`;
    await api.register(username, 'passenger-pass-1');
    const page = await openPage(browser);
    await page.goto(`${server.url}/admin.html`);
    await page.locator('#admin-username').fill(username);
    await page.locator('#admin-password').fill('passenger-pass-1');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('#login-error', { hasText: 'not an airline administrator' }).waitFor();
    assert.equal(await page.locator('#dashboard').isVisible(), false);
    // and a wrong password
    await page.locator('#admin-username').fill('admin');
    await page.locator('#admin-password').fill('not the password');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('#login-error', { hasText: 'Wrong username or password' }).waitFor();
    assert.deepEqual(page.consoleErrors(), []);
    await api.close();
    await page.context().close();
  });

  it('shows load factor and revenue live and cancels a flight', async () => {
    // a flight of our own, scheduled through the admin API
    const admin = await Api.open(browser, server);
    await admin.call('auth.login', { username: 'admin', password: ADMIN_PASSWORD });
    const { flight } = await admin.call('admin.flights.create', {
      number: 'JW950',
      from: 'AMS',
      to: 'BCN',
      departs_at: isoAt(5, 10, 0),
      arrives_at: isoAt(5, 12, 20),
      aircraft: 'A320',
      fares: { economy: { amount: 12000, currency: 'EUR' }, business: { amount: 40000, currency: 'EUR' } },
    });
    const total = flight.cabins.reduce((n, c) => n + c.seats_total, 0);

    const page = await openPage(browser);
    await page.goto(`${server.url}/admin.html`);
    await page.locator('#admin-password').fill(ADMIN_PASSWORD);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('#conn[data-state="live"]').waitFor();
    await page.locator('#filter').fill('JW950');
    const row = page.locator(`tr[data-flight="${flight.flight_id}"]`);
    await row.waitFor();
    assert.equal(await page.locator('#rows tr').count(), 1);
    await row.locator('[data-testid="booked"][data-value="0"]').waitFor();
    await row.locator('[data-testid="revenue"][data-value="0"]').waitFor();
    await row.locator('[data-testid="status"][data-value="scheduled"]').waitFor();

    // a passenger holds two seats: held goes up, live (no reload)
    const pax = await Api.open(browser, server);
    await pax.register();
    const { seats } = await pax.call('flights.get', { flight_id: flight.flight_id });
    const free = seats.filter((s) => s.cabin === 'economy' && s.status === 'available').slice(0, 2).map((s) => s.seat);
    const { booking } = await pax.call('booking.hold', {
      flight_id: flight.flight_id,
      seats: free,
      passengers: [{ name: 'Ada Lovelace' }, { name: 'Alan Turing' }],
      request_id: requestId('hold'),
    });
    await row.locator('[data-testid="held"][data-value="2"]').waitFor();
    const lf = Math.round((2 / total) * 1000) / 1000;
    await row.locator(`[data-testid="load"][data-value="${lf}"]`).waitFor();

    // ...and pays: booked 2, revenue the booking's total
    await pax.call('booking.pay', { locator: booking.locator, payment_method: 'pm_card_visa', request_id: requestId('pay') });
    await row.locator('[data-testid="booked"][data-value="2"]').waitFor();
    await row.locator('[data-testid="held"][data-value="0"]').waitFor();
    await row.locator(`[data-testid="revenue"][data-value="${booking.total.amount}"]`).waitFor();
    assert.match(await row.locator('[data-testid="revenue"]').textContent(), /240\.00/);

    // the cancel dialog can be dismissed: nothing happens
    await row.getByRole('button', { name: /Cancel flight JW950/ }).click();
    const dialog = page.locator('dialog.dialog');
    await dialog.waitFor();
    await dialog.getByRole('button', { name: 'Keep flight' }).click();
    await dialog.waitFor({ state: 'detached' });
    assert.equal((await admin.call('flights.get', { flight_id: flight.flight_id })).flight.status, 'scheduled');

    // a reason is required; then the flight is cancelled and the passenger refunded
    await row.getByRole('button', { name: /Cancel flight JW950/ }).click();
    await dialog.getByRole('button', { name: 'Cancel flight' }).click();
    await dialog.locator('.form-error', { hasText: 'Give a reason' }).waitFor();
    await dialog.locator('#cancel-reason').fill('Runway closed');
    await dialog.getByRole('button', { name: 'Cancel flight' }).click();
    await row.locator('[data-testid="status"][data-value="cancelled"]').waitFor();
    await row.locator('[data-testid="revenue"][data-value="0"]').waitFor();
    await row.locator('[data-testid="booked"][data-value="0"]').waitFor();
    await page.locator('.toast', { hasText: '1 booking refunded' }).waitFor();
    assert.equal(await row.getByRole('button', { name: /Cancel flight/ }).count(), 0);

    const b = await until(async () => {
      const r = await pax.call('booking.get', { locator: booking.locator });
      return r.booking.status === 'refunded' && r.booking;
    }, { message: 'the booking refunded' });
    assert.deepEqual(b.refund, booking.total);
    const got = await admin.call('flights.get', { flight_id: flight.flight_id });
    assert.equal(got.flight.status, 'cancelled');
    assert.equal(got.flight.cancel_reason, 'Runway closed');

    // after a reload the session resumes and the flight stays cancelled
    await page.reload();
    await page.locator('#dashboard').waitFor();
    await page.locator('#filter').fill('JW950');
    await page.locator(`tr[data-flight="${flight.flight_id}"] [data-testid="status"][data-value="cancelled"]`).waitFor();
    assert.deepEqual(page.consoleErrors(), []);
    await admin.close();
    await pax.close();
    await page.context().close();
  });
  it('shows the sign-in form when the session ended while offline, and signs out offline at once', async () => {
    const gate = await new NetworkGate(server).start();
    const page = await openPage(browser);
    /** Whether `token` still resumes a session. */
    const resumes = async (token) => {
      const api = await Api.open(browser, server);
      try {
        await api.call('auth.resume', { token });
        return true;
      } catch (e) {
        if (e.rpc?.data?.reason === 'invalid_token') return false;
        throw e;
      } finally {
        await api.close();
      }
    };
    const signIn = async () => {
      await page.locator('#admin-password').fill(ADMIN_PASSWORD);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.locator('#dashboard').waitFor();
      await page.locator('#conn[data-state="live"]').waitFor();
      return page.evaluate(() => sessionStorage.getItem('jetway.admin.token'));
    };
    const offline = async () => {
      gate.cut();
      await page.locator('#conn[data-state="reconnecting"]').waitFor();
    };
    try {
      await page.goto(`${gate.url}/admin.html`);
      const first = await signIn();
      // ended elsewhere while this tab is offline (a sign-out in another tab)
      await offline();
      const other = await Api.open(browser, server);
      await other.call('auth.resume', { token: first });
      await other.call('auth.logout');
      await other.close();
      gate.restore();
      // before, the dashboard stayed up, "Connected", and never changed again
      await page.locator('#login-error', { hasText: 'Your session has ended' }).waitFor({ timeout: 40000 });
      assert.equal(await page.locator('#dashboard').isVisible(), false);

      // a sign-out while offline: the form at once, the token revoked once back online
      const second = await signIn();
      await offline();
      await page.getByRole('button', { name: 'Sign out' }).click();
      await page.locator('#login').waitFor({ timeout: 2000 });
      assert.equal(await page.evaluate(() => sessionStorage.getItem('jetway.admin.token')), null);
      assert.equal(await resumes(second), true, 'not revoked while offline');
      gate.restore();
      await page.locator('#conn[data-state="live"]').waitFor({ timeout: 40000 });
      await until(async () => !(await resumes(second)), { message: 'the token revoked' });
      await until(() => page.evaluate(() => sessionStorage.getItem('jetway.admin.revoke') === null), { message: 'the pending revoke cleared' });
      // the gate's cuts make connection errors: nothing else
      assert.deepEqual(page.consoleErrors(true), []);
    } finally {
      await page.context().close();
      await gate.close();
    }
  });
  it('a cancel whose answer is lost is not reported as failed', async () => {
    const admin = await Api.open(browser, server);
    await admin.call('auth.login', { username: 'admin', password: ADMIN_PASSWORD });
    const { flight } = await admin.call('admin.flights.create', {
      number: 'JW951',
      from: 'AMS',
      to: 'BCN',
      departs_at: isoAt(6, 10, 0),
      arrives_at: isoAt(6, 12, 20),
      aircraft: 'A320',
      fares: { economy: { amount: 12000, currency: 'EUR' }, business: { amount: 40000, currency: 'EUR' } },
    });
    const page = await openPage(browser);
    // the server cancels the flight; its answer is lost with the connection
    await page.routeWebSocket(/\/ws$/, (ws) => {
      const upstream = ws.connectToServer();
      let cancelId = null;
      ws.onMessage((text) => {
        const m = JSON.parse(text);
        if (m.method === 'admin.flights.cancel') cancelId = m.id;
        upstream.send(text);
      });
      upstream.onMessage((text) => {
        if (cancelId !== null && JSON.parse(text).id === cancelId) {
          ws.close();
          return;
        }
        ws.send(text);
      });
    });
    await page.goto(`${server.url}/admin.html`);
    await page.locator('#admin-password').fill(ADMIN_PASSWORD);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('#conn[data-state="live"]').waitFor();
    await page.locator('#filter').fill('JW951');
    const row = page.locator(`tr[data-flight="${flight.flight_id}"]`);
    await row.locator('[data-testid="status"][data-value="scheduled"]').waitFor();
    await row.getByRole('button', { name: /Cancel flight JW951/ }).click();
    const dialog = page.locator('dialog.dialog');
    await dialog.locator('#cancel-reason').fill('Crew shortage');
    await dialog.getByRole('button', { name: 'Cancel flight' }).click();
    await page.locator('.toast', { hasText: 'No answer yet about cancelling JW951' }).waitFor();
    await row.locator('[data-testid="status"][data-value="cancelled"]').waitFor({ timeout: 40000 });
    // before, it said the cancel had failed
    assert.equal(await page.locator('.toast', { hasText: 'Could not cancel' }).count(), 0);
    await admin.close();
    await page.context().close();
  });
});
