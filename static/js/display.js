// Jetway airport display: /display.html?flight=ID
// Full-screen, read-only, no login. Shows the live seat map with seats left and load
// factor per cabin and reconnects on its own after network loss or server restarts.

import { Jetway } from './jetway.js';
import { deriveLayout } from './seatmap.js';
import { cabinName, formatTime, formatLongDate, formatLocal, departureText } from './format.js';
import { followViewers } from './ui.js';

const params = new URLSearchParams(location.search);
const flightId = params.get('flight');

const client = new Jetway({ maxDelay: 10000 });
const watcher = client.seats;

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

// ---- clock & connection ------------------------------------------------------------

const clock = $('d-clock');
const tickClock = () => {
  const d = new Date();
  clock.textContent = `${String(d.getUTCHours()).padStart(2, '0')}:${String(d.getUTCMinutes()).padStart(2, '0')} UTC`;
  clock.dateTime = d.toISOString();
};
tickClock();
setInterval(tickClock, 5000);

const conn = $('d-conn');
client.addEventListener('state', (e) => {
  const { state, ready } = e.detail;
  const live = state === 'open' && ready;
  conn.dataset.state = live ? 'live' : state === 'reconnecting' ? 'reconnecting' : 'connecting';
  conn.querySelector('.txt').textContent = live ? 'Live' : state === 'reconnecting' ? 'Reconnecting…' : 'Connecting…';
  document.body.classList.toggle('is-offline', !live && state === 'reconnecting');
});

client.connect();

if (!flightId) chooser();
else show(flightId);

// ---- no flight given: list upcoming flights to pick from ----------------------------

async function chooser() {
  const map = $('d-map');
  $('d-flight').textContent = 'Choose a flight to display';
  const r = await client.call('flights.search', { limit: 30 });
  const list = el('ul', 'd-chooser');
  for (const f of r.flights || []) {
    const li = el('li');
    const a = el('a', null, `${f.number}  ${f.from} → ${f.to}  ${formatLongDate(f.departs_at)} ${formatTime(f.departs_at)}`);
    a.href = `?flight=${encodeURIComponent(f.flight_id)}`;
    li.append(a);
    list.append(li);
  }
  map.append(list);
}

// ---- the flight --------------------------------------------------------------------

async function show(id) {
  let r;
  try {
    r = await client.call('flights.get', { flight_id: id });
  } catch (e) {
    if (e.reason === 'disconnected' || e.reason === 'timeout') {
      // Retry once we are connected again.
      await new Promise((res) => {
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
  let airports = [];
  try {
    airports = (await client.call('flights.airports', {})).airports || [];
  } catch {
    /* codes only */
  }
  const city = (code) => airports.find((a) => a.code === code)?.city || code;

  const head = $('d-flight');
  head.textContent = '';
  const when = el('span', 'd-when');
  when.dataset.testid = 'when';
  const status = el('span', 'd-status');
  status.dataset.testid = 'flight-status';
  const viewers = el('span', 'd-viewers');
  viewers.dataset.testid = 'viewers';
  head.append(
    el('h1', 'd-number', flight.number),
    el('span', 'd-route', `${city(flight.from)} (${flight.from}) → ${city(flight.to)} (${flight.to})`),
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
    when.textContent = `${formatLongDate(f.departs_at)} · ${departureText(f)} · arrives ${formatLocal(f.estimated_arrives_at || f.arrives_at, f.to_tz)}`;
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
    const counts = feed.loaded ? feed.counts() : countsFrom(r.seats || []);
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

function countsFrom(seats) {
  const out = new Map();
  for (const s of seats) {
    const c = out.get(s.cabin) || { total: 0, available: 0, held: 0, booked: 0 };
    c.total += 1;
    c[s.status] = (c[s.status] || 0) + 1;
    out.set(s.cabin, c);
  }
  return out;
}

function tile(title, c, key) {
  const t = el('div', `d-tile d-tile-${key}`);
  t.dataset.cabin = key;
  const lf = c.total ? Math.round((c.booked / c.total) * 100) : 0;
  const occ = c.total ? ((c.booked + c.held) / c.total) * 100 : 0;
  t.append(el('h2', 'd-tile-title', title));
  const left = el('div', 'd-left');
  left.append(el('span', 'd-big', String(c.available)), el('span', 'd-unit', c.available === 1 ? 'seat left' : 'seats left'));
  left.dataset.testid = 'seats-left';
  left.dataset.value = String(c.available);
  const bar = el('div', 'd-bar');
  bar.setAttribute('role', 'img');
  bar.setAttribute('aria-label', `${lf}% booked, ${c.held} on hold`);
  const b1 = el('span', 'd-bar-booked');
  b1.style.width = `${c.total ? (c.booked / c.total) * 100 : 0}%`;
  const b2 = el('span', 'd-bar-held');
  b2.style.width = `${c.total ? (c.held / c.total) * 100 : 0}%`;
  bar.append(b1, b2);
  const lfEl = el('div', 'd-lf');
  lfEl.dataset.testid = 'load-factor';
  lfEl.dataset.value = String(lf);
  lfEl.append(el('span', 'd-lf-num', `${lf}%`), el('span', 'd-lf-label', ` load factor · ${c.booked} booked · ${c.held} on hold · ${c.total} seats`));
  t.append(left, bar, lfEl);
  t.title = `${Math.round(occ)}% occupied`;
  return t;
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
  const plane = el('div', 'd-plane');
  // place(node, along, across): `along` is the position along the fuselage (row
  // index), `across` the position across it (letter index); 1-based grid lines.
  const place = (node, along, across) => {
    node.style.gridColumn = String(vertical ? across : along);
    node.style.gridRow = String(vertical ? along : across);
  };
  for (const cabin of layout.cabins) {
    const block = el('div', `d-cabin d-cabin-${cabin.cabin}`);
    block.append(el('div', 'd-cabin-title', cabinName(cabin.cabin)));
    const grid = el('div', 'd-grid');
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
      const l = el('span', 'd-letter', c);
      place(l, 1, across(i));
      grid.append(l);
    });
    cabin.rows.forEach((row, j) => {
      const along = j + 2;
      const num = el('span', `d-rownum${exits.has(row) ? ' exit' : ''}`, String(row));
      place(num, along, 1);
      grid.append(num);
      if (exits.has(row)) {
        const ex = el('span', 'd-exit', 'EXIT');
        place(ex, along, letters.length + 2);
        grid.append(ex);
      }
      letters.forEach((c, i) => {
        if (c === ' ') return;
        const id = `${row}${c}`;
        const s = meta.get(id);
        if (!s) return;
        const cell = el('span', 'd-seat');
        cell.dataset.seat = id;
        cell.dataset.status = s.status;
        cell.setAttribute('role', 'img');
        cell.setAttribute('aria-label', `Seat ${id}, ${s.status}`);
        cell.append(el('i'));
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
