import { h, clear, statusBadge } from '../ui.js';
import { formatMoney, formatTime, formatDate, formatDateTime, plural, departureText } from '../format.js';
import { cancelBooking } from './booking.js';
import { canCheckIn, checkInButton } from './checkin.js';

const TABS = [
  ['bookings', 'Bookings'],
  ['orders', 'Orders'],
  ['history', 'History'],
];

const EVENT_TEXT = {
  registered: 'Account created',
  login: 'Logged in',
  logout: 'Logged out',
  resume: 'Session resumed',
  held: 'Seats held',
  paid: 'Payment successful',
  declined: 'Payment declined',
  payment_declined: 'Payment declined',
  cancelled: 'Hold released',
  refunded: 'Booking refunded',
  partially_refunded: 'Booking partly refunded',
  expired: 'Hold expired',
  seat_changed: 'Seat changed',
  checked_in: 'Checked in',
  flight_cancelled: 'Flight cancelled by the airline',
};

export async function tripsView(ctx, el, { query, signal }) {
  const user = await ctx.requireUser();
  if (!user || signal.aborted) return;
  el.setAttribute('data-requires-login', '');
  await ctx.loadAirports();
  if (signal.aborted) return;
  let tab = TABS.some(([id]) => id === query.get('tab')) ? query.get('tab') : 'bookings';

  const tablist = h('div', { class: 'tabs', role: 'tablist', 'aria-label': 'My trips' });
  const panel = h('div', { class: 'tab-panel', role: 'tabpanel', tabindex: '0' });
  const buttons = TABS.map(([id, label]) =>
    h(
      'button',
      {
        type: 'button',
        role: 'tab',
        id: `tab-${id}`,
        'aria-controls': 'trips-panel',
        onclick: () => select(id, true),
        onkeydown: (e) => {
          const i = TABS.findIndex(([t]) => t === id);
          let j = null;
          if (e.key === 'ArrowRight') j = (i + 1) % TABS.length;
          if (e.key === 'ArrowLeft') j = (i + TABS.length - 1) % TABS.length;
          if (j !== null) {
            e.preventDefault();
            select(TABS[j][0], true);
            buttons[j].focus();
          }
        },
      },
      label,
    ),
  );
  panel.id = 'trips-panel';
  tablist.append(...buttons);
  el.append(h('div', { class: 'page-head' }, h('h1', {}, 'My trips'), h('p', { class: 'muted' }, `Signed in as ${user.username}`)), tablist, panel);

  let bookings = [];
  let loadSeq = 0;

  async function select(id, push) {
    tab = id;
    buttons.forEach((b, i) => {
      const on = TABS[i][0] === id;
      b.setAttribute('aria-selected', on ? 'true' : 'false');
      b.tabIndex = on ? 0 : -1;
    });
    panel.setAttribute('aria-labelledby', `tab-${id}`);
    if (push) history.replaceState(null, '', `#/trips?tab=${id}`);
    await load();
  }

  async function load() {
    const seq = ++loadSeq;
    panel.setAttribute('aria-busy', 'true');
    try {
      if (tab === 'bookings') {
        const r = await ctx.client.listBookings();
        if (seq !== loadSeq || signal.aborted) return;
        bookings = r.bookings || [];
        renderBookings();
      } else if (tab === 'orders') {
        const r = await ctx.client.listOrders();
        if (seq !== loadSeq || signal.aborted) return;
        renderOrders(r.orders || []);
      } else {
        const r = await ctx.client.call('history.list', { limit: 100 });
        if (seq !== loadSeq || signal.aborted) return;
        renderHistory(r.events || []);
      }
    } catch (e) {
      if (seq !== loadSeq || signal.aborted) return;
      clear(panel).append(h('p', { class: 'form-error', role: 'alert' }, e.reason === 'disconnected' ? 'Connection lost; this list will refresh when we are back online.' : e.message));
    } finally {
      if (seq === loadSeq) panel.setAttribute('aria-busy', 'false');
    }
  }

  function bookingCard(b) {
    const f = b.flight || {};
    const actions = h('div', { class: 'bc-actions' }, h('a', { class: 'btn btn-ghost btn-small', href: `#/booking/${encodeURIComponent(b.locator)}` }, b.status === 'held' ? 'Pay now' : 'View'));
    if (canCheckIn(b)) {
      actions.append(checkInButton(ctx, b, () => ctx.navigate(`#/booking/${encodeURIComponent(b.locator)}`), 'btn-small'));
    }
    if (b.status === 'held' || b.status === 'confirmed') {
      actions.append(
        h(
          'button',
          {
            type: 'button',
            class: 'btn btn-danger-ghost btn-small',
            'data-testid': 'cancel',
            onclick: async () => {
              const nb = await cancelBooking(ctx, b);
              if (nb) upsert(nb);
            },
          },
          b.status === 'held' ? 'Release' : 'Cancel',
        ),
      );
    }
    let note = null;
    if (b.status === 'held' && b.hold_expires_at) note = h('p', { class: 'bc-note' }, `On hold until ${formatTime(b.hold_expires_at)} UTC, not paid yet`);
    if (b.refund) note = h('p', { class: 'bc-note refund', 'data-testid': 'refund' }, `Refunded ${formatMoney(b.refund)}`);
    return h(
      'li',
      { class: `card booking-card status-${b.status}`, 'data-locator': b.locator, 'data-status': b.status },
      h(
        'div',
        { class: 'bc-main' },
        h('div', { class: 'bc-top' }, h('span', { class: 'bc-locator' }, b.locator), statusBadge(b.status)),
        h('p', { class: 'bc-route' }, f.from ? `${ctx.cityOf(f.from)} → ${ctx.cityOf(f.to)}` : `Flight ${b.flight_id}`),
        h('p', { class: 'muted small' }, [f.number, f.departs_at ? `${formatDate(f.departs_at, f.from_tz)} · ${departureText(f)}` : null, seatSummary(b)].filter(Boolean).join(' · ')),
        note,
      ),
      h('div', { class: 'bc-side' }, h('span', { class: 'bc-total' }, formatMoney(b.total)), actions),
    );
  }

  function renderBookings() {
    clear(panel);
    if (!bookings.length) {
      panel.append(h('div', { class: 'card empty' }, h('p', {}, 'No trips yet.'), h('p', {}, h('a', { class: 'btn btn-primary', href: '#/' }, 'Find a flight'))));
      return;
    }
    panel.append(h('ul', { class: 'booking-list' }, bookings.map(bookingCard)));
  }

  function upsert(b) {
    const i = bookings.findIndex((x) => x.locator === b.locator);
    if (i >= 0) bookings[i] = { ...bookings[i], ...b };
    else bookings.unshift(b);
    if (tab === 'bookings') renderBookings();
  }

  function renderOrders(orders) {
    clear(panel);
    if (!orders.length) {
      panel.append(h('div', { class: 'card empty' }, h('p', {}, 'No orders yet. Orders appear here once you pay for a booking.')));
      return;
    }
    panel.append(
      h(
        'div',
        { class: 'card table-wrap' },
        h(
          'table',
          { class: 'table', 'data-testid': 'orders' },
          h('caption', { class: 'visually-hidden' }, 'Your orders'),
          h('thead', {}, h('tr', {}, ['Order', 'Booking', 'Status', 'Amount', 'Refunded', 'Date'].map((t) => h('th', { scope: 'col' }, t)))),
          h(
            'tbody',
            {},
            orders.map((o) =>
              h(
                'tr',
                { 'data-locator': o.locator },
                h('td', { class: 'mono' }, shortId(o.order_id)),
                h('td', {}, h('a', { href: `#/booking/${encodeURIComponent(o.locator)}` }, o.locator)),
                h('td', {}, statusBadge(o.status)),
                h('td', { class: 'num' }, formatMoney(o.amount)),
                h('td', { class: 'num' }, o.refunded && o.refunded.amount ? formatMoney(o.refunded) : '—'),
                h('td', {}, formatDateTime(o.created_at)),
              ),
            ),
          ),
        ),
      ),
    );
  }

  function renderHistory(events) {
    clear(panel);
    if (!events.length) {
      panel.append(h('div', { class: 'card empty' }, h('p', {}, 'No activity yet.')));
      return;
    }
    panel.append(
      h(
        'ol',
        { class: 'card history', 'data-testid': 'history' },
        events.map((ev) =>
          h(
            'li',
            { 'data-type': ev.type },
            h('time', { datetime: ev.at }, formatDateTime(ev.at)),
            h('span', { class: 'ev-type' }, EVENT_TEXT[ev.type] || ev.type.replace(/_/g, ' ')),
            ev.locator ? h('a', { href: `#/booking/${encodeURIComponent(ev.locator)}`, class: 'mono' }, ev.locator) : h('span'),
            ev.amount || ev.refund ? h('span', { class: 'num' }, formatMoney(ev.amount || ev.refund)) : null,
          ),
        ),
      ),
    );
  }

  // Live: bookings change under us (another tab, hold expiry, payment elsewhere).
  let reloadTimer = null;
  const onBooking = (e) => {
    if (tab === 'bookings') upsert(e.detail);
    else {
      clearTimeout(reloadTimer);
      reloadTimer = setTimeout(load, 300);
    }
  };
  const onLive = () => load();
  ctx.bus.addEventListener('booking', onBooking);
  ctx.bus.addEventListener('live', onLive);
  signal.addEventListener('abort', () => {
    clearTimeout(reloadTimer);
    ctx.bus.removeEventListener('booking', onBooking);
    ctx.bus.removeEventListener('live', onLive);
  });

  await select(tab, false);
}

function seatSummary(b) {
  const seats = (b.seats || []).length ? b.seats : b.cancelled_seats || [];
  if (!seats.length) return null;
  return `${plural(seats.length, 'seat')}: ${seats.map((s) => s.seat).join(', ')}`;
}

function shortId(id) {
  const s = String(id ?? '');
  return s.length > 12 ? `${s.slice(0, 10)}…` : s;
}
