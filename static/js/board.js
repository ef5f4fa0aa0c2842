// Jetway departures board: /board.html?airport=LHR[&hours=N]
// Full-screen, read-only, no login. Watches the airport with flights.watch, applies
// every flight.changed, drops flights an hour after they left, and on a reconnect
// watches again (the reply replaces the list), like the seat-map display.

import { Jetway } from './jetway.js';
import { h, clear, byId as $, runClock, followConnection } from './ui.js';
import { formatLocalShort, departureOf, flightRemark } from './format.js';

const KEEP_AFTER_MS = 3600 * 1000;
const params = new URLSearchParams(location.search);
const airport = (params.get('airport') || 'LHR').toUpperCase();
const hours = Number(params.get('hours')) || undefined;

const client = new Jetway({ maxDelay: 10000 });
const flights = new Map(); // flight_id -> Flight
let cities = new Map();
let zone = 'UTC';

// ---- clock & connection (as on the display) -------------------------------------

const tickClock = runClock($('d-clock'), (now) => formatLocalShort(now, zone));

followConnection(client, $('d-conn'), '.txt');

// ---- the board ----------------------------------------------------------------------

// On every (re)connect: watch again; the reply is the whole window.
client.onConnect(async (c) => {
  try {
    const r = await c.call('flights.watch', hours ? { airport, hours } : { airport }, { immediate: true });
    flights.clear();
    for (const f of r.flights || []) flights.set(f.flight_id, f);
    if (r.flights?.[0]) zone = r.flights[0].from_tz;
    render();
  } catch (e) {
    if (e.reason === 'not_found' || e.reason === 'invalid_params') {
      $('b-title').textContent = `Unknown airport ${airport}`;
    } else if (e.reason !== 'disconnected') {
      // no watch, no pushes: a list left up would never change again (a flight
      // cancelled meanwhile still shown boarding). This connection is dropped, and
      // the next one (after the client's backoff) watches again.
      console.warn('flights.watch failed; reconnecting', e);
      c.ws?.close();
    }
  }
});

client.on('flight.changed', (p) => {
  const f = p.flight;
  if (!f || f.from !== airport) return;
  flights.set(f.flight_id, f);
  zone = f.from_tz || zone;
  scheduleRender();
});

let pending = false;
function scheduleRender() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    render();
  });
}

function seatsLeft(f) {
  return (f.cabins || []).reduce((n, c) => n + (c.seats_available || 0), 0);
}

function render() {
  const now = Date.now();
  for (const [id, f] of flights) if (departureOf(f) < now - KEEP_AFTER_MS) flights.delete(id);
  const list = [...flights.values()].sort((a, b) => departureOf(a) - departureOf(b) || a.number.length - b.number.length || a.number.localeCompare(b.number));
  const rows = clear($('b-rows'));
  for (const f of list) {
    const remark = flightRemark(f);
    rows.append(
      h(
        'tr',
        { 'data-flight': f.flight_id, 'data-status': f.status, class: `b-row b-${f.status}` },
        h('td', { class: 'b-time' }, formatLocalShort(f.departs_at, f.from_tz)),
        h('td', { class: 'b-number' }, f.number),
        h('td', { class: 'b-dest' }, `${cities.get(f.to) || f.to} (${f.to})`),
        h('td', { class: 'b-remark', 'data-testid': 'remark' }, remark || 'ON TIME'),
        h('td', { class: 'b-seats num', 'data-testid': 'seats-left' }, f.status === 'departed' || f.status === 'cancelled' ? '' : String(seatsLeft(f))),
      ),
    );
  }
  $('b-empty').hidden = list.length > 0;
  $('b-zone').textContent = `${cities.get(airport) || airport} · times in ${zone}`;
  $('d-updated').textContent = `Updated ${new Date().toISOString().slice(11, 19)} UTC`;
  tickClock();
}

$('b-title').textContent = `Departures · ${airport}`;
document.title = `Departures ${airport} · Jetway`;
client.connect();
client
  .call('flights.airports', {})
  .then((r) => {
    cities = new Map((r.airports || []).map((a) => [a.code, a.city]));
    // the airport's own zone, also while no flight is on the board
    zone = (r.airports || []).find((a) => a.code === airport)?.tz || zone;
    render();
  })
  .catch(() => {});
// flights leave an hour after departure even when nothing is pushed
setInterval(render, 30000);
