// Jetway airport display: /display.html?flight=ID
// Full-screen, read-only, no login. Shows the live seat map with seats left and load
// factor per cabin and reconnects on its own after network loss or server restarts.

import { Jetway } from './jetway.js';
import { deriveLayout } from './seatmap.js';
import { countSeats, PASSING, passingDelay } from './live.js';
import { cabinName, formatTime, formatLongDate, formatLocal, departureText } from './format.js';
import { h, byId as $, runClock, followViewers, followConnection } from './ui.js';

const params = new URLSearchParams(location.search);
const flightId = params.get('flight');

const client = new Jetway({ maxDelay: 10000 });
const watcher = client.seats;

// ---- clock & connection ------------------------------------------------------------

// the local time of the departure airport once the flight is known, UTC until then
let clockZone = null;
const tickClock = runClock($('d-clock'), (now) => (clockZone ? formatLocal(now, clockZone) : `${formatTime(now)} UTC`));

followConnection(client, $('d-conn'), '.txt');

client.connect();

if (!flightId) chooser();
else show(flightId);

// ---- no flight given: list upcoming flights to pick from ----------------------------

async function chooser() {
  const map = $('d-map');
  $('d-flight').textContent = 'Choose a flight to display';
  const r = await client.call('flights.search', { limit: 30 });
  map.append(
    h(
      'ul',
      { class: 'd-chooser' },
      (r.flights || []).map((f) =>
        h('li', {}, h('a', { href: `?flight=${encodeURIComponent(f.flight_id)}` }, `${f.number}  ${f.from} → ${f.to}  ${formatLongDate(f.departs_at, f.from_tz)} ${formatLocal(f.departs_at, f.from_tz)}`)),
      ),
    ),
  );
}

// ---- the flight --------------------------------------------------------------------

