import { h, clear, toast, confirmDialog, statusBadge } from '../ui.js';
import { newRequestId, ActionId } from '../jetway.js';
import { paymentsConfig, stripeActionHandler } from '../stripe.js';
import { formatMoney, formatTime, formatCountdown, formatDateTime, formatLongDate, plural, departureText } from '../format.js';
import { friendlyError } from './flight.js';
import { canCheckIn, checkInButton, hasPasses, boardingPassesSection } from './checkin.js';

export const PAYMENT_METHODS = [
  { id: 'pm_card_visa', label: 'Visa ending 4242 (test card: approved)' },
  { id: 'pm_card_visa_chargeDeclined', label: 'Visa ending 0002 (test card: declined)' },
  { id: 'pm_card_chargeCustomerFail', label: 'Card ending 0341 (test card: customer charge fails)' },
];
const THREE_D_SECURE_CARD = { id: 'pm_card_threeDSecure2Required', label: 'Card ending 3155 (test card: 3-D Secure)' };

/**
 * Estimated refund by the fare rule (the server's reply is authoritative): economy is
 * refunded in full until 24 h before departure and half after that; business in full
 * until departure. Computed per seat when the booking carries per-seat fares.
 */
export function estimateRefund(booking, cabinsBySeat = new Map()) {
  const departs = booking.flight?.departs_at ? new Date(booking.flight.departs_at) : null;
  if (!departs || !booking.seats?.length) return null;
  const hoursLeft = (departs - Date.now()) / 3600000;
  const currency = booking.total?.currency || 'EUR';
  const total = booking.total?.amount ?? 0;
  const evenShare = Math.floor(total / booking.seats.length);
  let amount = 0;
  let halved = false;
  let fullBusiness = false;
  for (const s of booking.seats) {
    const cabin = s.cabin || cabinsBySeat.get(s.seat) || 'economy';
    const fare = s.fare?.amount ?? evenShare;
    if (hoursLeft <= 0) continue;
    if (cabin === 'business') {
      amount += fare;
      fullBusiness = true;
    } else if (hoursLeft >= 24) amount += fare;
    else {
      amount += Math.floor(fare / 2);
      halved = true;
    }
  }
  let rule;
  if (hoursLeft <= 0) rule = 'The flight has departed.';
  else if (halved && fullBusiness) rule = 'Business fares are refunded in full until departure; economy fares at 50% within 24 hours of departure.';
  else if (halved) rule = 'Economy fares cancelled within 24 hours of departure are refunded at 50%.';
  else if (fullBusiness && hoursLeft < 24) rule = 'Business fares are fully refundable until departure.';
  else rule = 'Full refund: more than 24 hours before departure.';
  return { money: { amount, currency }, rule };
}

async function seatCabins(ctx, flightId) {
  try {
    const r = await ctx.client.call('flights.get', { flight_id: flightId });
    return { cabins: new Map((r.seats || []).map((s) => [s.seat, s.cabin])), flight: r.flight };
  } catch {
    return { cabins: new Map(), flight: null };
  }
}

export async function cancelBooking(ctx, booking) {
  const held = booking.status === 'held';
  let body;
  if (held) {
    body = h('p', {}, `The ${plural(booking.seats.length, 'seat')} on hold will be released straight away. Nothing has been charged.`);
  } else {
    const { cabins, flight } = await seatCabins(ctx, booking.flight_id);
    const est = estimateRefund(booking.flight ? booking : { ...booking, flight }, cabins);
    body = h(
      'div',
      {},
      h('p', {}, `Cancel booking ${booking.locator} for ${plural(booking.seats.length, 'passenger')}?`),
      est ? h('p', {}, 'Estimated refund: ', h('strong', {}, formatMoney(est.money)), h('br'), h('span', { class: 'muted small' }, est.rule)) : null,
    );
  }
  const ok = await confirmDialog({
    title: held ? 'Release these seats?' : 'Cancel this booking?',
    body,
    confirm: held ? 'Release seats' : 'Cancel booking',
    cancel: held ? 'Keep hold' : 'Keep booking',
    danger: true,
  });
  if (!ok) return null;
  try {
    const r = await ctx.client.call('booking.cancel', { locator: booking.locator, request_id: newRequestId('cancel') }, { retry: true });
    const b = r.booking;
    if (b.status === 'refunded' || b.refund) toast(`Booking ${b.locator} cancelled. Refund: ${formatMoney(b.refund || { amount: 0, currency: 'EUR' })}.`, 'success');
    else toast(`Seats of ${b.locator} released.`, 'success');
    ctx.bus.dispatchEvent(new CustomEvent('booking', { detail: b }));
    return b;
  } catch (e) {
    toast(friendlyError(e), 'error');
    return null;
  }
}

