// The airport display follows changes made by another client: holds, purchases and
// releases, with seats left and load factor per cabin.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { JetwayServer, launchBrowser, openPage, Api, pickFlight, requestId } from './harness.js';

describe('display page', () => {
  let server;
  let browser;

  before(async () => {
    server = await new JetwayServer({ holdTtl: 600 }).start();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.dispose();
  });

  it('follows holds, payments and releases made by another client', async () => {
    const api = await Api.open(browser, server);
    const flight = await pickFlight(api, { skip: 4 });
    const { seats } = await api.call('flights.get', { flight_id: flight.flight_id });
    const free = seats.filter((s) => s.cabin === 'economy' && s.status === 'available').slice(0, 2).map((s) => s.seat);
    const econ = flight.cabins.find((c) => c.cabin === 'economy');

    const page = await openPage(browser, { viewport: { width: 1920, height: 1080 } });
    await page.goto(`${server.url}/display.html?flight=${encodeURIComponent(flight.flight_id)}`);
    await page.locator('#d-conn[data-state="live"]').waitFor();
    await page.locator('.d-number', { hasText: flight.number }).waitFor();
    const left = page.locator('.d-tile[data-cabin="economy"] [data-testid="seats-left"]');
    const lf = page.locator('.d-tile[data-cabin="economy"] [data-testid="load-factor"]');
    await page.locator(`.d-tile[data-cabin="economy"] [data-testid="seats-left"][data-value="${econ.seats_available}"]`).waitFor();
    assert.equal(await page.locator('.d-seat[data-seat]').count(), seats.length);
    // No login on the display.
    assert.equal(await page.locator('input[type=password]').count(), 0);

    // Another client holds two seats.
    await api.register();
    const { booking } = await api.call('booking.hold', {
      flight_id: flight.flight_id,
      seats: free,
      passengers: [{ name: 'Ada Lovelace' }, { name: 'Alan Turing' }],
      request_id: requestId('hold'),
    });
    for (const s of free) await page.locator(`.d-seat[data-seat="${s}"][data-status="held"]`).waitFor();
    await page.locator(`.d-tile[data-cabin="economy"] [data-testid="seats-left"][data-value="${econ.seats_available - 2}"]`).waitFor();

    // ...pays for them: booked, and the load factor goes up.
    await api.call('booking.pay', { locator: booking.locator, payment_method: 'pm_card_visa', request_id: requestId('pay') });
    for (const s of free) await page.locator(`.d-seat[data-seat="${s}"][data-status="booked"]`).waitFor();
    const expectedLf = String(Math.round((2 / econ.seats_total) * 100));
    await page.locator(`.d-tile[data-cabin="economy"] [data-testid="load-factor"][data-value="${expectedLf}"]`).waitFor();
    assert.match(await lf.textContent(), /2 booked/);

    // ...and cancels: free again.
    await api.call('booking.cancel', { locator: booking.locator, request_id: requestId('cancel') });
    for (const s of free) await page.locator(`.d-seat[data-seat="${s}"][data-status="available"]`).waitFor();
    await page.locator(`.d-tile[data-cabin="economy"] [data-testid="seats-left"][data-value="${econ.seats_available}"]`).waitFor();
    assert.equal(await left.getAttribute('data-value'), String(econ.seats_available));

    // Readable from across a room: seats are drawn big on a full-HD screen.
    const box = await page.locator(`.d-seat[data-seat="${free[0]}"]`).boundingBox();
    assert.ok(box.width >= 20, `seat drawn ${box.width}px wide`);
    assert.deepEqual(page.consoleErrors(), []);
    await api.close();
    await page.context().close();
  });
});
