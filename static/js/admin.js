// Jetway airline operations dashboard: /admin.html
//
// Admin login, every flight's seats held and booked, load factor and revenue, and
// cancelling a flight with a reason. Kept live cheaply: the page watches the seat maps
// of the flights it shows (at most one page of rows, subscribing from the version the
// stats reported, so no snapshots are sent) and re-reads the stats once, debounced,
// when any of them changes; a slow poll covers the flights not on screen.

import { ActionId, Jetway, PendingRevoke, SessionResumes } from './jetway.js';
import { h, clear, byId as $, toast, statusBadge, modal, followConnection } from './ui.js';
import { formatMoney, formatDate, formatTime, formatLocal, toLocalInput, fromLocalInput, plural } from './format.js';

const TOKEN_KEY = 'jetway.admin.token';
// A token signed out of while its `auth.logout` could not be answered (offline, say):
// revoked at this tab's next connect.
const REVOKE_KEY = 'jetway.admin.revoke';
const PAGE_SIZE = 50;
const DEBOUNCE_MS = 250;
const POLL_MS = 30000;

const client = new Jetway();
const revokes = new PendingRevoke(sessionStorage, REVOKE_KEY, client.url);
const resumes = new SessionResumes();

const state = {
  user: null,
  flights: [], // stats rows, in departure order
  byId: new Map(),
  rows: new Map(), // flight_id -> <tr>
  subscribed: new Set(), // flight ids watched on the current connection
  page: 0,
  refreshTimer: null,
  pollTimer: null,
  loading: null,
  zones: new Map(), // airport code -> IANA time zone
};

/** The IANA zone of an airport (UTC until `flights.airports` answered). */
const zoneOf = (code) => state.zones.get(code);
/** "Tue 1 Dec 09:40 CET": a flight's departure in its airport's local time. */
const localDeparture = (f, iso = f.departs_at) => `${formatDate(iso, zoneOf(f.from))} ${formatLocal(iso, zoneOf(f.from))}`;

// ---- connection indicator ----------------------------------------------------------

const conn = $('conn');
followConnection(client, conn, '.conn-text', (name) => {
  $('conn-live').textContent = { live: 'Connected', reconnecting: 'Connection lost, reconnecting', connecting: '' }[name];
});
conn.addEventListener('click', () => client.reconnectNow());

// On every (re)connect: resume the admin session; subscriptions start over. A session
// that has ended meanwhile (a new admin password, a sign-out elsewhere, expiry) shows
// the sign-in form: a dashboard left up would look live and never change again.
client.onConnect(async (c, { reconnect }) => {
  state.subscribed.clear();
  revokes.flush();
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return;
  try {
    const r = await c.call('auth.resume', { token }, { immediate: true });
    resumes.succeeded();
    // signed out while the resume was on its way: not shown again
    if (sessionStorage.getItem(TOKEN_KEY) !== token) return;
    state.user = r.user;
  } catch (e) {
    const what = resumes.failed(e);
    if (what === 'offline') return; // the next connect resumes it
    if (what === 'retry') {
      // the token may well be valid (rate_limited, internal, a timeout)
      c.ws?.close();
      return;
    }
    sessionStorage.removeItem(TOKEN_KEY);
    state.user = null;
    const message = what === 'ended' ? 'Your session has ended. Sign in again.' : 'Your session could not be restored. Sign in again.';
    // after this hook: the page's calls wait for it
    if (!$('dashboard').hidden) setTimeout(() => showLogin(message), 0);
    return;
  }
  if (reconnect && state.user) scheduleRefresh(0);
});

client.on('seats.changed', (p) => {
  if (state.byId.has(p.flight_id)) scheduleRefresh();
});
client.on('flight.changed', (p) => {
  if (state.byId.has(p.flight?.flight_id)) scheduleRefresh();
});

/** Statuses a flight can still be updated or cancelled in. */
const OPEN = new Set(['scheduled', 'delayed', 'boarding']);

client.connect();
start();

async function start() {
  if (sessionStorage.getItem(TOKEN_KEY)) {
    // wait for the connect hook to resume the session
    await client.call('flights.airports').catch(() => {});
  }
  if (state.user && state.user.role === 'admin') showDashboard();
  else showLogin();
}

// ---- login -------------------------------------------------------------------------

function showLogin(message = '') {
  stopDashboard();
  $('dashboard').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message;
  renderAccount();
  $('admin-password').focus();
}

