// Online check-in in the browser: a confirmed booking inside the check-in window shows
// "Check in" in My trips; checking in shows a boarding pass card per passenger whose
// QR code, read back from the page's pixels with jsQR, is exactly the server's `bcbp`
// string; the print view shows only the passes.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import jsQR from 'jsqr';
import { JetwayServer, launchBrowser, openPage, Api, requestId } from './harness.js';

const HOUR = 3600000;

/** A scheduled flight well inside the default check-in window (2 to 28 hours out). */
async function openFlight(api) {
  for (const days of [0, 1, 2]) {
    const date = new Date(Date.now() + days * 86400000).toISOString().slice(0, 10);
    const { flights } = await api.call('flights.search', { date, limit: 100 });
    const f = flights.find((x) => {
      const left = new Date(x.departs_at) - Date.now();
      return x.status === 'scheduled' && left > 2 * HOUR && left < 28 * HOUR;
    });
    if (f) return f;
  }
  throw new Error('the demo schedule has no flight in the check-in window');
}

describe('check-in and boarding passes', () => {
  let server;
  let browser;

  before(async () => {
    server = await new JetwayServer().start();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.dispose();
  });

  it('checks in from My trips and shows scannable boarding passes that print alone', async () => {
    const api = await Api.open(browser, server);
    await api.register();
    const flight = await openFlight(api);
    const names = ['Émilie du Châtelet', 'Ada Lovelace'];
    const held = await api.call('booking.hold', {
      flight_id: flight.flight_id,
      count: 2,
      cabin: 'economy',
      passengers: names.map((name) => ({ name })),
      request_id: requestId('hold'),
    });
    const locator = held.booking.locator;
    await api.call('booking.pay', { locator, payment_method: 'pm_card_visa', request_id: requestId('pay') });

    const page = await openPage(browser);
    await page.goto(`${server.url}/`);
    await page.evaluate((token) => localStorage.setItem('jetway.token', token), api.token);
    await page.goto('about:blank');
    await page.goto(`${server.url}/#/trips`);
    const card = page.locator(`.booking-card[data-locator="${locator}"]`);
    await card.getByRole('button', { name: 'Check in' }).click();

    const passes = page.locator('[data-testid="boarding-pass"]');
    await page.waitForURL(new RegExp(`#/booking/${locator}$`));
    await passes.nth(1).waitFor();
    assert.equal(await passes.count(), 2);
    assert.equal(await page.locator('[data-testid="checked-in"]').count(), 2);
    assert.equal(await page.getByRole('button', { name: 'Check in' }).count(), 0);

    const { boarding_passes: expected } = await api.call('booking.boarding_passes', { locator });
    assert.equal(expected.length, 2);
    for (const p of expected) {
      const pass = page.locator(`[data-testid="boarding-pass"][data-seat="${p.seat}"]`);
      assert.equal(await pass.getByTestId('bp-passenger').textContent(), p.passenger);
      const image = await pass.locator('canvas.bp-code').evaluate((c) => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);
        return { width: d.width, height: d.height, data: Array.from(d.data) };
      });
      const decoded = jsQR(Uint8ClampedArray.from(image.data), image.width, image.height);
      assert.ok(decoded, `the QR code of seat ${p.seat} decodes`);
      assert.equal(decoded.data, p.bcbp);
      assert.equal(p.bcbp.length, 60);
    }
    assert.match(expected.find((p) => p.passenger === names[0]).bcbp, /^M1CHATELET\/EMILIE DU  E/);

    // the print view: the passes, and nothing else of the page
    await page.emulateMedia({ media: 'print' });
    const shown = (sel) => page.locator(sel).first().evaluate((e) => getComputedStyle(e).display !== 'none' && e.getBoundingClientRect().height > 0);
    assert.equal(await shown('[data-testid="boarding-pass"]'), true);
    assert.equal(await shown('canvas.bp-code'), true);
    for (const hidden of ['.topbar', '[data-testid="confirmation"]', '[data-testid="passengers"]', '[data-testid="print-passes"]', '.footer']) {
      assert.equal(await shown(hidden), false, `${hidden} is not printed`);
    }
    await page.emulateMedia({ media: 'screen' });
    assert.equal(await shown('[data-testid="print-passes"]'), true);

    assert.deepEqual(page.consoleErrors(), []);
    await page.context().close();
    await api.close();
  });
});
