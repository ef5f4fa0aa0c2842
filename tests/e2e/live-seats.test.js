// Two browser contexts on one flight: A holds a seat, B sees it become unavailable
// without a reload, A releases it, B sees it free again. Plus: a hold that expires is
// reflected live in another tab's "My trips".

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { JetwayServer, launchBrowser, openPage, Api, pickFlight, registerViaUi, seatButton, liveConn } from './harness.js';

describe('live seat map across browser contexts', () => {
  let server;
  let browser;
  let api;

  before(async () => {
    server = await new JetwayServer({ holdTtl: 600 }).start();
    browser = await launchBrowser();
    api = await Api.open(browser, server);
  });

  after(async () => {
    await browser?.close();
    const code = await server?.stop();
    await server?.dispose();
    assert.equal(code, 0, 'jetway exits 0 on SIGTERM');
  });

  it('A holds a seat, B sees it taken live, A releases it, B sees it free', async () => {
    const flight = await pickFlight(api, { skip: 1 });
    const url = `${server.url}/#/flight/${encodeURIComponent(flight.flight_id)}`;

    const pageA = await openPage(browser);
    const pageB = await openPage(browser);
    await registerViaUi(pageA, server.url);
    await pageA.goto(url);
    await pageB.goto(url);
    await liveConn(pageB).waitFor();

    // A picks the first free economy seat.
    const free = pageA.locator('button.seat[data-cabin="economy"][data-status="available"]').first();
    await free.waitFor();
    const seat = await free.getAttribute('data-seat');
    await seatButton(pageB, seat).and(pageB.locator('[data-status="available"]')).waitFor();
    // Mark B's document so we can prove it never reloads.
    await pageB.evaluate(() => {
      window.__noReload = 'still here';
    });

    await free.click();
    await pageA.locator(`#pax-${seat}`).fill('Ada Lovelace');
    await pageA.getByTestId('hold').click();
    await pageA.locator('[data-testid="booking"][data-status="held"]').waitFor();

    // B sees the seat become unavailable, with an accessible label and no colour-only cue.
    const seatB = seatButton(pageB, seat);
    await pageB.locator(`button.seat[data-seat="${seat}"][data-status="held"]`).waitFor();
    assert.match(await seatB.getAttribute('aria-label'), new RegExp(`Seat ${seat}, economy.*held`));
    assert.equal(await seatB.getAttribute('aria-disabled'), 'true');
    assert.equal(await seatB.locator('.mark').evaluate((el) => getComputedStyle(el, '::before').content), '"…"');
    // Activating it (Enter) does not select it; the user is told why.
    await seatB.focus();
    await pageB.keyboard.press('Enter');
    await pageB.getByTestId('hold-error').filter({ hasText: `Seat ${seat} is on hold` }).waitFor();

    // A releases the hold.
    await pageA.getByTestId('cancel').click();
    await pageA.getByRole('dialog').getByRole('button', { name: 'Release seats' }).click();
    await pageA.locator('[data-testid="booking"][data-status="cancelled"]').waitFor();

    // B sees it free again, without a reload.
    await pageB.locator(`button.seat[data-seat="${seat}"][data-status="available"]`).waitFor();
    assert.match(await seatB.getAttribute('aria-label'), /available$/);
    assert.equal(await pageB.evaluate(() => window.__noReload), 'still here');

    assert.deepEqual(pageA.consoleErrors(), []);
    assert.deepEqual(pageB.consoleErrors(), []);
    await pageA.context().close();
    await pageB.context().close();
  });

  it('seat map works from the keyboard with proper labels', async () => {
    const flight = await pickFlight(api, { skip: 2 });
    const page = await openPage(browser);
    await page.goto(`${server.url}/#/flight/${encodeURIComponent(flight.flight_id)}`);
    const first = page.locator('button.seat[tabindex="0"]');
    await first.waitFor();
    assert.equal(await page.locator('button.seat[tabindex="0"]').count(), 1, 'one tab stop for the whole map');
    const firstSeat = await first.getAttribute('data-seat');
    await first.focus();
    await page.keyboard.press('ArrowRight');
    const second = await page.evaluate(() => document.activeElement.dataset.seat);
    assert.notEqual(second, firstSeat);
    await page.keyboard.press('ArrowDown');
    const below = await page.evaluate(() => document.activeElement.dataset.seat);
    assert.notEqual(below, second);
    await page.keyboard.press('Space');
    await page.locator(`button.seat[data-seat="${below}"][aria-pressed="true"]`).waitFor();
    assert.match(await seatButton(page, below).getAttribute('aria-label'), new RegExp(`^Seat ${below}, (economy|business).*selected$`));
    await page.locator(`#pax-${below}`).waitFor();
    // At most 9 seats per hold.
    const more = page.locator('button.seat[data-state="available"]');
    for (let i = 0; i < 8; i++) await more.first().click();
    await page.locator('.pax').nth(8).waitFor();
    await more.first().click();
    await page.getByTestId('hold-error').filter({ hasText: 'at most 9 seats' }).waitFor();
    assert.equal(await page.locator('.pax').count(), 9);
    assert.equal(await page.getByTestId('hold').textContent(), 'Hold 9 seats');

    // Every seat is a labelled button; the legend is present.
    const unlabeled = await page.locator('button.seat:not([aria-label^="Seat "])').count();
    assert.equal(unlabeled, 0);
    await page.getByRole('list', { name: 'Seat map legend' }).waitFor();
    assert.deepEqual(page.consoleErrors(), []);
    await page.context().close();
  });
});

describe('live booking updates', () => {
  let server;
  let browser;

  before(async () => {
    server = await new JetwayServer({ holdTtl: 8 }).start();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.dispose();
  });

  it('a hold that expires is shown as expired in another tab without a reload', async () => {
    const api = await Api.open(browser, server);
    const flight = await pickFlight(api);
    await api.close();

    const tab1 = await openPage(browser);
    const { username } = await registerViaUi(tab1, server.url);
    // Second tab of the same browser profile: the session resumes from localStorage.
    const tab2 = await openPage(browser, { context: tab1.context() });
    await tab2.goto(`${server.url}/#/trips`);
    await tab2.locator('[data-testid="account-name"]', { hasText: username }).waitFor();

    await tab1.goto(`${server.url}/#/flight/${encodeURIComponent(flight.flight_id)}`);
    const free = tab1.locator('button.seat[data-status="available"]').first();
    await free.waitFor();
    const seat = await free.getAttribute('data-seat');
    await free.click();
    await tab1.locator(`#pax-${seat}`).fill('Grace Hopper');
    await tab1.getByTestId('hold').click();
    await tab1.locator('[data-testid="booking"][data-status="held"]').waitFor();
    const locator = await tab1.getByTestId('locator').textContent();

    // Tab 2 learns about the new hold, then about its expiry, live.
    await tab2.locator(`.booking-card[data-locator="${locator}"][data-status="held"]`).waitFor();
    await tab2.locator(`.booking-card[data-locator="${locator}"][data-status="expired"]`).waitFor({ timeout: 30000 });
    await tab1.locator('[data-testid="booking"][data-status="expired"]').waitFor({ timeout: 30000 });
    assert.deepEqual(tab1.consoleErrors(), []);
    assert.deepEqual(tab2.consoleErrors(), []);
    await tab1.context().close();
  });
});
