// Online check-in and boarding passes: whether a booking can be checked in now, the
// check-in call, and the boarding pass cards with the QR code of each pass's IATA
// BCBP string (qrcode-generator, vendored in ../vendor) and their print view.

import { h, toast } from '../ui.js';
import { formatLocal, formatLongDate } from '../format.js';
import { friendlyError } from './flight.js';
import qrcode from '../vendor/qrcode-generator.js';

// The server's default window (--checkin-opens 30 hours, --checkin-closes 45 minutes);
// the server decides, and says `checkin_closed` if it was set otherwise.
const OPENS_MS = 30 * 3600000;
const CLOSES_MS = 45 * 60000;

/** When the flight leaves: the airline's estimate if there is one, else the schedule. */
function departure(flight) {
  return new Date(flight?.estimated_departs_at || flight?.departs_at);
}

/** A confirmed booking with a passenger not checked in yet, inside the window. */
export function canCheckIn(b, now = Date.now()) {
  if (b.status !== 'confirmed' || !(b.seats || []).some((s) => !s.checked_in)) return false;
  const dep = departure(b.flight).getTime();
  return now >= dep - OPENS_MS && now < dep - CLOSES_MS;
}

export const hasPasses = (b) => b.status === 'confirmed' && (b.seats || []).some((s) => s.checked_in);

/** Checks in every passenger of the booking; the new booking, or null after a toast. */
async function checkIn(ctx, booking) {
  try {
    const r = await ctx.client.checkIn({ locator: booking.locator });
    toast(`Checked in: ${r.boarding_passes.length === 1 ? 'your boarding pass is ready' : `${r.boarding_passes.length} boarding passes are ready`}.`, 'success');
    ctx.bus.dispatchEvent(new CustomEvent('booking', { detail: r.booking }));
    return r.booking;
  } catch (e) {
    toast(e.reason === 'checkin_closed' ? 'Online check-in is not open for this flight right now.' : friendlyError(e), 'error');
    return null;
  }
}

/** A "Check in" button for every passenger of the booking; `done(booking)` after it. */
export function checkInButton(ctx, booking, done, size = '') {
  const btn = h(
    'button',
    {
      type: 'button',
      class: `btn btn-primary ${size}`.trim(),
      'data-testid': 'check-in',
      onclick: async () => {
        btn.disabled = true;
        const nb = await checkIn(ctx, booking);
        btn.disabled = false;
        if (nb) done(nb);
      },
    },
    'Check in',
  );
  return btn;
}

/** A QR code of `text` on a canvas: 4 px per module and a 4-module quiet zone. */
function qrCanvas(text, label) {
  const qr = qrcode(0, 'M');
  qr.addData(text);
  qr.make();
  const n = qr.getModuleCount();
  const cell = 4;
  const size = (n + 8) * cell;
  const canvas = h('canvas', { width: size, height: size, class: 'bp-code', role: 'img', 'aria-label': label, 'data-bcbp': text });
  const g = canvas.getContext('2d');
  g.fillStyle = '#fff';
  g.fillRect(0, 0, size, size);
  g.fillStyle = '#000';
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < n; c++) if (qr.isDark(r, c)) g.fillRect((c + 4) * cell, (r + 4) * cell, cell, cell);
  }
  return canvas;
}

function passCard(ctx, p, booking) {
  const f = booking.flight || {};
  const field = (label, value, testid) => h('div', { class: 'bp-field' }, h('dt', {}, label), h('dd', { 'data-testid': testid }, value));
  return h(
    'li',
    { class: 'card boarding-pass', 'data-testid': 'boarding-pass', 'data-seat': p.seat, 'data-sequence': p.sequence },
    h(
      'div',
      { class: 'bp-head' },
      h('span', { class: 'bp-brand' }, 'Jetway · Boarding pass'),
      h('span', { class: 'bp-flight' }, f.number || p.flight_id),
    ),
    h('p', { class: 'bp-route' }, f.from ? `${ctx.cityOf(f.from)} (${f.from}) → ${ctx.cityOf(f.to)} (${f.to})` : p.flight_id),
    h(
      'div',
      { class: 'bp-body' },
      h(
        'dl',
        { class: 'bp-fields' },
        field('Passenger', p.passenger, 'bp-passenger'),
        field('Booking', booking.locator, 'bp-locator'),
        field('Seat', p.seat, 'bp-seat'),
        field('Sequence', String(p.sequence).padStart(3, '0'), 'bp-sequence'),
        f.departs_at ? field('Departs', `${formatLongDate(f.departs_at, f.from_tz)} · ${formatLocal(f.departs_at, f.from_tz)}`, 'bp-departs') : null,
      ),
      qrCanvas(p.bcbp, `Boarding pass barcode for ${p.passenger}, seat ${p.seat}`),
    ),
  );
}

/** The booking's boarding passes as cards, with a print button; fetched from the server. */
export async function boardingPassesSection(ctx, booking) {
  const r = await ctx.client.boardingPasses(booking.locator);
  const passes = r.boarding_passes || [];
  if (!passes.length) return null;
  return h(
    'section',
    { class: 'boarding-passes', 'data-testid': 'boarding-passes', 'aria-labelledby': 'bp-title' },
    h(
      'div',
      { class: 'bp-title-row' },
      h('h2', { id: 'bp-title' }, passes.length === 1 ? 'Boarding pass' : 'Boarding passes'),
      h('button', { type: 'button', class: 'btn btn-ghost btn-small no-print', 'data-testid': 'print-passes', onclick: () => window.print() }, 'Print'),
    ),
    h('ul', { class: 'bp-list' }, passes.map((p) => passCard(ctx, p, booking))),
  );
}
