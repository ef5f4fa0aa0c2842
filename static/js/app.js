// Jetway passenger app: bootstrap, session, connection indicator and routing.

import { Jetway, PendingRevoke, SessionResumes } from './jetway.js';
import { h, clear, toast } from './ui.js';
import { departureText } from './format.js';
import { searchView } from './views/search.js';
import { flightView } from './views/flight.js';
import { bookingView } from './views/booking.js';
import { tripsView } from './views/trips.js';
import { authView } from './views/auth.js';

const TOKEN_KEY = 'jetway.token';
// A token logged out locally whose `auth.logout` has not been answered yet (sent while
// offline, say): revoked at this browser's next connect, whichever tab makes it.
const REVOKE_KEY = 'jetway.revoke';

const client = new Jetway();
const revokes = new PendingRevoke(localStorage, REVOKE_KEY, client.url);
const watcher = client.seats;
const bus = new EventTarget();

let resolveSessionKnown;
// The token this tab logged in or resumed with.
let sessionToken = null;

const ctx = {
  client,
  watcher,
  bus,
  user: null,
  airports: null,
  sessionKnown: new Promise((r) => {
    resolveSessionKnown = r;
  }),

  navigate(hash, { replace = false } = {}) {
    if (location.hash === hash) route();
    else if (replace) {
      history.replaceState(null, '', hash);
      route();
    } else location.hash = hash;
  },

  setSession(result) {
    sessionToken = result.token;
    localStorage.setItem(TOKEN_KEY, result.token);
    ctx.user = result.user;
    renderAccount();
    bus.dispatchEvent(new CustomEvent('session', { detail: ctx.user }));
  },

  forgetSession(message) {
    // only this tab's own token: another tab may have logged in meanwhile (this one
    // reloads on that, but a call of its own may fail first)
    if (localStorage.getItem(TOKEN_KEY) === sessionToken) localStorage.removeItem(TOKEN_KEY);
    sessionToken = null;
    // seats and passenger names picked on a flight page: the next user of this tab
    // must not find them filled in
    for (const k of Object.keys(sessionStorage)) {
      if (k.startsWith('jetway.selection.')) sessionStorage.removeItem(k);
    }
    ctx.user = null;
    renderAccount();
    bus.dispatchEvent(new CustomEvent('session', { detail: null }));
    if (message) toast(message, 'info');
  },

  async logout() {
    // forgotten here at once: a logout sent while offline waits for the connection,
    // and whoever uses this browser next (the tab closed meanwhile) must not be
    // resumed as this user; the server revokes the token when the call gets through,
    // or at the next connect
    const token = sessionToken;
    revokes.add(token);
    ctx.forgetSession();
    toast('You have been logged out.');
    ctx.navigate('#/');
    try {
      await client.call('auth.logout', {});
      revokes.done(token);
    } catch {
      /* revoked at the next connect (an anonymous connection's logout is refused) */
    }
  },

  /** For views that need a user: waits for the session, or sends to the login page. */
  async requireUser() {
    if (!ctx.user && localStorage.getItem(TOKEN_KEY)) await ctx.sessionKnown;
    if (ctx.user) return ctx.user;
    ctx.navigate(`#/login?next=${encodeURIComponent(location.hash || '#/')}`, { replace: true });
    return null;
  },

  async loadAirports() {
    if (ctx.airports) return ctx.airports;
    try {
      const r = await client.call('flights.airports', {});
      ctx.airports = r.airports || [];
    } catch (e) {
      if (e.reason === 'disconnected') throw e;
      // Fallback: learn airports from upcoming flights.
      const r = await client.call('flights.search', { limit: 200 });
      const codes = new Set();
      for (const f of r.flights || []) codes.add(f.from).add(f.to);
      ctx.airports = [...codes].sort().map((code) => ({ code, city: code, name: code }));
    }
    return ctx.airports;
  },

  airportLabel(code) {
    const a = (ctx.airports || []).find((x) => x.code === code);
    return a ? `${a.city} (${code})` : code;
  },

  cityOf(code) {
    const a = (ctx.airports || []).find((x) => x.code === code);
    return a ? a.city : code;
  },
};

