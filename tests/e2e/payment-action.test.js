// 3-D Secure in the browser: with payments through (a fake) Stripe, paying with a card
// that needs the customer's authentication makes the app load Stripe.js (stubbed here:
// the test plays the customer at the fake Stripe, as the real Stripe.js would show the
// bank's page), call handleNextAction with the PaymentIntent's client secret, and send
// booking.pay again, which confirms the booking. Without a publishable key the app says
// plainly that the card cannot be verified here. A gateway failure is not reported as
// "not charged" (its outcome may be unknown), and the next try pays.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { JetwayServer, JETWAY_BIN, launchBrowser, openPage, Api, pickFlight, requestId } from './harness.js';

const FAKE_STRIPE_BIN = process.env.FAKE_STRIPE_BIN || path.join(path.dirname(JETWAY_BIN), 'fake-stripe');
const PUBLISHABLE_KEY = 'pk_test_e2e';
const THREE_D_SECURE = 'pm_card_threeDSecure2Required';

/** Starts the fake Stripe; resolves with its process and base URL. */
function startFakeStripe() {
  const proc = spawn(FAKE_STRIPE_BIN, ['--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    proc.on('error', reject);
    readline.createInterface({ input: proc.stdout }).once('line', (line) => {
      const base = line.split(' ').pop();
      if (!base?.startsWith('http')) reject(new Error(`fake-stripe said: ${line}`));
      else resolve({ proc, base });
    });
  });
}

describe('payments needing 3-D Secure', () => {
  let stripe;
  let server;
  let browser;

  before(async () => {
    stripe = await startFakeStripe();
    server = await new JetwayServer({
      env: {
        JETWAY_PAYMENTS: 'stripe',
        JETWAY_STRIPE_API_BASE: stripe.base,
        STRIPE_SECRET_KEY: 'sk_test_fake',
        JETWAY_STRIPE_PUBLISHABLE_KEY: PUBLISHABLE_KEY,
      },
    }).start();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.dispose();
    stripe?.proc.kill();
  });

  /** A held booking of a new user, and a page of the app logged in as that user. */
  async function heldBooking(skip) {
    const api = await Api.open(browser, server);
    await api.register();
    const flight = await pickFlight(api, { skip });
    const { booking } = await api.call('booking.hold', {
      flight_id: flight.flight_id, count: 1, cabin: 'economy', passengers: [{ name: 'Grace Hopper' }], request_id: requestId('hold'),
    });
    const page = await openPage(browser);
    await page.goto(`${server.url}/`);
    await page.evaluate((token) => localStorage.setItem('jetway.token', token), api.token);
    await page.goto('about:blank');
    return { api, page, locator: booking.locator };
  }

  it('completes the authentication with Stripe.js and pays', async () => {
    const { api, page, locator } = await heldBooking(1);
    const seen = [];
    await page.exposeFunction('playCustomer', async (pk, clientSecret) => {
      seen.push({ pk, clientSecret });
      const id = clientSecret.split('_secret_')[0];
      const r = await fetch(`${stripe.base}/_fake/authenticate/${id}`, { method: 'POST' });
      return r.status;
    });
    const stub = `window.Stripe = (pk) => ({
      handleNextAction: async ({ clientSecret }) => {
        const status = await window.playCustomer(pk, clientSecret);
        return status === 204 ? { paymentIntent: { status: 'succeeded' } } : { error: { message: 'declined' } };
      },
    });`;
    await page.route('https://js.stripe.com/**', (route) => route.fulfill({ contentType: 'application/javascript', body: stub }));
    await page.goto(`${server.url}/#/booking/${locator}`);
    await page.locator(`#pay-method option[value="${THREE_D_SECURE}"]`).waitFor({ state: 'attached' });
    await page.selectOption('#pay-method', THREE_D_SECURE);
    await page.getByTestId('pay').click();
    await page.getByTestId('confirmation').waitFor();

    assert.equal(seen.length, 1, 'Stripe.js asked the customer once');
    assert.equal(seen[0].pk, PUBLISHABLE_KEY);
    assert.match(seen[0].clientSecret, /^pi_.+_secret_/);
    const { booking } = await api.call('booking.get', { locator });
    assert.equal(booking.status, 'confirmed');
    assert.deepEqual(page.consoleErrors(), []);
    await page.context().close();
    await api.close();
  });

  it('does not say "not charged" when the gateway failed, and pays on the next try', async () => {
    const { api, page, locator } = await heldBooking(3);
    await page.goto(`${server.url}/#/booking/${locator}`);
    await page.locator('#pay-method option[value="pm_card_visa"]').waitFor({ state: 'attached' });
    await page.selectOption('#pay-method', 'pm_card_visa');
    const faults = `${stripe.base}/_fake/faults`;
    const put = await fetch(faults, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ step: 'confirm', fault: 'fail' }) });
    assert.ok(put.ok, `fault set: ${put.status}`);
    try {
      await page.getByTestId('pay').click();
      const error = page.getByTestId('pay-error');
      await error.filter({ hasText: 'Payment did not complete.' }).waitFor();
      assert.doesNotMatch(await error.textContent(), /not charged/);
    } finally {
      await fetch(faults, { method: 'DELETE' });
    }
    await page.getByTestId('pay').click();
    await page.getByTestId('confirmation').waitFor();
    const { booking } = await api.call('booking.get', { locator });
    assert.equal(booking.status, 'confirmed');
    await page.context().close();
    await api.close();
  });

  it('says plainly that the card cannot be verified without a publishable key', async () => {
    const { api, page, locator } = await heldBooking(2);
    await page.route('**/client.json', (route) => route.fulfill({ json: { payments: 'stripe', stripe_publishable_key: null } }));
    let stripeJs = 0;
    await page.route('https://js.stripe.com/**', (route) => {
      stripeJs += 1;
      return route.abort();
    });
    await page.goto(`${server.url}/#/booking/${locator}`);
    await page.locator(`#pay-method option[value="${THREE_D_SECURE}"]`).waitFor({ state: 'attached' });
    await page.selectOption('#pay-method', THREE_D_SECURE);
    await page.getByTestId('pay').click();
    const error = page.getByTestId('pay-error');
    await error.filter({ hasText: '3-D Secure' }).waitFor();
    assert.match(await error.textContent(), /cannot be completed here.*Nothing was charged/);
    assert.equal(stripeJs, 0, 'Stripe.js is not loaded');
    const { booking } = await api.call('booking.get', { locator });
    assert.equal(booking.status, 'held');
    await page.context().close();
    await api.close();
  });
});