$('login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const username = $('admin-username').value.trim();
  const password = $('admin-password').value;
  const err = $('login-error');
  err.textContent = '';
  if (!username || !password) {
    err.textContent = 'Enter the username and the password.';
    return;
  }
  const button = e.submitter || $('login-form').querySelector('button');
  button.disabled = true;
  try {
    const r = await client.call('auth.login', { username, password, ...client.deviceParams(username) });
    client.rememberDevice(r);
    if (r.user.role !== 'admin') {
      await client.call('auth.logout').catch(() => {});
      err.textContent = 'This account is not an airline administrator.';
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, r.token);
    state.user = r.user;
    $('admin-password').value = '';
    showDashboard();
  } catch (ex) {
    err.textContent = ex.reason === 'bad_credentials' ? 'Wrong username or password.' : `Sign-in failed: ${ex.message}`;
  } finally {
    button.disabled = false;
  }
});

// Forgotten here at once, even offline: a shared terminal's next operator (the tab
// closed, or restored) must not be resumed as this admin. The token is revoked when
// the logout gets through, or at the next connect.
async function logout() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  revokes.add(token);
  sessionStorage.removeItem(TOKEN_KEY);
  state.user = null;
  showLogin();
  try {
    await client.call('auth.logout');
    revokes.done(token);
  } catch {
    /* revoked at the next connect (an anonymous connection's logout is refused) */
  }
}

function renderAccount() {
  const box = clear($('account'));
  if (!state.user) return;
  box.append(
    h('span', { class: 'account-name', 'data-testid': 'account-name' }, h('span', { class: 'avatar', 'aria-hidden': 'true' }, state.user.username[0].toUpperCase()), state.user.username),
    h('button', { type: 'button', class: 'btn btn-ghost btn-small', onclick: logout }, 'Sign out'),
  );
}

// ---- dashboard ---------------------------------------------------------------------

function showDashboard() {
  $('login').hidden = true;
  $('dashboard').hidden = false;
  renderAccount();
  refresh();
  clearInterval(state.pollTimer);
  state.pollTimer = setInterval(() => {
    if (document.visibilityState === 'visible') scheduleRefresh(0);
  }, POLL_MS);
}

function stopDashboard() {
  clearInterval(state.pollTimer);
  clearTimeout(state.refreshTimer);
  for (const id of state.subscribed) unsubscribe(id);
  state.subscribed.clear();
  state.flights = [];
  state.byId.clear();
  state.rows.clear();
  clear($('rows'));
}

/** One stats read soon; changes arriving meanwhile share it. */
function scheduleRefresh(delay = DEBOUNCE_MS) {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = null;
    refresh();
  }, delay);
}

async function refresh() {
  if (!state.user) return;
  if (state.loading) {
    // one read at a time; ask again once it is done
    state.loading.then(() => scheduleRefresh(0));
    return;
  }
  state.loading = (async () => {
    try {
      if (!state.zones.size) {
        const a = await client.call('flights.airports', {});
        for (const x of a.airports || []) state.zones.set(x.code, x.tz);
      }
      const r = await client.call('admin.flights.stats', {});
      state.flights = r.flights;
      state.byId = new Map(r.flights.map((f) => [f.flight_id, f]));
      render();
      $('updated').textContent = `Updated ${formatTime(new Date().toISOString())} UTC`;
    } catch (e) {
      // signed out meanwhile (the connect hook showed the form and why): nothing to add
      if (!state.user) return;
      if (e.reason === 'forbidden') {
        sessionStorage.removeItem(TOKEN_KEY);
        state.user = null;
        // anonymous callers get `forbidden` too (the contract): a session lost on
        // a reconnect lands here as well
        showLogin('Please sign in with an airline administrator account.');
      } else if (e.reason === 'unauthenticated' || e.reason === 'invalid_token') {
        sessionStorage.removeItem(TOKEN_KEY);
        state.user = null;
        showLogin('Your session has ended. Please sign in again.');
      } else if (e.reason !== 'disconnected' && e.reason !== 'timeout') {
        toast(`Could not load the statistics: ${e.message}`, 'error');
      }
    }
  })();
  await state.loading;
  state.loading = null;
}

