import { h, clear, toast, statusBadge, followViewers } from '../ui.js';
import { SeatMap, deriveLayout, legend } from '../seatmap.js';
import { ActionId } from '../jetway.js';
import { waitlistPanel } from './waitlist.js';
import { formatMoney, formatLocal, formatLongDate, formatDuration, cabinName, plural, isBookable, departureText } from '../format.js';

const MAX_SEATS = 9;

export function flightSummary(ctx, f, extra = null) {
  return h(
    'div',
    { class: 'flight-summary' },
    h(
      'div',
      { class: 'fs-route' },
      h('div', { class: 'fs-end' }, h('span', { class: 'fs-time' }, formatLocal(f.departs_at, f.from_tz)), h('span', { class: 'fs-code' }, f.from), h('span', { class: 'fs-city' }, ctx.cityOf(f.from))),
      h('div', { class: 'fs-mid', 'aria-hidden': 'true' }, h('span', { class: 'plane' }, '✈'), f.arrives_at ? h('span', {}, formatDuration(f.departs_at, f.arrives_at)) : null),
      h('div', { class: 'fs-end' }, h('span', { class: 'fs-time' }, f.arrives_at ? formatLocal(f.arrives_at, f.to_tz) : ''), h('span', { class: 'fs-code' }, f.to), h('span', { class: 'fs-city' }, ctx.cityOf(f.to))),
    ),
    h('p', { class: 'fs-meta' }, h('strong', {}, f.number), ` · ${formatLongDate(f.departs_at, f.from_tz)}`, f.aircraft ? ` · ${f.aircraft}` : '', ' · local times', extra),
    f.estimated_departs_at || f.estimated_arrives_at
      ? h('p', { class: 'fs-estimate', 'data-testid': 'estimate' }, `${departureText(f)}${f.estimated_arrives_at ? ` · arrives ${formatLocal(f.estimated_arrives_at, f.to_tz)}` : ''}`)
      : null,
  );
}