export async function bookingView(ctx, el, { locator, signal }) {
  const user = await ctx.requireUser();
  if (!user || signal.aborted) return;
  el.dataset.requiresLogin = '';
  el.setAttribute('data-requires-login', '');
  let booking;
  try {
    booking = (await ctx.client.call('booking.get', { locator })).booking;
  } catch (e) {
    if (e.reason === 'not_found') {
      el.append(h('section', { class: 'card empty' }, h('h1', {}, 'Booking not found'), h('p', {}, `We could not find booking ${locator} in your account.`), h('p', {}, h('a', { href: '#/trips' }, 'Go to My trips'))));
      return;
    }
    throw e;
  }
  await ctx.loadAirports();
  const seatInfo = await seatCabins(ctx, booking.flight_id);
  if (signal.aborted) return;
  if (!booking.flight && seatInfo.flight) booking.flight = seatInfo.flight;

  let countdownTimer = null;
  let lastDecline = null; // keeps the decline message across re-renders
  let paying = false;
  // a payment whose answer was lost (a timeout, the connection, `internal`) is asked
  // again under its own request_id: the server then answers how it ended
  const payId = new ActionId('pay');
  signal.addEventListener('abort', () => clearInterval(countdownTimer));

  function render() {
    clearInterval(countdownTimer);
    clear(el);
    const b = booking;
    const f = b.flight || {};
    el.append(
      h('p', { class: 'crumbs' }, h('a', { href: '#/trips' }, '← My trips')),
      h(
        'section',
        { class: `card booking-head status-${b.status}`, 'data-testid': 'booking', 'data-status': b.status, 'data-locator': b.locator },
        h(
          'div',
          { class: 'bh-top' },
          h('div', {}, h('p', { class: 'eyebrow' }, 'Booking reference'), h('h1', { class: 'locator', 'data-testid': 'locator' }, b.locator)),
          statusBadge(b.status),
        ),
        f.number
          ? h(
            'p',
            { class: 'bh-flight' },
            h('strong', {}, `${ctx.cityOf(f.from)} (${f.from}) → ${ctx.cityOf(f.to)} (${f.to})`),
            h('br'),
            `${f.number} · ${formatLongDate(f.departs_at, f.from_tz)} · ${departureText(f)}`,
          )
          : null,
      ),
    );

    const mainCol = h('div', { class: 'booking-main' });
    const sideCol = h('div', { class: 'booking-side' });
    el.append(h('div', { class: 'booking-layout' }, mainCol, sideCol));

    // Status panel
    if (b.status === 'held') {
      const cd = h('span', { class: 'countdown-time', 'data-testid': 'countdown' }, '');
      const panel = h(
        'section',
        { class: 'card notice notice-hold', 'aria-labelledby': 'hold-title' },
        h('h2', { id: 'hold-title' }, 'Your seats are on hold'),
        h('p', { class: 'countdown', role: 'timer', 'aria-live': 'off' }, 'Time left to pay: ', cd),
        h('p', { class: 'muted small' }, `The hold ends at ${formatTime(b.hold_expires_at)} UTC; after that the seats are released.`),
      );
      const announce = h('p', { class: 'visually-hidden', 'aria-live': 'polite' });
      panel.append(announce);
      let warned = false;
      const tick = () => {
        const ms = new Date(b.hold_expires_at) - Date.now();
        cd.textContent = formatCountdown(ms);
        panel.classList.toggle('urgent', ms < 60000);
        if (ms < 60000 && !warned && ms > 0) {
          warned = true;
          announce.textContent = 'Less than one minute left to pay.';
        }
        if (ms <= 0) {
          clearInterval(countdownTimer);
          cd.textContent = '0:00';
          // The server confirms with booking.updated (expired); ask in case we missed it.
          setTimeout(() => refresh(), 1500);
        }
      };
      if (b.hold_expires_at) {
        tick();
        countdownTimer = setInterval(tick, 1000);
      }
      mainCol.append(panel);
      mainCol.append(payForm());
    } else if (b.status === 'confirmed') {
      mainCol.append(
        h(
          'section',
          { class: 'card notice notice-ok', 'data-testid': 'confirmation', 'aria-labelledby': 'conf-title' },
          h('h2', { id: 'conf-title', tabindex: '-1' }, h('span', { class: 'ok-mark', 'aria-hidden': 'true' }, '✓'), ' You’re booked!'),
          h('p', {}, 'Your booking reference is ', h('strong', { class: 'locator-inline' }, b.locator), '. Your e-ticket numbers are below. Have a good flight!'),
          canCheckIn(b)
            ? h(
              'p',
              {},
              checkInButton(ctx, b, (nb) => {
                if (signal.aborted) return;
                booking = { ...nb, flight: nb.flight || booking.flight };
                render();
              }),
              h('span', { class: 'muted small' }, ' Online check-in is open.'),
            )
            : null,
        ),
      );
      if (hasPasses(b)) showPasses(mainCol, b);
    } else if (b.status === 'expired') {
      mainCol.append(h('section', { class: 'card notice notice-warn', role: 'status' }, h('h2', {}, 'This hold has expired'), h('p', {}, 'The seats were released because payment was not completed in time. Any payment for this hold that went through anyway is refunded automatically.'), b.flight_id ? h('p', {}, h('a', { class: 'btn btn-primary', href: `#/flight/${encodeURIComponent(b.flight_id)}` }, 'Choose seats again')) : null));
    } else if (b.status === 'cancelled') {
      mainCol.append(h('section', { class: 'card notice', role: 'status' }, h('h2', {}, 'Hold released'), h('p', {}, 'These seats were released. Any payment for this hold that went through anyway is refunded automatically.')));
    } else if (b.status === 'refunded') {
      mainCol.append(
        h(
          'section',
          { class: 'card notice', role: 'status', 'data-testid': 'refund-notice' },
          h('h2', {}, 'Booking cancelled'),
          h('p', {}, 'Refund: ', h('strong', { 'data-testid': 'refund-amount' }, formatMoney(b.refund || { amount: 0, currency: b.total?.currency || 'EUR' })), ' to your original payment method.'),
        ),
      );
    }

    // Passengers
    // Passengers still on the booking, then any cancelled ones (the server moves them
    // to `cancelled_seats` when they are refunded).
    const active = (b.seats || []).map((s) => ({ ...s, cancelled: false }));
    const gone = (b.cancelled_seats || []).filter((c) => !active.some((a) => a.seat === c.seat)).map((s) => ({ ...s, cancelled: true }));
    const rows = [...active, ...gone];
    const showTickets = rows.some((s) => s.ticket_number);
    mainCol.append(
      h(
        'section',
        { class: 'card', 'aria-labelledby': 'pax-title' },
        h('h2', { id: 'pax-title' }, plural(rows.length, 'Passenger')),
        h(
          'table',
          { class: 'table', 'data-testid': 'passengers' },
          h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Seat'), h('th', { scope: 'col' }, 'Passenger'), showTickets ? h('th', { scope: 'col' }, 'E-ticket') : null)),
          h(
            'tbody',
            {},
            rows.map((s) =>
              h(
                'tr',
                { class: s.cancelled ? 'cancelled' : null },
                h('td', { class: 'seat-cell-text' }, s.seat),
                h('td', {}, s.passenger, s.cancelled ? h('span', { class: 'badge badge-cancelled pax-badge' }, 'Cancelled') : null, s.checked_in ? h('span', { class: 'badge badge-confirmed pax-badge', 'data-testid': 'checked-in' }, 'Checked in') : null),
                showTickets ? h('td', { class: 'ticket', 'data-testid': s.cancelled ? 'cancelled-ticket' : 'ticket' }, s.ticket_number || '—') : null,
              )),
          ),
        ),
      ),
    );

    // Side: price and actions
    const side = h(
      'section',
      { class: 'card price-card', 'aria-labelledby': 'price-title' },
      h('h2', { id: 'price-title' }, 'Price'),
      h('dl', { class: 'price-list' }, h('dt', {}, 'Total'), h('dd', { 'data-testid': 'total' }, formatMoney(b.total)), b.refund ? [h('dt', {}, 'Refunded'), h('dd', { class: 'refund' }, formatMoney(b.refund))] : null, h('dt', {}, 'Booked'), h('dd', {}, formatDateTime(b.created_at))),
    );
    if (b.status === 'held' || b.status === 'confirmed') {
      side.append(
        h(
          'button',
          {
            type: 'button',
            class: 'btn btn-danger-ghost btn-block',
            'data-testid': 'cancel',
            onclick: async () => {
              const nb = await cancelBooking(ctx, booking);
              if (nb && !signal.aborted) {
                booking = { ...nb, flight: nb.flight || booking.flight };
                lastDecline = null;
                render();
              }
            },
          },
          b.status === 'held' ? 'Release seats' : 'Cancel booking',
        ),
      );
      if (b.status === 'confirmed') {
        const est = estimateRefund(b, seatInfo.cabins);
        if (est) side.append(h('p', { class: 'muted small' }, `If you cancel now: ${formatMoney(est.money)} refund. ${est.rule}`));
      }
    }
    sideCol.append(side);
  }

  /** Adds the boarding passes under the status panel once the server has sent them. */
  async function showPasses(col, b) {
    try {
      const section = await boardingPassesSection(ctx, b);
      if (section && col.isConnected) col.querySelector('[data-testid="confirmation"]')?.after(section);
    } catch (e) {
      if (!signal.aborted) toast(friendlyError(e), 'error');
    }
  }

  function payForm() {
    const sel = h('select', { id: 'pay-method', name: 'payment_method' }, PAYMENT_METHODS.map((m) => h('option', { value: m.id }, m.label)));
    // Stripe's test card that asks for 3-D Secure, when payments go through Stripe
    paymentsConfig().then((c) => {
      if (c.payments === 'stripe') sel.append(h('option', { value: THREE_D_SECURE_CARD.id }, THREE_D_SECURE_CARD.label));
    });
    if (lastDecline?.method) sel.value = lastDecline.method;
    const err = h('div', { class: 'form-error', role: 'alert', 'data-testid': 'pay-error' });
    if (lastDecline) err.append(lastDecline.node);
    const btn = h('button', { type: 'submit', class: 'btn btn-primary btn-block', 'data-testid': 'pay' }, `Pay ${formatMoney(booking.total)}`);
    const form = h(
      'form',
      { class: 'card pay-card', 'aria-labelledby': 'pay-title' },
      h('h2', { id: 'pay-title' }, 'Payment'),
      h('div', { class: 'field' }, h('label', { for: 'pay-method' }, 'Card'), sel),
      h('p', { class: 'muted small' }, 'This is a demo: only the test cards above are accepted and no real money moves.'),
      err,
      btn,
    );
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      if (paying) return;
      paying = true;
      btn.disabled = true;
      btn.textContent = 'Processing payment…';
      err.textContent = '';
      const method = sel.value;
      try {
        const action = { locator: booking.locator, payment_method: method };
        const r = await ctx.client.payCompletingAction({ ...action, request_id: payId.for(action) }, await stripeActionHandler());
        payId.settle();
        paying = false;
        if (signal.aborted) return;
        booking = { ...r.booking, flight: r.booking.flight || booking.flight };
        lastDecline = null;
        render();
        el.querySelector('#conf-title')?.focus();
      } catch (e2) {
        payId.settle(e2);
        paying = false;
        if (signal.aborted) return;
        if (e2.reason === 'payment_declined') {
          const node = h(
            'div',
            { class: 'decline' },
            h('strong', {}, 'Payment declined.'),
            ` Your card was not charged. Your seats stay on hold until ${formatTime(booking.hold_expires_at)} UTC, so you can try another card.`,
          );
          lastDecline = { method, node };
          err.append(node);
        } else if (e2.reason === 'payment_failed') {
          // not "not charged": the server's message says when the outcome is unknown
          // (a charge that went through then confirms the booking, or is refunded)
          const node = h(
            'div',
            { class: 'decline' },
            h('strong', {}, 'Payment did not complete.'),
            ` ${String(e2.message || "The payment failed").replace(/\.$/, "")}. Your seats stay on hold until ${formatTime(booking.hold_expires_at)} UTC; this page shows the booking confirmed if a charge went through.`,
          );
          lastDecline = { method, node };
          err.append(node);
          refresh();
        } else if (e2.reason === 'payment_action_required') {
          err.textContent = (await stripeActionHandler())
            ? 'Your bank did not confirm this payment. Nothing was charged; try again, or choose another card.'
            : 'This card needs 3-D Secure verification, which cannot be completed here (the server has no Stripe publishable key). Nothing was charged; choose another card.';
        } else if (e2.reason === 'hold_expired') {
          err.textContent = 'This hold expired before payment. Nothing was charged; please choose your seats again.';
          refresh();
        } else if (e2.reason === 'invalid_state') {
          refresh();
        } else {
          err.textContent = friendlyError(e2);
        }
        btn.disabled = false;
        btn.textContent = `Pay ${formatMoney(booking.total)}`;
      }
    });
    return form;
  }

  async function refresh() {
    try {
      const r = await ctx.client.call('booking.get', { locator });
      if (signal.aborted) return;
      if (r.booking.status !== booking.status || JSON.stringify(r.booking) !== JSON.stringify(booking)) {
        booking = { ...r.booking, flight: r.booking.flight || booking.flight };
        if (!paying) render();
      }
    } catch {
      /* keep what we show */
    }
  }

  const onBooking = (e) => {
    const b = e.detail;
    if (b.locator !== locator || paying) return;
    const checkedIn = (x) => (x.seats || []).map((s) => !!s.checked_in).join();
    // any change: a partial cancel from another tab keeps the status but not the
    // passengers or the refund
    const changed = b.updated_at !== booking.updated_at || b.status !== booking.status || checkedIn(b) !== checkedIn(booking);
    booking = { ...booking, ...b, flight: b.flight || booking.flight };
    if (changed) render();
  };
  const onLive = () => refresh();
  ctx.bus.addEventListener('booking', onBooking);
  ctx.bus.addEventListener('live', onLive);
  signal.addEventListener('abort', () => {
    ctx.bus.removeEventListener('booking', onBooking);
    ctx.bus.removeEventListener('live', onLive);
  });

  render();
}