async function show(id) {
  let r;
  try {
    r = await client.call('flights.get', { flight_id: id });
  } catch (e) {
    if (e.reason === 'disconnected' || PASSING.includes(e.reason)) {
      // an unattended screen tries again: once connected again, or (still connected:
      // a timeout, a passing refusal) after a few seconds, spread so that many
      // screens do not ask at once
      await new Promise((res) => {
        if (client.ready) {
          setTimeout(res, passingDelay(0));
          return;
        }
        const onState = (ev) => {
          if (ev.detail.ready) {
            client.removeEventListener('state', onState);
            res();
          }
        };
        client.addEventListener('state', onState);
      });
      return show(id);
    }
    $('d-flight').textContent = e.reason === 'not_found' ? `Flight ${id} not found` : `Cannot show flight: ${e.message}`;
    return;
  }
  const flight = r.flight;
  clockZone = flight.from_tz || null;
  tickClock();
  let airports = [];
  try {
    airports = (await client.call('flights.airports', {})).airports || [];
  } catch {
    /* codes only */
  }
  const city = (code) => airports.find((a) => a.code === code)?.city || code;

  const head = $('d-flight');
  head.textContent = '';
  const when = h('span', { class: 'd-when', 'data-testid': 'when' });
  const status = h('span', { class: 'd-status', 'data-testid': 'flight-status' });
  const viewers = h('span', { class: 'd-viewers', 'data-testid': 'viewers' });
  head.append(
    h('h1', { class: 'd-number' }, flight.number),
    h('span', { class: 'd-route' }, `${city(flight.from)} (${flight.from}) → ${city(flight.to)} (${flight.to})`),
    when,
    status,
    viewers,
  );
  // status, local times and estimates, redrawn on every flight.changed
  const showFlight = (f) => {
    const st = f.status || 'scheduled';
    status.className = `d-status d-status-${st}`;
    status.dataset.value = st;
    status.textContent = st.toUpperCase();
    when.textContent = `${formatLongDate(f.departs_at, f.from_tz)} · ${departureText(f)} · arrives ${formatLocal(f.estimated_arrives_at || f.arrives_at, f.to_tz)}`;
  };
  showFlight(flight);
  client.on('flight.changed', (p) => {
    if (p.flight && p.flight.flight_id === id) showFlight(p.flight);
  });
  document.title = `${flight.number} ${flight.from}→${flight.to} · Jetway live seat map`;

  const layout = r.layout && r.layout.cabins ? r.layout : deriveLayout(r.seats || []);
  const { feed } = watcher.watch(id);
  followViewers(feed, viewers);
  feed.seed(r.seats || []);
  const seats = new Map();
  for (const s of r.seats || []) seats.set(s.seat, s.status);

  const mapBox = $('d-map');
  let vertical = null;
  let cells = new Map();
  const build = () => {
    const v = window.innerHeight > window.innerWidth * 1.1;
    if (v !== vertical) {
      vertical = v;
      const current = feed.loaded ? [...feed.seats.values()] : r.seats || [];
      cells = buildMap(mapBox, layout, current, vertical);
    }
    fitMap(mapBox, layout, vertical);
  };
  build();
  const paint = (seat, st, flash) => {
    const c = cells.get(seat);
    if (!c) return;
    if (c.dataset.status !== st) {
      c.dataset.status = st;
      c.setAttribute('aria-label', `Seat ${seat}, ${st}`);
      if (flash) {
        c.classList.remove('flash');
        void c.offsetWidth; // restart the animation
        c.classList.add('flash');
      }
    }
  };
  for (const [s, st] of seats) paint(s, st, false);

  const statsBox = $('d-stats');
  const renderStats = () => {
    statsBox.textContent = '';
    const counts = feed.loaded ? feed.counts() : countSeats(r.seats || []);
    let total = 0;
    let booked = 0;
    let held = 0;
    let available = 0;
    for (const cabin of layout.cabins) {
      const c = counts.get(cabin.cabin) || { total: 0, available: 0, held: 0, booked: 0 };
      total += c.total;
      booked += c.booked;
      held += c.held;
      available += c.available;
      statsBox.append(tile(cabinName(cabin.cabin), c, cabin.cabin));
    }
    statsBox.prepend(tile('All cabins', { total, booked, held, available }, 'all'));
    $('d-updated').textContent = feed.version != null ? `Updated ${new Date().toISOString().slice(11, 19)} UTC · v${feed.version}` : '';
  };

  feed.addEventListener('snapshot', () => {
    for (const s of feed.seats.values()) paint(s.seat, s.status, false);
    renderStats();
  });
  feed.addEventListener('change', (e) => {
    for (const s of e.detail.seats) paint(s.seat, s.status, true);
    renderStats();
  });
  if (feed.loaded) for (const s of feed.seats.values()) paint(s.seat, s.status, false);
  renderStats();

  // a change missed while disconnected: read the flight again after a reconnect
  client.addEventListener('state', async (e) => {
    if (!e.detail.ready) return;
    try {
      showFlight((await client.call('flights.get', { flight_id: id })).flight);
    } catch {
      /* keep */
    }
  });

  window.addEventListener('resize', build);
  // Refit whenever the space left for the map changes (e.g. once the tiles render).
  new ResizeObserver(() => fitMap(mapBox, layout, vertical)).observe(mapBox);
}

function tile(title, c, key) {
  const lf = c.total ? Math.round((c.booked / c.total) * 100) : 0;
  const occ = c.total ? ((c.booked + c.held) / c.total) * 100 : 0;
  const share = (n) => ({ width: `${c.total ? (n / c.total) * 100 : 0}%` });
  return h(
    'div',
    { class: `d-tile d-tile-${key}`, 'data-cabin': key, title: `${Math.round(occ)}% occupied` },
    h('h2', { class: 'd-tile-title' }, title),
    h(
      'div',
      { class: 'd-left', 'data-testid': 'seats-left', 'data-value': String(c.available) },
      h('span', { class: 'd-big' }, String(c.available)),
      h('span', { class: 'd-unit' }, c.available === 1 ? 'seat left' : 'seats left'),
    ),
    h(
      'div',
      { class: 'd-bar', role: 'img', 'aria-label': `${lf}% booked, ${c.held} on hold` },
      h('span', { class: 'd-bar-booked', style: share(c.booked) }),
      h('span', { class: 'd-bar-held', style: share(c.held) }),
    ),
    h(
      'div',
      { class: 'd-lf', 'data-testid': 'load-factor', 'data-value': String(lf) },
      h('span', { class: 'd-lf-num' }, `${lf}%`),
      h('span', { class: 'd-lf-label' }, ` load factor · ${c.booked} booked · ${c.held} on hold · ${c.total} seats`),
    ),
  );
}