export async function flightView(ctx, el, { flightId, signal }) {
  let r;
  try {
    [r] = await Promise.all([ctx.client.call('flights.get', { flight_id: flightId }), ctx.loadAirports()]);
  } catch (e) {
    if (e.reason !== 'not_found' && e.reason !== 'invalid_params') throw e;
    el.append(h('section', { class: 'card empty' }, h('h1', {}, 'Flight not found'), h('p', {}, 'This flight does not exist or is no longer listed.'), h('p', {}, h('a', { class: 'btn btn-primary', href: '#/' }, 'Search flights'))));
    return;
  }
  if (signal.aborted) return;
  const flight = r.flight;
  const layout = r.layout && r.layout.cabins ? r.layout : deriveLayout(r.seats || []);
  const fares = new Map((flight.cabins || []).map((c) => [c.cabin, c]));
  const bookable = isBookable(flight);

  // ---- selection state (kept in sessionStorage so a login detour does not lose it)
  const storeKey = `jetway.selection.${flightId}`;
  let saved = {};
  try {
    saved = JSON.parse(sessionStorage.getItem(storeKey) || '{}');
  } catch {
    saved = {};
  }
  const selected = new Map(); // seat -> passenger name
  const persist = () => sessionStorage.setItem(storeKey, JSON.stringify({ seats: [...selected.entries()] }));

  // ---- layout
  const summary = (f) => flightSummary(ctx, f, f.status === 'scheduled' ? null : [' ', h('span', { 'data-testid': 'flight-status', 'data-value': f.status }, statusBadge(f.status))]);
  const head = h('div', { class: 'flight-head-summary' }, summary(flight));
  const viewers = h('p', { class: 'viewers muted small', 'data-testid': 'viewers', 'aria-live': 'polite' });
  const mapBox = h('div', { class: 'seatmap-box' });
  const live = h('div', { class: 'cabin-stats' });
  const selBox = h('div', { class: 'selection' });
  const errorBox = h('div', { class: 'form-error', role: 'alert', 'data-testid': 'hold-error' });
  const holdBtn = h('button', { type: 'button', class: 'btn btn-primary btn-block', 'data-testid': 'hold' }, 'Hold seats');
  // the same seats and names held again after a timeout are the same request
  const holdId = new ActionId('hold');
  // the seats of the hold in flight
  let holding = new Set();
  const totalEl = h('strong', { class: 'total-amount' }, '');

  el.append(
    h('p', { class: 'crumbs' }, h('a', { href: `#/search?from=${encodeURIComponent(flight.from)}&to=${encodeURIComponent(flight.to)}&date=${(flight.departs_at || '').slice(0, 10)}` }, `← All flights ${flight.from} → ${flight.to}`)),
    h('h1', { class: 'visually-hidden' }, `Flight ${flight.number}, ${ctx.cityOf(flight.from)} to ${ctx.cityOf(flight.to)}: choose seats`),
    h('section', { class: 'card flight-head' }, head, viewers, live),
    h(
      'div',
      { class: 'flight-layout' },
      h(
        'section',
        { class: 'card map-card', 'aria-labelledby': 'seatmap-title' },
        h('div', { class: 'map-head' }, h('h2', { id: 'seatmap-title' }, 'Choose your seats'), legend()),
        h('p', { class: 'muted small', id: 'seatmap-help' }, `Pick up to ${MAX_SEATS} seats. Use the arrow keys to move between seats and Enter or Space to select. Seats update live as other travellers book.`),
        mapBox,
      ),
      h(
        'aside',
        { class: 'card side-card', 'aria-labelledby': 'selection-title' },
        h('h2', { id: 'selection-title' }, 'Your selection'),
        selBox,
        h('div', { class: 'total-row' }, h('span', {}, 'Total'), totalEl),
        errorBox,
        holdBtn,
        h('p', { class: 'muted small' }, 'Seats are held for you while you pay. Nothing is charged until you pay.'),
      ),
    ),
  );

  // Phone-width: a sticky bar so the selection is reachable without scrolling past the map.
  const barText = h('span', { class: 'mb-text' }, '');
  const mobileBar = h(
    'div',
    { class: 'mobile-bar', hidden: true },
    barText,
    h('button', { type: 'button', class: 'btn btn-primary btn-small', onclick: () => { const first = selBox.querySelector('input'); selBox.closest('aside').scrollIntoView({ behavior: 'smooth', block: 'start' }); first?.focus({ preventScroll: true }); } }, 'Continue'),
  );
  el.append(mobileBar);

  const map = new SeatMap(mapBox, { interactive: true, label: 'Seat map' });
  const { feed, release } = ctx.watcher.watch(flightId);
  signal.addEventListener('abort', release);
  feed.seed(r.seats || []);
  signal.addEventListener('abort', followViewers(feed, viewers));
  const initial = feed.loaded ? [...feed.seats.values()] : r.seats || [];
  map.render(layout, initial);
  map.container.querySelector('.seatmap')?.setAttribute('aria-describedby', 'seatmap-help');
  selBox.closest('aside').append(waitlistPanel(ctx, flight, feed, signal, bookable));
  if (!bookable) map.setDisabled(true);

  function renderStats() {
    clear(live);
    const counts = feed.loaded ? feed.counts() : countsOf(initial);
    for (const c of flight.cabins || []) {
      const n = feed.loaded && feed.cabins.has(c.cabin) ? feed.cabins.get(c.cabin) : counts.get(c.cabin)?.available ?? c.seats_available;
      live.append(
        h(
          'div',
          { class: `stat stat-${c.cabin}` },
          h('span', { class: 'stat-label' }, cabinName(c.cabin)),
          h('span', { class: 'stat-price' }, formatMoney(c.fare)),
          h('span', { class: `seats-left${n <= 5 ? ' low' : ''}`, 'data-cabin': c.cabin }, n === 0 ? 'Sold out' : `${plural(n, 'seat')} left`),
        ),
      );
    }
  }

  function renderSelection() {
    map.setSelected([...selected.keys()]);
    clear(selBox);
    if (!selected.size) {
      selBox.append(h('p', { class: 'muted' }, bookable ? 'No seats selected yet. Choose seats on the map.' : 'This flight can no longer be booked.'));
    } else {
      const list = h('ol', { class: 'pax-list' });
      let i = 0;
      for (const [seat, name] of selected) {
        i += 1;
        const meta = feed.seats.get(seat) || {};
        const id = `pax-${seat}`;
        const fare = fares.get(meta.cabin)?.fare;
        const input = h('input', {
          id,
          type: 'text',
          value: name,
          maxlength: 64,
          autocomplete: i === 1 ? 'name' : 'off',
          placeholder: 'Full name as on passport',
          required: true,
          'data-seat': seat,
          oninput: (e) => {
            selected.set(seat, e.target.value);
            persist();
          },
        });
        list.append(
          h(
            'li',
            { class: 'pax' },
            h(
              'div',
              { class: 'pax-head' },
              h('span', { class: 'pax-seat' }, seat),
              h('span', { class: 'pax-desc' }, [cabinName(meta.cabin), meta.window ? 'window' : meta.aisle ? 'aisle' : null, meta.exit ? 'exit row' : null].filter(Boolean).join(' · ')),
              h('span', { class: 'pax-fare' }, fare ? formatMoney(fare) : ''),
              h(
                'button',
                { type: 'button', class: 'icon-btn', 'aria-label': `Remove seat ${seat}`, onclick: () => toggle(seat, false) },
                '✕',
              ),
            ),
            h('label', { for: id }, `Passenger ${i} name`),
            input,
          ),
        );
      }
      selBox.append(list);
    }
    let total = 0;
    let currency = 'EUR';
    for (const seat of selected.keys()) {
      const fare = fares.get(feed.seats.get(seat)?.cabin)?.fare;
      if (fare) {
        total += fare.amount;
        currency = fare.currency;
      }
    }
    totalEl.textContent = formatMoney({ amount: total, currency });
    mobileBar.hidden = !selected.size;
    barText.textContent = `${plural(selected.size, 'seat')} · ${formatMoney({ amount: total, currency })}`;
    holdBtn.disabled = !selected.size || !bookable;
    holdBtn.textContent = selected.size ? `Hold ${plural(selected.size, 'seat')}` : 'Hold seats';
  }

  function toggle(seat, on) {
    errorBox.textContent = '';
    if (on) {
      if (selected.size >= MAX_SEATS) {
        errorBox.textContent = `You can hold at most ${MAX_SEATS} seats at a time.`;
        return;
      }
      selected.set(seat, '');
    } else selected.delete(seat);
    persist();
    renderSelection();
    if (on) {
      // keep keyboard users on the map; mouse users can go on to the names
    }
  }

  map.addEventListener('toggle', (e) => toggle(e.detail.seat, e.detail.selected));
  map.addEventListener('unavailable', (e) => {
    if (!bookable) return;
    const what = e.detail.state === 'mine' ? 'is already in your booking' : `is ${e.detail.state === 'held' ? 'on hold' : 'already booked'}`;
    errorBox.textContent = `Seat ${e.detail.seat} ${what}.`;
  });

  // ---- live updates
  const onSnapshot = () => {
    for (const s of feed.seats.values()) map.setStatus(s.seat, s.status);
    dropTaken([...selected.keys()].filter((s) => feed.seats.get(s)?.status !== 'available' && !holding.has(s)));
    renderStats();
  };
  const onChange = (e) => {
    const taken = [];
    for (const s of e.detail.seats) {
      map.setStatus(s.seat, s.status);
      // this page's own hold is pushed before its reply: not "taken by another"
      if (s.status !== 'available' && selected.has(s.seat) && !holding.has(s.seat)) taken.push(s.seat);
      // a hold of an uncertain answer that is free again has ended (or never was):
      // holding the seats again is a new request, not a replay of that one
      if (s.status === 'available' && holding.has(s.seat)) {
        holding = new Set();
        holdId.forget();
      }
    }
    dropTaken(taken);
    renderStats();
  };
  function dropTaken(seats) {
    if (!seats.length) return;
    for (const s of seats) selected.delete(s);
    persist();
    renderSelection();
    const msg = seats.length === 1 ? `Seat ${seats[0]} was just taken by another traveller. Please choose another seat.` : `Seats ${seats.join(', ')} were just taken by other travellers. Please choose other seats.`;
    errorBox.textContent = msg;
  }
  feed.addEventListener('snapshot', onSnapshot);
  feed.addEventListener('change', onChange);
  signal.addEventListener('abort', () => {
    feed.removeEventListener('snapshot', onSnapshot);
    feed.removeEventListener('change', onChange);
  });

  // Restore a saved selection (e.g. after logging in).
  for (const [seat, name] of saved.seats || []) {
    if (selected.size >= MAX_SEATS) break;
    const st = feed.seats.get(seat)?.status;
    if (st === 'available') selected.set(seat, name || '');
  }
  renderSelection();
  renderStats();
  if (feed.loaded) onSnapshot();

  // Seats of my own bookings on this flight.
  async function loadMine() {
    if (!ctx.user) return map.setMine([]);
    try {
      const res = await ctx.client.listBookings();
      if (signal.aborted) return;
      const mine = [];
      for (const b of res.bookings || []) {
        if (b.flight_id === flightId && (b.status === 'held' || b.status === 'confirmed')) for (const s of b.seats) mine.push(s.seat);
      }
      map.setMine(mine);
    } catch {
      /* not essential */
    }
  }
  const onBooking = (e) => {
    if (e.detail.flight_id === flightId) loadMine();
  };
  const onSession = () => loadMine();
  // a new status or time: redrawn in place; a change of what it allows, the whole view
  const showFlight = (f) => {
    if (isBookable(f) !== bookable) ctx.navigate(location.hash, { replace: true });
    else clear(head).append(summary(f));
  };
  // pushes of this flight shown so far: a read answered after one may be older
  let pushed = 0;
  const onFlight = (e) => {
    const f = e.detail.flight;
    if (f.flight_id !== flightId) return;
    pushed += 1;
    showFlight(f);
  };
  ctx.bus.addEventListener('flight', onFlight);
  signal.addEventListener('abort', () => ctx.bus.removeEventListener('flight', onFlight));
  // back online: a change of status or times made meanwhile was never pushed here
  // (docs/protocol.md: read the flight again after a reconnect); once a push has come
  // while the read was out, every change after it is pushed too, so the read's
  // answer (which may be older) is dropped
  const onLive = async () => {
    const before = pushed;
    try {
      const r = await ctx.client.call('flights.get', { flight_id: flightId });
      if (!signal.aborted && pushed === before) showFlight(r.flight);
    } catch {
      /* the next reconnect reads it again */
    }
  };
  ctx.bus.addEventListener('live', onLive);
  signal.addEventListener('abort', () => ctx.bus.removeEventListener('live', onLive));
  ctx.bus.addEventListener('booking', onBooking);
  ctx.bus.addEventListener('session', onSession);
  signal.addEventListener('abort', () => {
    ctx.bus.removeEventListener('booking', onBooking);
    ctx.bus.removeEventListener('session', onSession);
  });
  ctx.sessionKnown.then(() => !signal.aborted && loadMine());

  // ---- hold
  holdBtn.addEventListener('click', async () => {
    errorBox.textContent = '';
    const seats = [...selected.keys()];
    if (!seats.length) return;
    const passengers = seats.map((s) => ({ name: (selected.get(s) || '').trim() }));
    const missing = seats.find((s, i) => !passengers[i].name);
    if (missing) {
      errorBox.textContent = `Please enter the passenger name for seat ${missing}.`;
      document.getElementById(`pax-${missing}`)?.focus();
      return;
    }
    if (!ctx.user) {
      persist();
      toast('Log in or create an account to hold your seats.');
      ctx.navigate(`#/login?next=${encodeURIComponent(location.hash)}`);
      return;
    }
    holdBtn.disabled = true;
    holdBtn.textContent = 'Holding…';
    const action = { flight_id: flightId, seats, passengers };
    holding = new Set(seats);
    try {
      const res = await ctx.client.call('booking.hold', { ...action, request_id: holdId.for(action) }, { retry: true });
      holdId.settle();
      sessionStorage.removeItem(storeKey);
      ctx.navigate(`#/booking/${encodeURIComponent(res.booking.locator)}`);
    } catch (e) {
      // while the answer is uncertain the hold may still land: its push is not
      // someone else's
      if (!ActionId.uncertain(e)) holding = new Set();
      holdId.settle(e);
      if (signal.aborted) return;
      if (e.reason === 'seat_unavailable') {
        const gone = (e.data.seats || []).filter((s) => selected.has(s));
        for (const s of gone) map.setStatus(s, feed.seats.get(s)?.status === 'available' ? 'held' : feed.seats.get(s)?.status || 'held');
        dropTaken(gone.length ? gone : []);
        if (!gone.length) errorBox.textContent = 'Some of these seats are no longer available. Please choose again.';
      } else if (e.reason === 'unauthenticated' || e.reason === 'invalid_token') {
        ctx.forgetSession('Please log in again to hold seats.');
        persist();
        ctx.navigate(`#/login?next=${encodeURIComponent(location.hash)}`);
      } else {
        errorBox.textContent = friendlyError(e);
      }
      renderSelection();
    }
  });
}

function countsOf(seats) {
  const out = new Map();
  for (const s of seats) {
    const c = out.get(s.cabin) || { available: 0 };
    if (s.status === 'available') c.available += 1;
    out.set(s.cabin, c);
  }
  return out;
}

export function friendlyError(e) {
  switch (e.reason) {
    case 'invalid_params':
      return e.message && e.message !== 'Request failed' ? `Please check your details: ${e.message}` : 'Please check your details.';
    case 'rate_limited':
      return 'Too many requests. Please wait a moment and try again.';
    case 'disconnected':
    case 'timeout':
      return 'We lost the connection to Jetway. Please try again in a moment.';
    case 'invalid_state':
      return 'This booking can no longer be changed this way.';
    case 'hold_expired':
      return 'This hold has expired. Please choose your seats again.';
    case 'not_found':
      return 'We could not find that.';
    default:
      return e.message || 'Something went wrong. Please try again.';
  }
}