// ---- session resume on every (re)connect -----------------------------------------

// A resume refused for a passing reason drops the connection so the next one tries
// again, up to a few times in a row; then the session is given up on (log in again).
const resumes = new SessionResumes();

client.onConnect(async (c) => {
  revokes.flush();
  const token = localStorage.getItem(TOKEN_KEY);
  sessionToken = token;
  if (!token) {
    resolveSessionKnown();
    return;
  }
  try {
    const r = await c.call('auth.resume', { token }, { immediate: true });
    resumes.succeeded();
    // logged out (or in as someone else) while the resume was on its way: this
    // connection's session is ended by that logout, not shown again
    if (localStorage.getItem(TOKEN_KEY) === token) ctx.setSession(r);
  } catch (e) {
    const what = resumes.failed(e);
    if (what === 'ended') {
      ctx.forgetSession('Your session has ended. Please log in again.');
      if (document.querySelector('[data-requires-login]')) {
        ctx.navigate(`#/login?next=${encodeURIComponent(location.hash || '#/')}`, { replace: true });
      }
    } else if (what === 'offline') {
      return; // try again on the next connect
    } else if (what === 'retry') {
      // the token may well be valid (rate_limited, internal, a timeout): this
      // connection is dropped and the next one resumes it, rather than go on
      // anonymous under a page that shows the user logged in
      console.warn('auth.resume failed; reconnecting', e);
      c.ws?.close();
      return;
    } else {
      ctx.forgetSession('We could not restore your session. Please log in again.');
    }
  }
  resolveSessionKnown();
});

// Another tab logged out, or logged in as someone else (the token is shared by every
// tab): this tab may be showing the old account's bookings, and its next reconnect
// would resume as the new one, so it starts over. (Writing the same token again, as
// every resume does, fires no event.)
window.addEventListener('storage', (e) => {
  if (e.storageArea === localStorage && (e.key === TOKEN_KEY || e.key === null)) location.reload();
});

client.on('booking.updated', (p) => {
  const b = p.booking;
  if (!b) return;
  bus.dispatchEvent(new CustomEvent('booking', { detail: b }));
  if (b.status === 'expired') toast(`Your hold ${b.locator} has expired and its seats were released.`, 'warn');
});

// A flight's status or times changed (it is on screen, or the user has a booking on it).
client.on('flight.changed', (p) => {
  const f = p.flight;
  if (!f) return;
  bus.dispatchEvent(new CustomEvent('flight', { detail: p }));
  const what = { delayed: `is delayed: ${departureText(f)}`, boarding: 'is boarding', departed: 'has departed', cancelled: 'has been cancelled', scheduled: `is on time: ${departureText(f)}` }[f.status] || f.status;
  toast(`Flight ${f.number} ${what}${p.reason ? ` (${p.reason})` : ''}.`, f.status === 'cancelled' || f.status === 'delayed' ? 'warn' : 'info');
  // views that show bookings read them again, with the flight's new times
  const [name] = parseHash().parts;
  if (name === 'booking' || name === 'trips') route();
});
for (const m of ['waitlist.offered', 'waitlist.updated']) {
  client.on(m, (p) => {
    if (!p || !p.entry) return;
    bus.dispatchEvent(new CustomEvent(m, { detail: p }));
    if (m === 'waitlist.offered') toast(`Seats are held for you from the waitlist: pay for booking ${p.entry.locator} before the hold expires.`);
  });
}

// ---- connection indicator -----------------------------------------------------------

