// The waitlist card of a flight page: "Join the waitlist" on a sold-out cabin, the
// user's entries with their live position, and an offer with its countdown and Pay.
import { h, clear, toast } from '../ui.js';
import { cabinName, plural, formatCountdown } from '../format.js';
import { ActionId } from '../jetway.js';

const MAX_PARTY = 9;

export function waitlistPanel(ctx, flight, feed, signal, bookable) {
  const box = h('section', { class: 'card waitlist-card', 'data-testid': 'waitlist', 'aria-labelledby': 'wl-title', hidden: true });
  let entries = [];
  const joinIds = new Map(); // cabin -> ActionId of its join
  const expires = new Map(); // locator -> hold_expires_at
  const available = (cabin) =>
    feed.loaded && feed.cabins.has(cabin) ? feed.cabins.get(cabin) : (flight.cabins || []).find((c) => c.cabin === cabin)?.seats_available ?? 0;

  async function load() {
    if (!ctx.user) {
      entries = [];
      return render();
    }
    try {
      const r = await ctx.client.listWaitlist();
      if (signal.aborted) return;
      entries = (r.entries || []).filter((e) => e.flight_id === flight.flight_id);
      for (const e of entries) if (e.status === 'offered' && e.locator && !expires.has(e.locator)) loadHold(e.locator);
      render();
    } catch {
      /* not essential */
    }
  }

  async function loadHold(locator) {
    try {
      const r = await ctx.client.getBooking(locator);
      expires.set(locator, r.booking.hold_expires_at);
      render();
    } catch {
      /* shown without a countdown */
    }
  }

  function entryRow(e) {
    const what = `${cabinName(e.cabin)} · ${plural(e.count, 'seat')}`;
    if (e.status === 'offered') {
      const until = expires.get(e.locator);
      return h(
        'li',
        { class: 'wl-entry wl-offered', 'data-testid': 'waitlist-offer' },
        h('strong', {}, `Seats offered: ${what}`),
        until ? h('span', { class: 'wl-countdown', 'data-expires': until }, '') : null,
        h('a', { class: 'btn btn-primary btn-small', href: `#/booking/${encodeURIComponent(e.locator)}`, 'data-testid': 'waitlist-pay' }, 'Pay'),
        h('button', { type: 'button', class: 'btn btn-ghost btn-small', onclick: () => leave(e) }, 'Decline'),
      );
    }
    if (e.status === 'waiting') {
      return h(
        'li',
        { class: 'wl-entry', 'data-testid': 'waitlist-entry' },
        h('span', {}, `${what} · `, h('strong', { 'data-testid': 'waitlist-position' }, `number ${e.position} in line`)),
        h('button', { type: 'button', class: 'btn btn-ghost btn-small', onclick: () => leave(e) }, 'Leave'),
      );
    }
    return null;
  }

  function joinForm(cabin) {
    const names = h('div', { class: 'wl-names' });
    const err = h('div', { class: 'form-error', role: 'alert' });
    const count = h('select', { 'aria-label': 'Seats wanted', onchange: () => fillNames() }, [...Array(MAX_PARTY).keys()].map((i) => h('option', { value: i + 1 }, plural(i + 1, 'seat'))));
    function fillNames() {
      const n = Number(count.value);
      while (names.children.length < n) names.append(h('input', { type: 'text', maxlength: 64, placeholder: `Passenger ${names.children.length + 1} name`, 'aria-label': `Passenger ${names.children.length + 1} name` }));
      while (names.children.length > n) names.lastChild.remove();
    }
    fillNames();
    // the same party joined again after a timeout is the same request: one entry
    // (kept per cabin across the panel's redraws)
    if (!joinIds.has(cabin)) joinIds.set(cabin, new ActionId('wl'));
    const joinId = joinIds.get(cabin);
    let button;
    const join = async () => {
      if (button.disabled) return;
      err.textContent = '';
      if (!ctx.user) {
        toast('Log in or create an account to join the waitlist.');
        ctx.navigate(`#/login?next=${encodeURIComponent(location.hash)}`);
        return;
      }
      const passengers = [...names.children].map((i) => ({ name: i.value.trim() }));
      if (passengers.some((p) => !p.name)) {
        err.textContent = 'Please enter every passenger name.';
        return;
      }
      const action = { flight_id: flight.flight_id, cabin, count: passengers.length, passengers };
      button.disabled = true;
      try {
        await ctx.client.joinWaitlist({ ...action, request_id: joinId.for(action) });
        joinId.settle();
        load();
      } catch (e) {
        joinId.settle(e);
        err.textContent = e.reason === 'seats_available' ? 'Seats are available again: choose them on the map.' : e.message || 'Could not join the waitlist.';
      } finally {
        button.disabled = false;
      }
    };
    button = h('button', { type: 'button', class: 'btn btn-primary btn-small', 'data-testid': 'waitlist-join', onclick: join }, 'Join the waitlist');
    return h(
      'div',
      { class: 'wl-join', 'data-cabin': cabin },
      h('p', {}, h('strong', {}, `${cabinName(cabin)} is sold out.`), ' Join the waitlist: when seats are freed, they are held for you automatically.'),
      count,
      names,
      err,
      button,
    );
  }

  async function leave(e) {
    try {
      await ctx.client.leaveWaitlist(e.id);
      load();
    } catch (x) {
      toast(x.message || 'Could not leave the waitlist.', 'error');
    }
  }

  let shownJoin = '';
  function render() {
    const soldOut = bookable ? (flight.cabins || []).map((c) => c.cabin).filter((c) => available(c) === 0) : [];
    shownJoin = soldOut.join(',');
    const rows = entries.map(entryRow).filter(Boolean);
    clear(box);
    box.hidden = !rows.length && !soldOut.length;
    if (box.hidden) return;
    box.append(h('h2', { id: 'wl-title' }, 'Waitlist'));
    if (rows.length) box.append(h('ul', { class: 'wl-entries' }, rows));
    for (const c of soldOut) box.append(joinForm(c));
    tick();
  }

  function tick() {
    for (const el of box.querySelectorAll('[data-expires]')) {
      const ms = new Date(el.dataset.expires) - Date.now();
      el.textContent = ms > 0 ? `pay within ${formatCountdown(ms)}` : 'offer expired';
    }
  }
  const timer = setInterval(tick, 1000);

  const onOffered = (ev) => {
    const { entry, booking } = ev.detail;
    if (entry.flight_id !== flight.flight_id) return;
    expires.set(booking.locator, booking.hold_expires_at);
    load();
  };
  const onUpdated = (ev) => {
    if (ev.detail.entry.flight_id === flight.flight_id) load();
  };
  // re-render only when a cabin sells out or opens up (not on every seat change)
  const onSeats = () => {
    const now = bookable ? (flight.cabins || []).map((c) => c.cabin).filter((c) => available(c) === 0).join(',') : '';
    if (now !== shownJoin) render();
  };
  ctx.bus.addEventListener('waitlist.offered', onOffered);
  ctx.bus.addEventListener('waitlist.updated', onUpdated);
  ctx.bus.addEventListener('session', load);
  feed.addEventListener('change', onSeats);
  feed.addEventListener('snapshot', onSeats);
  signal.addEventListener('abort', () => {
    clearInterval(timer);
    ctx.bus.removeEventListener('waitlist.offered', onOffered);
    ctx.bus.removeEventListener('waitlist.updated', onUpdated);
    ctx.bus.removeEventListener('session', load);
    feed.removeEventListener('change', onSeats);
    feed.removeEventListener('snapshot', onSeats);
  });
  ctx.sessionKnown.then(() => !signal.aborted && load());
  render();
  return box;
}
