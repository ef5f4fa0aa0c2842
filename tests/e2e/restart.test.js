// The app and the display recover after the server is restarted: they show the loss,
// reconnect on their own, resume the session, resubscribe and catch up on changes.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { JetwayServer, launchBrowser, openPage, Api, pickFlight, registerViaUi, requestId, liveConn } from './harness.js';

describe('server restart', () => {
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

  it('app and display reconnect, resume the session and miss nothing', async () => {
    const api = await Api.open(browser, server);
    const flight = await pickFlight(api, { skip: 5 });
    const { seats } = await api.call('flights.get', { flight_id: flight.flight_id });
    const free = seats.filter((s) => s.cabin === 'economy' && s.status === 'available').map((s) => s.seat);
    const [seatBefore, seatDuring, seatAfter, seatMine] = [free[0], free[1], free[2], free[5]];
    await api.register();

    const app = await openPage(browser);
    const { username } = await registerViaUi(app, server.url);
    await app.goto(`${server.url}/#/flight/${encodeURIComponent(flight.flight_id)}`);
    await liveConn(app).waitFor();
    const display = await openPage(browser, { viewport: { width: 1600, height: 900 } });
    await display.goto(`${server.url}/display.html?flight=${encodeURIComponent(flight.flight_id)}`);
    await display.locator('#d-conn[data-state="live"]').waitFor();

    // A change before the restart is seen live.
    await api.call('booking.hold', { flight_id: flight.flight_id, seats: [seatBefore], passengers: [{ name: 'Before Restart' }], request_id: requestId() });
    await app.locator(`button.seat[data-seat="${seatBefore}"][data-status="held"]`).waitFor();
    await display.locator(`.d-seat[data-seat="${seatBefore}"][data-status="held"]`).waitFor();

    // Stop the server: both pages show the loss of connection.
    const code = await server.stop();
    assert.equal(code, 0, `jetway exits 0 on SIGTERM:\n${server.tail()}`);
    await app.locator('#conn[data-state="reconnecting"]').waitFor();
    await display.locator('#d-conn[data-state="reconnecting"]').waitFor();

    // Start it again (same port, same data dir) and change a seat straight away, most
    // likely before the pages are back: they must catch up through resubscription.
    await server.start();
    await api.call('booking.hold', { flight_id: flight.flight_id, seats: [seatDuring], passengers: [{ name: 'During Outage' }], request_id: requestId() });

    await liveConn(app).waitFor({ timeout: 40000 });
    await display.locator('#d-conn[data-state="live"]').waitFor({ timeout: 40000 });
    for (const page of [app, display]) {
      const sel = page === app ? 'button.seat' : '.d-seat';
      await page.locator(`${sel}[data-seat="${seatBefore}"][data-status="held"]`).waitFor();
      await page.locator(`${sel}[data-seat="${seatDuring}"][data-status="held"]`).waitFor();
    }

    // Live pushes flow again after the restart.
    await api.call('booking.hold', { flight_id: flight.flight_id, seats: [seatAfter], passengers: [{ name: 'After Restart' }], request_id: requestId() });
    await app.locator(`button.seat[data-seat="${seatAfter}"][data-status="held"]`).waitFor();
    await display.locator(`.d-seat[data-seat="${seatAfter}"][data-status="held"]`).waitFor();

    // The session resumed on the new connection: still logged in, and can hold seats.
    await app.locator('[data-testid="account-name"]', { hasText: username }).waitFor();
    await app.locator(`button.seat[data-seat="${seatMine}"]`).click();
    await app.locator(`#pax-${seatMine}`).fill('Katherine Johnson');
    await app.getByTestId('hold').click();
    await app.locator('[data-testid="booking"][data-status="held"]').waitFor();
    await display.locator(`.d-seat[data-seat="${seatMine}"][data-status="held"]`).waitFor();

    // And after a reload the stored token still works against the restarted server.
    await app.reload();
    await app.locator('[data-testid="account-name"]', { hasText: username }).waitFor();
    await app.locator('[data-testid="booking"][data-status="held"]').waitFor();

    assert.deepEqual(app.consoleErrors(true), []);
    assert.deepEqual(display.consoleErrors(true), []);
    await api.close();
    await app.context().close();
    await display.context().close();
  });
});