// Seat map for a screen: in landscape the nose is on the left, rows run left to right
// and seat letters top to bottom; in portrait it is the usual top-down map. Aisles are
// gaps. Each cabin is its own block.
function buildMap(box, layout, seats, vertical) {
  box.textContent = '';
  box.classList.toggle('vertical', vertical);
  const meta = new Map(seats.map((s) => [s.seat, s]));
  const exits = new Set(layout.exit_rows || []);
  const cells = new Map();
  const plane = h('div', { class: 'd-plane' });
  // place(node, along, across): `along` is the position along the fuselage (row
  // index), `across` the position across it (letter index); 1-based grid lines.
  const place = (node, along, across) => {
    node.style.gridColumn = String(vertical ? across : along);
    node.style.gridRow = String(vertical ? along : across);
  };
  for (const cabin of layout.cabins) {
    const block = h('div', { class: `d-cabin d-cabin-${cabin.cabin}` });
    block.append(h('div', { class: 'd-cabin-title' }, cabinName(cabin.cabin)));
    const grid = h('div', { class: 'd-grid' });
    const letters = [...cabin.columns];
    // Seen from above with the nose on the left, seat A (port side) is at the bottom.
    const across = (i) => (vertical ? i + 2 : letters.length - i + 1);
    const ordered = vertical ? letters : [...letters].reverse();
    const acrossTpl = `auto ${ordered.map((c) => (c === ' ' ? 'calc(var(--cell) * 0.55)' : 'var(--cell)')).join(' ')} auto`;
    const alongTpl = `auto repeat(${cabin.rows.length}, var(--cell))`;
    grid.style.gridTemplateRows = vertical ? alongTpl : acrossTpl;
    grid.style.gridTemplateColumns = vertical ? acrossTpl : alongTpl;
    letters.forEach((c, i) => {
      if (c === ' ') return;
      const l = h('span', { class: 'd-letter' }, c);
      place(l, 1, across(i));
      grid.append(l);
    });
    cabin.rows.forEach((row, j) => {
      const along = j + 2;
      const num = h('span', { class: `d-rownum${exits.has(row) ? ' exit' : ''}` }, String(row));
      place(num, along, 1);
      grid.append(num);
      if (exits.has(row)) {
        const ex = h('span', { class: 'd-exit' }, 'EXIT');
        place(ex, along, letters.length + 2);
        grid.append(ex);
      }
      letters.forEach((c, i) => {
        if (c === ' ') return;
        const id = `${row}${c}`;
        const s = meta.get(id);
        if (!s) return;
        const cell = h('span', { class: 'd-seat', 'data-seat': id, 'data-status': s.status, role: 'img', 'aria-label': `Seat ${id}, ${s.status}` }, h('i'));
        place(cell, along, across(i));
        grid.append(cell);
        cells.set(id, cell);
      });
    });
    block.append(grid);
    plane.append(block);
  }
  box.append(plane);
  return cells;
}

function fitMap(box, layout, vertical) {
  const rows = layout.cabins.reduce((n, c) => n + c.rows.length, 0);
  const maxLetters = Math.max(...layout.cabins.map((c) => [...c.columns].reduce((n, ch) => n + (ch === ' ' ? 0.55 : 1), 0)));
  const rect = box.getBoundingClientRect();
  const gaps = layout.cabins.length * 3.2 + 2.6; // titles, labels, padding, cabin gaps (in cells)
  const along = rows * 1.12 + gaps;
  const across = maxLetters * 1.12 + 3.2;
  const byWidth = (rect.width - 24) / (vertical ? across : along);
  const byHeight = (rect.height - 24) / (vertical ? along : across);
  const cell = Math.max(12, Math.floor(Math.min(byWidth, byHeight, 64)));
  document.documentElement.style.setProperty('--cell', `${cell}px`);
}
