import { h, clear, statusBadge } from '../ui.js';
import { formatMoney, formatDate, formatDuration, todayIso, cabinName, plural, formatLongDate, formatLocal, isBookable } from '../format.js';

const MAX_LIVE = 20;

export async function searchView(ctx, el, { query, signal }) {
  const from = query.get('from') || '';
  const to = query.get('to') || '';
  const date = query.get('date') || '';
  const searched = query.has('from') || query.has('to') || query.has('date');

  const airports = await ctx.loadAirports();
  if (signal.aborted) return;

  const option = (a, sel) => h('option', { value: a.code, selected: a.code === sel }, `${a.city} (${a.code})${a.name && a.name !== a.city ? ` · ${a.name}` : ''}`);
  const fromSel = h('select', { id: 'search-from', name: 'from' }, h('option', { value: '' }, 'Any airport'), airports.map((a) => option(a, from)));
  const toSel = h('select', { id: 'search-to', name: 'to' }, h('option', { value: '' }, 'Any airport'), airports.map((a) => option(a, to)));
  const dateIn = h('input', { id: 'search-date', name: 'date', type: 'date', min: todayIso(), value: date || todayIso() });
  const swap = h(
    'button',
    {
      type: 'button',
      class: 'swap',
      'aria-label': 'Swap origin and destination',
      title: 'Swap',
      onclick: () => {
        const v = fromSel.value;
        fromSel.value = toSel.value;
        toSel.value = v;
      },
    },
    '⇄',
  );
  const form = h(
    'form',
    { class: 'search-form', role: 'search', 'aria-label': 'Search flights' },
    h('div', { class: 'field' }, h('label', { for: 'search-from' }, 'From'), fromSel),
    swap,
    h('div', { class: 'field' }, h('label', { for: 'search-to' }, 'To'), toSel),
    h('div', { class: 'field field-date' }, h('label', { for: 'search-date' }, 'Date'), dateIn),
    h('button', { type: 'submit', class: 'btn btn-primary btn-search' }, 'Search flights'),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    q.set('from', fromSel.value);
    q.set('to', toSel.value);
    q.set('date', dateIn.value);
    ctx.navigate(`#/search?${q}`);
  });

  const results = h('section', { class: 'results', 'aria-live': 'polite', 'aria-busy': 'true' }, h('p', { class: 'muted' }, 'Searching…'));
  el.append(
    h(
      'section',
      { class: 'hero' },
      h('div', { class: 'hero-text' }, h('h1', {}, 'Where to next?'), h('p', {}, 'Live seat maps, instant holds and clear refund rules.')),
      h('div', { class: 'card search-card' }, form),
    ),
    results,
  );

  const params = { limit: searched ? 50 : 12 };
  if (from) params.from = from;
  if (to) params.to = to;
  if (searched && date) params.date = date;
  const r = await ctx.client.call('flights.search', params);
  if (signal.aborted) return;
  const flights = r.flights || [];
  clear(results);
  results.setAttribute('aria-busy', 'false');

  const heading = searched
    ? `${from ? ctx.cityOf(from) : 'Anywhere'} → ${to ? ctx.cityOf(to) : 'anywhere'}${date ? `, ${formatLongDate(`${date}T12:00:00Z`)}` : ''}`
    : 'Upcoming departures';
  results.append(
    h('div', { class: 'results-head' }, h('h2', {}, heading), h('p', { class: 'muted', 'data-testid': 'result-count' }, plural(flights.length, 'flight'))),
  );
  if (!flights.length) {
    results.append(h('div', { class: 'card empty' }, h('p', {}, 'No flights match this search.'), h('p', { class: 'muted' }, 'Try another date or airport.')));
    return;
  }
  const list = h('ol', { class: 'flight-list' });
  results.append(list);
  const releases = [];
  signal.addEventListener('abort', () => releases.forEach((f) => f()));

  flights.forEach((f, idx) => {
    const counters = new Map();
    const cabins = h(
      'div',
      { class: 'fc-cabins' },
      (f.cabins || []).map((c) => {
        const left = h('span', { class: 'seats-left', 'data-cabin': c.cabin }, '');
        counters.set(c.cabin, left);
        setLeft(left, c.seats_available);
        return h('div', { class: `fare fare-${c.cabin}` }, h('span', { class: 'fare-cabin' }, cabinName(c.cabin)), h('span', { class: 'fare-price' }, formatMoney(c.fare)), left);
      }),
    );
    const bookable = isBookable(f);
    const card = h(
      'li',
      { class: 'card flight-card', 'data-flight-id': f.flight_id },
      h(
        'div',
        { class: 'fc-main' },
        h(
          'div',
          { class: 'fc-route' },
          h('div', { class: 'fc-end' }, h('strong', { class: 'fc-time' }, formatLocal(f.departs_at, f.from_tz)), h('span', { class: 'fc-code' }, f.from), h('span', { class: 'fc-city' }, ctx.cityOf(f.from))),
          h('div', { class: 'fc-line', 'aria-hidden': 'true' }, h('span', {}, formatDuration(f.departs_at, f.arrives_at)), h('i')),
          h('div', { class: 'fc-end' }, h('strong', { class: 'fc-time' }, formatLocal(f.arrives_at, f.to_tz)), h('span', { class: 'fc-code' }, f.to), h('span', { class: 'fc-city' }, ctx.cityOf(f.to))),
        ),
        h('p', { class: 'fc-meta' }, h('span', { class: 'fc-number' }, f.number), ` · ${formatDate(f.departs_at, f.from_tz)} · ${f.aircraft || ''} · ${formatDuration(f.departs_at, f.arrives_at)}`, f.status === 'scheduled' ? null : [' ', statusBadge(f.status)]),
      ),
      cabins,
      h(
        'div',
        { class: 'fc-action' },
        bookable
          ? h('a', { class: 'btn btn-primary', href: `#/flight/${encodeURIComponent(f.flight_id)}`, 'aria-label': `Choose seats on ${f.number} ${f.from} to ${f.to}, ${formatDate(f.departs_at, f.from_tz)} ${formatLocal(f.departs_at, f.from_tz)}` }, 'Choose seats')
          : h('span', { class: 'muted' }, 'Not bookable'),
      ),
    );
    list.append(card);
    if (idx < MAX_LIVE && bookable) {
      const { feed, release } = ctx.watcher.watch(f.flight_id);
      releases.push(release);
      const update = () => {
        for (const [cabin, n] of feed.cabins) if (counters.has(cabin)) setLeft(counters.get(cabin), n);
      };
      feed.addEventListener('snapshot', update);
      feed.addEventListener('change', update);
      if (feed.loaded) update();
    }
  });
}

function setLeft(el, n) {
  el.textContent = n === 0 ? 'Sold out' : `${plural(n, 'seat')} left`;
  el.classList.toggle('low', n > 0 && n <= 5);
  el.classList.toggle('none', n === 0);
}