function visibleFlights() {
  const q = $('filter').value.trim().toLowerCase();
  const all = $('show-all').checked;
  return state.flights.filter((f) => {
    // a delayed flight is upcoming until its estimate
    if (!all && Date.parse(f.estimated_departs_at || f.departs_at) <= Date.now()) return false;
    if (!q) return true;
    return [f.flight_id, f.number, f.from, f.to, `${f.from}-${f.to}`, f.departs_at.slice(0, 10)].some((s) => s.toLowerCase().includes(q));
  });
}

function render() {
  const list = visibleFlights();
  const pages = Math.max(1, Math.ceil(list.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  const shown = list.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);

  const tbody = $('rows');
  const keep = new Set(shown.map((f) => f.flight_id));
  for (const [id, tr] of state.rows) {
    if (!keep.has(id)) {
      tr.remove();
      state.rows.delete(id);
    }
  }
  // rows in order, updated in place (focus and an open dialog survive a refresh)
  let prev = null;
  for (const f of shown) {
    let tr = state.rows.get(f.flight_id);
    if (!tr) {
      tr = buildRow(f);
      state.rows.set(f.flight_id, tr);
    }
    updateRow(tr, f);
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (want !== tr) tbody.insertBefore(tr, want);
    prev = tr;
  }
  $('empty').hidden = shown.length > 0;
  $('page-info').textContent = list.length ? `${state.page * PAGE_SIZE + 1}–${state.page * PAGE_SIZE + shown.length} of ${plural(list.length, 'flight')}` : '';
  $('prev').disabled = state.page === 0;
  $('next').disabled = state.page >= pages - 1;
  renderTotals();
  syncSubscriptions(shown);
}

function buildRow(f) {
  const tr = h('tr', { 'data-flight': f.flight_id });
  tr.cells_ = {
    status: h('td', { 'data-testid': 'status' }),
    estimate: h('small', { class: 'muted', 'data-testid': 'estimate' }),
    held: h('td', { class: 'num', 'data-testid': 'held' }),
    booked: h('td', { class: 'num', 'data-testid': 'booked' }),
    load: h('td', { 'data-testid': 'load' }),
    revenue: h('td', { class: 'num', 'data-testid': 'revenue' }),
    action: h('td'),
  };
  tr.append(
    h('th', { scope: 'row', class: 'flight-no' }, f.number),
    h('td', {}, `${f.from} → ${f.to}`),
    h('td', {}, h('time', { datetime: f.departs_at }, localDeparture(f)), ' ', tr.cells_.estimate),
    tr.cells_.status,
    tr.cells_.held,
    tr.cells_.booked,
    tr.cells_.load,
    tr.cells_.revenue,
    tr.cells_.action,
  );
  return tr;
}

function updateRow(tr, f) {
  const c = tr.cells_;
  tr.classList.toggle('is-cancelled', f.status === 'cancelled');
  if (c.status.dataset.value !== f.status) {
    c.status.dataset.value = f.status;
    clear(c.status).append(statusBadge(f.status));
    clear(c.action);
    if (OPEN.has(f.status)) {
      c.action.append(
        h('button', { type: 'button', class: 'btn btn-ghost btn-small', 'data-testid': 'update', 'aria-label': `Update status or times of flight ${f.number} on ${formatDate(f.departs_at)}`, onclick: () => updateFlight(f.flight_id) }, 'Update'),
        ' ',
        h('button', { type: 'button', class: 'btn btn-danger-ghost btn-small', 'aria-label': `Cancel flight ${f.number} on ${formatDate(f.departs_at)}`, onclick: () => cancelFlight(f.flight_id) }, 'Cancel flight'),
      );
    }
  }
  const est = f.estimated_departs_at && f.estimated_departs_at !== f.departs_at ? `est. ${formatLocal(f.estimated_departs_at, zoneOf(f.from))}` : '';
  setCell(c.estimate, est, est);
  setCell(c.held, f.seats_held, String(f.seats_held));
  setCell(c.booked, f.seats_booked, String(f.seats_booked));
  const pct = Math.round(f.load_factor * 1000) / 10;
  if (c.load.dataset.value !== String(f.load_factor)) {
    c.load.dataset.value = String(f.load_factor);
    clear(c.load).append(
      h(
        'div',
        { class: 'load', title: `${f.seats_held + f.seats_booked} of ${f.seats_total} seats held or booked` },
        h('span', { class: 'load-bar', 'aria-hidden': 'true' }, h('i', { style: { width: `${Math.min(100, pct)}%` } })),
        h('span', { class: 'load-text' }, `${pct}%`),
      ),
    );
  }
  setCell(c.revenue, f.revenue.amount, formatMoney(f.revenue));
}

function setCell(td, value, text) {
  if (td.dataset.value === String(value)) return;
  td.dataset.value = String(value);
  td.textContent = text;
}

function renderTotals() {
  const scheduled = state.flights.filter((f) => OPEN.has(f.status));
  const seats = scheduled.reduce((n, f) => n + f.seats_total, 0);
  const taken = scheduled.reduce((n, f) => n + f.seats_held + f.seats_booked, 0);
  const revenue = state.flights.reduce((n, f) => n + f.revenue.amount, 0);
  const cancelled = state.flights.filter((f) => f.status === 'cancelled').length;
  const tile = (label, value, id) => h('div', { class: 'admin-total', 'data-testid': id }, h('span', { class: 'stat-label' }, label), h('strong', {}, value));
  clear($('totals')).append(
    tile('Upcoming flights', String(scheduled.length), 'total-flights'),
    tile('Load factor (upcoming)', seats ? `${Math.round((taken / seats) * 1000) / 10}%` : '–', 'total-load'),
    tile('Revenue', formatMoney({ amount: revenue, currency: 'EUR' }), 'total-revenue'),
    tile('Cancelled', String(cancelled), 'total-cancelled'),
  );
}

/** Drops the subscription to a flight off screen; sent again after a rate_limited
 * refusal only if the flight is still off screen (else its new subscribe came after). */
function unsubscribe(id) {
  const wanted = () => !state.subscribed.has(id);
  client.call('seats.unsubscribe', { flight_id: id }, { wanted }).catch(() => {});
}

/** Watch exactly the flights on screen (a connection may watch 64). */
function syncSubscriptions(shown) {
  const want = new Set(shown.filter((f) => OPEN.has(f.status)).map((f) => f.flight_id));
  for (const id of [...state.subscribed]) {
    if (!want.has(id)) {
      state.subscribed.delete(id);
      unsubscribe(id);
    }
  }
  for (const id of want) {
    if (state.subscribed.has(id)) continue;
    state.subscribed.add(id);
    const since = state.byId.get(id)?.version;
    client
      .call('seats.subscribe', since === undefined ? { flight_id: id } : { flight_id: id, since }, {
        wanted: () => state.subscribed.has(id),
      })
      .then((r) => {
        // off screen meanwhile (a subscribe refused rate_limited is sent again after
        // the unsubscribe): dropped again, not left counting against the 64
        if (!state.subscribed.has(id)) {
          unsubscribe(id);
          return;
        }
        // changes between the stats and the subscription
        if (r.version !== since) scheduleRefresh();
      })
      .catch(() => state.subscribed.delete(id));
  }
}

for (const id of ['filter', 'show-all']) {
  $(id).addEventListener('input', () => {
    state.page = 0;
    render();
  });
}
$('prev').addEventListener('click', () => {
  state.page = Math.max(0, state.page - 1);
  render();
});
$('next').addEventListener('click', () => {
  state.page += 1;
  render();
});

// ---- cancelling a flight -----------------------------------------------------------

function reasonDialog(f) {
  const input = h('textarea', { id: 'cancel-reason', rows: 3, maxlength: 200, required: true });
  const error = h('p', { class: 'form-error', role: 'alert' });
  const requireReason = (e) => {
    if (!input.value.trim()) {
      e.preventDefault();
      error.textContent = 'Give a reason.';
      input.focus();
    }
  };
  const shown = modal(
    (dlg) =>
      h(
        'form',
        { method: 'dialog', novalidate: true, onsubmit: requireReason },
        h('h2', { id: 'dlg-title' }, `Cancel ${f.number}?`),
        h(
          'div',
          { class: 'dialog-body' },
          h('p', {}, `${f.from} → ${f.to}, ${localDeparture(f)}. `, `${plural(f.seats_booked, 'booked seat')} will be refunded in full and ${plural(f.seats_held, 'held seat')} released. This cannot be undone.`),
          h('div', { class: 'field' }, h('label', { for: 'cancel-reason' }, 'Reason (shown to passengers)'), input),
          error,
        ),
        h(
          'div',
          { class: 'dialog-actions' },
          h('button', { type: 'button', class: 'btn btn-ghost', onclick: () => dlg.close('no') }, 'Keep flight'),
          h('button', { type: 'submit', class: 'btn btn-danger', value: 'yes' }, 'Cancel flight'),
        ),
      ),
    (value) => (value === 'yes' ? input.value.trim() : null),
  );
  input.focus();
  return shown;
}

async function cancelFlight(id) {
  const f = state.byId.get(id);
  if (!f) return;
  const reason = await reasonDialog(f);
  if (reason === null) return;
  const button = state.rows.get(id)?.cells_.action.querySelector('.btn-danger-ghost');
  if (button) {
    button.disabled = true;
    button.textContent = 'Cancelling…';
  }
  try {
    const r = await client.call('admin.flights.cancel', { flight_id: id, reason }, { timeout: 120000 });
    toast(`${f.number} cancelled: ${plural(r.refunded, 'booking')} refunded, ${plural(r.released, 'hold')} released.`, 'success');
  } catch (e) {
    if (ActionId.uncertain(e)) {
      // the cancellation may well be on disk, its refunds going on: the row's status
      // (read again below) says; a second cancel would only be refused
      toast(`No answer yet about cancelling ${f.number}: its status below shows whether it is cancelled.`, 'warn');
    } else {
      toast(`Could not cancel ${f.number}: ${e.message}`, 'error');
    }
    if (button) {
      button.disabled = false;
      button.textContent = 'Cancel flight';
    }
  }
  scheduleRefresh(0);
}

// ---- updating a flight's status or times ---------------------------------------------

function updateDialog(f) {
  const tz = zoneOf(f.from);
  const initial = toLocalInput(f.estimated_departs_at || f.departs_at, tz);
  const dep = h('input', { id: 'upd-dep', type: 'datetime-local', value: initial });
  const status = h(
    'select',
    { id: 'upd-status' },
    h('option', { value: '' }, 'No change'),
    f.status !== 'boarding' ? h('option', { value: 'boarding' }, 'Boarding') : null,
    f.status === 'boarding' ? h('option', { value: 'departed' }, 'Departed') : null,
  );
  const reason = h('input', { id: 'upd-reason', maxlength: 200, placeholder: 'e.g. late inbound aircraft' });
  const params = () => {
    const p = { flight_id: f.flight_id };
    const est = dep.value !== initial && fromLocalInput(dep.value, tz);
    if (est) p.estimated_departs_at = est;
    if (status.value) p.status = status.value;
    if (reason.value.trim()) p.reason = reason.value.trim();
    return p;
  };
  const shown = modal(
    (dlg) =>
      h(
        'form',
        { method: 'dialog' },
        h('h2', { id: 'dlg-title' }, `Update ${f.number}`),
        h(
          'div',
          { class: 'dialog-body' },
          h('p', {}, `${f.from} → ${f.to}, scheduled ${localDeparture(f)}. A later estimate makes it delayed; the schedule again makes it on time.`),
          h('div', { class: 'field' }, h('label', { for: 'upd-dep' }, `Estimated departure (local time, ${tz || 'UTC'})`), dep),
          h('div', { class: 'field' }, h('label', { for: 'upd-status' }, 'Status'), status),
          h('div', { class: 'field' }, h('label', { for: 'upd-reason' }, 'Reason (shown to passengers, optional)'), reason),
        ),
        h(
          'div',
          { class: 'dialog-actions' },
          h('button', { type: 'button', class: 'btn btn-ghost', onclick: () => dlg.close('no') }, 'Close'),
          h('button', { type: 'submit', class: 'btn btn-primary', value: 'yes', 'data-testid': 'update-submit' }, 'Update flight'),
        ),
      ),
    (value) => (value === 'yes' ? params() : null),
  );
  dep.focus();
  return shown;
}

async function updateFlight(id) {
  const f = state.byId.get(id);
  if (!f) return;
  const params = await updateDialog(f);
  if (!params) return;
  if (!params.estimated_departs_at && !params.status) {
    toast('Nothing to update: change the estimate or the status.', 'info');
    return;
  }
  try {
    const r = await client.call('admin.flights.update', params);
    toast(`${f.number} is now ${r.flight.status}.`, 'success');
  } catch (e) {
    toast(`Could not update ${f.number}: ${e.message}`, 'error');
  }
  scheduleRefresh(0);
}