const connEl = document.getElementById('conn');
let connTimer = null;
client.addEventListener('state', (e) => {
  const { state, ready, retryAt } = e.detail;
  clearInterval(connTimer);
  const text = connEl.querySelector('.conn-text');
  let vis;
  if (state === 'open' && ready) {
    vis = 'live';
    text.textContent = 'Live';
    connEl.title = 'Connected: seat maps and bookings update live';
  } else if (state === 'reconnecting' && retryAt) {
    vis = 'reconnecting';
    const tick = () => {
      const s = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
      text.textContent = s > 0 ? `Offline · retrying in ${s}s` : 'Reconnecting…';
    };
    tick();
    connTimer = setInterval(tick, 500);
    connEl.title = 'Connection lost. Click to retry now.';
  } else {
    vis = state === 'closed' ? 'offline' : 'connecting';
    text.textContent = state === 'reconnecting' ? 'Reconnecting…' : 'Connecting…';
  }
  if (connEl.dataset.state !== vis) {
    const said = { live: 'Connected. Updates are live.', reconnecting: 'Connection lost. Reconnecting automatically.', offline: 'Offline.', connecting: 'Connecting.' }[vis];
    document.getElementById('conn-live').textContent = said;
  }
  connEl.dataset.state = vis;
  document.body.classList.toggle('is-offline', vis === 'reconnecting' || vis === 'offline');
  if (vis === 'live') bus.dispatchEvent(new CustomEvent('live'));
});
connEl.addEventListener('click', () => client.reconnectNow());

// ---- account area ---------------------------------------------------------------------

function renderAccount() {
  const el = document.getElementById('account');
  clear(el);
  if (ctx.user) {
    el.append(
      h('span', { class: 'account-name', 'data-testid': 'account-name' }, h('span', { class: 'avatar', 'aria-hidden': 'true' }, ctx.user.username[0].toUpperCase()), h('span', { class: 'account-username' }, ctx.user.username)),
      h('button', { type: 'button', class: 'btn btn-ghost btn-small', onclick: () => ctx.logout() }, 'Log out'),
    );
  } else {
    el.append(h('a', { class: 'btn btn-ghost btn-small', href: `#/login?next=${encodeURIComponent(location.hash || '#/')}` }, 'Log in'));
  }
}

// ---- router ---------------------------------------------------------------------------

const main = document.getElementById('main');
let current = null; // AbortController of the active view

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, qs = ''] = raw.split('?');
  let parts;
  try {
    parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  } catch {
    // a malformed escape (`%E0`): no page has such a name
    parts = ['not-found'];
  }
  return { parts, query: new URLSearchParams(qs) };
}

async function route() {
  if (current) current.abort();
  const ac = new AbortController();
  current = ac;
  const { parts, query } = parseHash();
  const [name = 'search', arg] = parts;
  let view;
  let nav = name;
  if (name === 'search' || name === '') view = (el, o) => searchView(ctx, el, o);
  else if (name === 'flight' && arg) view = (el, o) => flightView(ctx, el, { ...o, flightId: arg });
  else if (name === 'booking' && arg) view = (el, o) => bookingView(ctx, el, { ...o, locator: arg });
  else if (name === 'trips') view = (el, o) => tripsView(ctx, el, o);
  else if (name === 'login') view = (el, o) => authView(ctx, el, o);
  else {
    view = (el) => el.append(h('section', { class: 'card empty' }, h('h1', {}, 'Page not found'), h('p', {}, h('a', { href: '#/' }, 'Search flights'))));
    nav = '';
  }
  const titles = { search: 'Search flights', '': 'Search flights', flight: 'Choose seats', booking: `Booking ${arg || ''}`, trips: 'My trips', login: 'Log in' };
  document.title = `${titles[name] || 'Page not found'} · Jetway`;
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === nav) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  renderAccount();
  clear(main);
  const container = h('div', { class: `view view-${name}` });
  main.append(container);
  try {
    await view(container, { query, signal: ac.signal });
  } catch (e) {
    if (ac.signal.aborted) return;
    console.warn('view failed', e);
    clear(container).append(
      h('section', { class: 'card empty', role: 'alert' }, h('h1', {}, 'Something went wrong'), h('p', {}, e.message || String(e)), h('p', {}, h('a', { href: location.hash || '#/', onclick: () => route() }, 'Try again'))),
    );
  }
}

window.addEventListener('hashchange', () => {
  route();
  main.focus({ preventScroll: true });
  window.scrollTo(0, 0);
});

renderAccount();
client.connect();
route();

// For debugging in the console.
window.jetway = ctx;
