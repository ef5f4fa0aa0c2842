// The waitlist in the browser: on a sold-out cabin the flight page offers "Join the
// waitlist"; the entry's position is shown and moves live when someone ahead leaves;
// when a seat is freed, the offer appears with its countdown, and Pay confirms it.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { JetwayServer, launchBrowser, openPage, Api, pickFlight, requestId, until } from './harness.js';

const CABIN = 'business';

/** Books every free seat of the cabin (paid), nine at a time; returns the bookings. */
async function sellOut(api, flightId) {
  const { seats } = await api.call('flights.get', { flight_id: flightId });
  const free = seats.filter((s) => s.status === 'available' && s.cabin === CABIN).map((s) => s.seat);
  const bookings = [];
  for (let i = 0; i < free.length; i += 9) {
    const chunk = free.slice(i, i + 9);
    const passengers = chunk.map((_, k) => ({ name: `Seller ${k}` }));
    const { booking } = await api.call('booking.hold', { flight_id: flightId, seats: chunk, passengers, request_id: requestId('fill') });
    await api.call('booking.pay', { locator: booking.locator, payment_method: 'pm_card_visa', request_id: requestId('pay') });
    bookings.push(booking);
  }
  return bookings;
}

describe('waitlist', () => {
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

  it('joins a sold-out cabin, shows the position live, and pays the offer', async () => {
    const seller = await Api.open(browser, server);
    await seller.register();
    const flight = await pickFlight(seller, { skip: 5 });
    const sold = await sellOut(seller, flight.flight_id);

    const ahead = await Api.open(browser, server);
    await ahead.register();
    const { entry: first } = await ahead.call('waitlist.join', {
      flight_id: flight.flight_id, cabin: CABIN, count: 1, passengers: [{ name: 'First Inline' }], request_id: requestId('join'),
    });
    assert.equal(first.position, 1);

    const me = await Api.open(browser, server);
    await me.register();
    const page = await openPage(browser);
    await page.goto(`${server.url}/`);
    await page.evaluate((token) => localStorage.setItem('jetway.token', token), me.token);
    await page.goto('about:blank');
    await page.goto(`${server.url}/#/flight/${encodeURIComponent(flight.flight_id)}`);

    const join = page.locator(`.wl-join[data-cabin="${CABIN}"]`);
    await join.getByPlaceholder('Passenger 1 name').fill('Ada Lovelace');
    // a double click joins once (each click used to send a join of its own)
    await join.getByTestId('waitlist-join').dblclick();
    const position = page.getByTestId('waitlist-position');
    await until(async () => (await position.textContent()) === 'number 2 in line', { message: 'position 2 shown' });
    assert.equal((await me.call('waitlist.list', {})).entries.length, 1, 'one entry');

    // someone ahead leaves: the position moves up without a reload
    await ahead.call('waitlist.leave', { id: first.id });
    await until(async () => (await position.textContent()) === 'number 1 in line', { message: 'position 1 shown live' });

    // a seat is freed: it is held for this user at once, with a countdown
    const freed = sold[0];
    await seller.call('booking.cancel', { locator: freed.locator, seats: [freed.seats[0].seat], request_id: requestId('cancel') });
    const offer = page.getByTestId('waitlist-offer');
    await offer.waitFor();
    await until(async () => /^pay within \d+:\d\d/.test((await offer.locator('.wl-countdown').textContent()) || ''), { message: 'a countdown' });
    assert.equal(await position.count(), 0, 'no longer waiting');

    await offer.getByTestId('waitlist-pay').click();
    await page.waitForURL(/#\/booking\/[A-Z0-9]{6}$/);
    const locator = decodeURIComponent(page.url().split('/').pop());
    await page.getByTestId('pay').click();
    await page.getByTestId('confirmation').waitFor();

    const { booking } = await me.call('booking.get', { locator });
    assert.equal(booking.status, 'confirmed');
    assert.equal(booking.seats[0].seat, freed.seats[0].seat);
    assert.equal(booking.seats[0].passenger, 'Ada Lovelace');
    const { entries } = await me.call('waitlist.list', {});
    assert.deepEqual(entries.map((e) => [e.status, e.locator]), [['accepted', locator]]);

    assert.deepEqual(page.consoleErrors(), []);
    await page.context().close();
    for (const a of [seller, ahead, me]) await a.close();
  });
});
