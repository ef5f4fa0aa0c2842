// The whole passenger flow: register, search, pick seats, hold, a declined payment, a
// successful payment, confirmation, cancel with refund; then orders and history.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { JetwayServer, launchBrowser, openPage, Api, pickFlight, registerViaUi, seatButton, requestId } from './harness.js';

const euros = (text) => Number(text.replace(/[^0-9.]/g, ''));

describe('booking flow', () => {
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

  it('a stale token is forgotten and the login page is shown', async () => {
    const page = await openPage(browser);
    await page.goto(`${server.url}/`);
    await page.locator('.flight-card').first().waitFor();
    await page.evaluate(() => {
      localStorage.setItem('jetway.token', 'not-a-valid-token');
      location.hash = '#/trips';
    });
    await page.reload();
    await page.locator('#auth-username').waitFor();
    await page.getByText('Your session has ended').waitFor();
    assert.equal(await page.evaluate(() => localStorage.getItem('jetway.token')), null);
    assert.match(page.url(), /#\/login\?next=/);
    // Logging in then returns to My trips.
    await page.getByRole('button', { name: 'Create an account' }).click();
    await page.locator('#auth-username').fill(`stale_${Date.now().toString(36)}`);
    await page.locator('#auth-password').fill('another-pass-1');
    await page.getByRole('button', { name: 'Create account' }).click();
    await page.getByRole('heading', { name: 'My trips' }).waitFor();
    assert.deepEqual(page.consoleErrors(), []);
    await page.context().close();
  });

  it('logging out in one tab ends the session shown in the others', async () => {
    const first = await openPage(browser);
    const { username } = await registerViaUi(first, server.url);
    // a second tab of the same browser, showing the account's trips
    const second = await openPage(browser, { context: first.context() });
    await second.goto(`${server.url}/#/trips`);
    await second.getByRole('heading', { name: 'My trips' }).waitFor();
    await second.locator('[data-testid="account-name"]', { hasText: username }).waitFor();
    await first.getByRole('button', { name: 'Log out' }).click();
    // the other tab starts over without the account: its trips page asks for a login
    await second.locator('#auth-username').waitFor();
    assert.equal(await second.locator('[data-testid="account-name"]').count(), 0);
    // a login page's `next` only ever leads to a page of the app
    await second.goto(`${server.url}/#/login?next=${encodeURIComponent('/elsewhere')}`);
    await second.locator('#auth-username').fill(username);
    await second.locator('#auth-password').fill('secret-pass-123');
    await second.locator('form').getByRole('button', { name: 'Log in' }).click();
    await second.locator('[data-testid="account-name"]', { hasText: username }).waitFor();
    assert.equal(new URL(second.url()).pathname, '/');
    // a link with a malformed escape shows "Page not found", not an endless "Loading"
    await second.goto(`${server.url}/#/booking/%E0`);
    await second.getByRole('heading', { name: 'Page not found' }).waitFor();
    assert.deepEqual(first.consoleErrors(), []);
    assert.deepEqual(second.consoleErrors(), []);
    await first.context().close();
  });

  it('a booking page shows a seat change and a cancel made from elsewhere', async () => {
    const api = await Api.open(browser, server);
    await api.register();
    const flight = await pickFlight(api, { skip: 3 });
    const { seats } = await api.call('flights.get', { flight_id: flight.flight_id });
    const [a, b, c] = seats.filter((s) => s.status === 'available' && s.cabin === 'economy').map((s) => s.seat);
    const held = await api.call('booking.hold', { flight_id: flight.flight_id, seats: [a, b], passengers: [{ name: 'Ada Lovelace' }, { name: 'Charles Babbage' }], request_id: requestId('hold') });
    const { locator } = held.booking;
    await api.call('booking.pay', { locator, payment_method: 'pm_card_visa', request_id: requestId('pay') });
    const page = await openPage(browser);
    await page.goto(`${server.url}/`);
    await page.evaluate((token) => localStorage.setItem('jetway.token', token), api.token);
    await page.goto('about:blank');
    await page.goto(`${server.url}/#/booking/${locator}`);
    await page.locator('[data-testid="booking"][data-status="confirmed"]').waitFor();
    assert.equal(await page.locator('[data-testid="passengers"] .badge-cancelled').count(), 0);
    // another tab (here the API) moves a passenger: same status, same count
    await api.call('booking.change_seat', { locator, from: b, to: c, request_id: requestId('move') });
    await page.locator('[data-testid="passengers"]', { hasText: c }).waitFor();
    // and cancels one: the booking stays confirmed
    await api.call('booking.cancel', { locator, seats: [a], request_id: requestId('cancel') });
    await page.locator('[data-testid="passengers"] .badge-cancelled').waitFor();
    assert.equal(await page.locator('[data-testid="booking"]').getAttribute('data-status'), 'confirmed');
    await api.close();
    await page.context().close();
  });

  it('a released hold does not claim that nothing was charged', async () => {
    // a payment whose outcome was unknown can land after the hold ended (it is then
    // refunded): the page must not say no money moved
    const api = await Api.open(browser, server);
    await api.register();
    const flight = await pickFlight(api, { skip: 4 });
    const held = await api.call('booking.hold', { flight_id: flight.flight_id, count: 1, cabin: 'economy', passengers: [{ name: 'Ada Lovelace' }], request_id: requestId('hold') });
    const { locator } = held.booking;
    await api.call('booking.cancel', { locator, request_id: requestId('cancel') });
    const page = await openPage(browser);
    await page.goto(`${server.url}/`);
    await page.evaluate((token) => localStorage.setItem('jetway.token', token), api.token);
    await page.goto('about:blank');
    await page.goto(`${server.url}/#/booking/${locator}`);
    const notice = page.locator('.notice', { hasText: 'Hold released' });
    await notice.waitFor();
    const text = await notice.textContent();
    assert.doesNotMatch(text, /Nothing was charged/);
    assert.match(text, /refunded automatically/);
    await api.close();
    await page.context().close();
  });

  it('a browser that logged in before is not locked out by wrong passwords sent elsewhere', async () => {
    const page = await openPage(browser);
    const { username, password } = await registerViaUi(page, server.url);
    const kept = await page.evaluate((u) => localStorage.getItem(`jetway.device.${u}`), username);
    assert.match(kept ?? '', /^d1\.[0-9a-f]{64}$/);
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.locator('[data-testid="account-name"]').waitFor({ state: 'detached' });
    // someone elsewhere guesses until the username backs off
    const attacker = await Api.open(browser, server);
    let reason;
    for (let i = 0; i < 10 && reason !== 'rate_limited'; i++) {
      reason = await attacker.call('auth.login', { username, password: 'not the password' }).catch((e) => e.rpc.data.reason);
    }
    assert.equal(reason, 'rate_limited');
    const right = await attacker.call('auth.login', { username, password }).catch((e) => e.rpc.data.reason);
    assert.equal(right, 'rate_limited', 'the right password without the device token waits too');
    // this browser still logs in
    await page.goto(`${server.url}/#/login?next=${encodeURIComponent('#/trips')}`);
    await page.locator('#auth-username').fill(username);
    await page.locator('#auth-password').fill(password);
    await page.locator('form').getByRole('button', { name: 'Log in' }).click();
    await page.locator('[data-testid="account-name"]', { hasText: username }).waitFor();
    assert.deepEqual(page.consoleErrors(), []);
    await attacker.close();
    await page.context().close();
  });

  for (const [label, viewport] of [
    ['desktop', { width: 1280, height: 900 }],
    ['phone', { width: 390, height: 844 }],
  ]) {
    it(`register, search, hold, decline, pay, confirm, cancel with refund (${label})`, async () => {
      const api = await Api.open(browser, server);
      const flight = await pickFlight(api, { minHours: 72, skip: label === 'phone' ? 3 : 0 });
      const { airports } = await api.call('flights.airports', {});
      await api.close();
      assert.ok(airports.some((a) => a.code === flight.from));

      const page = await openPage(browser, { viewport });
      const { username } = await registerViaUi(page, server.url);

      // Search by from, to and date using the form.
      await page.getByRole('link', { name: 'Search' }).first().click();
      await page.locator('#search-from').selectOption(flight.from);
      await page.locator('#search-to').selectOption(flight.to);
      await page.locator('#search-date').fill(flight.departs_at.slice(0, 10));
      await page.getByRole('button', { name: 'Search flights' }).click();
      const card = page.locator(`.flight-card[data-flight-id="${flight.flight_id}"]`);
      await card.waitFor();
      // Fare per cabin and live seats left.
      for (const c of flight.cabins) {
        await card.locator(`.seats-left[data-cabin="${c.cabin}"]`, { hasText: `${c.seats_available} seats left` }).waitFor();
      }
      await card.getByRole('link', { name: /Choose seats/ }).click();

      // Pick two adjacent economy seats: one by mouse, one from the keyboard.
      const first = page.locator('button.seat[data-cabin="economy"][data-status="available"]').first();
      await first.waitFor();
      const seat1 = await first.getAttribute('data-seat');
      await first.click();
      await first.focus();
      await page.keyboard.press('ArrowRight');
      const seat2 = await page.evaluate(() => document.activeElement.dataset.seat);
      assert.ok(seat2 && seat2 !== seat1);
      await page.keyboard.press('Enter');
      await page.locator(`button.seat[data-seat="${seat2}"][aria-pressed="true"]`).waitFor();

      await page.locator(`#pax-${seat1}`).fill('Ada Lovelace');
      await page.locator(`#pax-${seat2}`).fill('Charles Babbage');
      // everything the hold's error line shows until the booking page replaces it:
      // this page's own hold is pushed before its reply, and is not someone else's
      await page.evaluate(() => {
        window.__holdErrors = [];
        const box = document.querySelector('[data-testid="hold-error"]');
        new MutationObserver(() => box.textContent && window.__holdErrors.push(box.textContent)).observe(box, { childList: true, characterData: true, subtree: true });
      });
      await page.getByTestId('hold').click();

      // Hold with a countdown.
      const booking = page.locator('[data-testid="booking"]');
      await page.locator('[data-testid="booking"][data-status="held"]').waitFor();
      assert.deepEqual(await page.evaluate(() => window.__holdErrors), []);
      const locator = (await page.getByTestId('locator').textContent()).trim();
      assert.match(locator, /^[A-Z2-9]{6}$/);
      const countdown = await page.getByTestId('countdown').textContent();
      assert.match(countdown, /^\d+:\d\d(:\d\d)?$/);
      const total = euros(await page.getByTestId('total').textContent());
      assert.equal(total, (flight.cabins.find((c) => c.cabin === 'economy').fare.amount * 2) / 100);

      // A declined payment: a clear message, the hold stays.
      await page.locator('#pay-method').selectOption('pm_card_chargeCustomerFail');
      await page.getByTestId('pay').click();
      await page.getByTestId('pay-error').filter({ hasText: /declined|failed/i }).waitFor();
      assert.match(await page.getByTestId('pay-error').textContent(), /not charged/);
      assert.equal(await booking.getAttribute('data-status'), 'held');

      // A successful payment: confirmation with locator and ticket numbers.
      await page.locator('#pay-method').selectOption('pm_card_visa');
      await page.getByTestId('pay').click();
      await page.getByTestId('confirmation').waitFor();
      assert.equal(await booking.getAttribute('data-status'), 'confirmed');
      assert.equal((await page.getByTestId('locator').textContent()).trim(), locator);
      const tickets = await page.getByTestId('ticket').allTextContents();
      assert.equal(tickets.length, 2);
      for (const t of tickets) assert.match(t.trim(), /^\d{13}$/);

      // The seats now show as booked by me on the flight's map.
      await page.goto(`${server.url}/#/flight/${encodeURIComponent(flight.flight_id)}`);
      await page.locator(`button.seat[data-seat="${seat1}"][data-state="mine"]`).waitFor();
      assert.match(await seatButton(page, seat2).getAttribute('aria-label'), /in your booking/);

      // My trips: cancel with the refund amount.
      await page.getByRole('link', { name: 'My trips' }).click();
      const trip = page.locator(`.booking-card[data-locator="${locator}"]`);
      await page.locator(`.booking-card[data-locator="${locator}"][data-status="confirmed"]`).waitFor();
      await trip.getByTestId('cancel').click();
      const dialog = page.getByRole('dialog');
      await dialog.getByText('Estimated refund').waitFor();
      await dialog.getByRole('button', { name: 'Cancel booking' }).click();
      await page.locator(`.booking-card[data-locator="${locator}"][data-status="refunded"]`).waitFor();
      const refund = euros(await trip.getByTestId('refund').textContent());
      assert.equal(refund, total, 'economy more than 24 h before departure: full refund');

      // The booking page shows the refund and still lists who was on it.
      await trip.getByRole('link', { name: 'View' }).click();
      await page.locator('[data-testid="booking"][data-status="refunded"]').waitFor();
      assert.equal(euros(await page.getByTestId('refund-amount').textContent()), total);
      assert.equal(await page.locator('[data-testid="passengers"] tbody tr').count(), 2);
      await page.getByRole('link', { name: '← My trips' }).click();
      await trip.waitFor();

      // Orders and history.
      await page.getByRole('tab', { name: 'Orders' }).click();
      const order = page.locator(`[data-testid="orders"] tr[data-locator="${locator}"]`);
      await order.waitFor();
      assert.match(await order.textContent(), /refunded/i);
      await page.getByRole('tab', { name: 'History' }).click();
      await page.getByTestId('history').waitFor();
      for (const type of ['held', 'paid', 'refunded']) {
        await page.locator(`[data-testid="history"] li[data-type="${type}"]`).first().waitFor();
      }

      // Reload: the session resumes from the stored token.
      await page.reload();
      await page.locator('[data-testid="account-name"]', { hasText: username }).waitFor();
      await page.getByTestId('history').waitFor();

      if (label === 'phone') {
        const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
        assert.ok(overflow <= 0, `no horizontal scrolling at 390 px (overflow ${overflow}px)`);
      }
      assert.deepEqual(page.consoleErrors(), []);
      await page.context().close();
    });
  }
});
