// Jetway client SDK: one ES module for any front end (the app, the display and the
// dashboard use it too). No dependencies; works in browsers and in Node 22+.
//
//   import { connect } from './jetway.js';
//   const jw = connect();                       // ws(s)://<this host>/ws, reconnects with backoff
//   const { flights } = await jw.searchFlights({ from: 'LHR', date: '2026-12-01' });
//   const stop = jw.subscribeSeats(flights[0].flight_id, (ev) => console.log(ev.version, ev.seats));
//
// Internals: rpc.js (JSON-RPC over one WebSocket: request/reply by id, pushes,
// reconnect with exponential backoff and full jitter, hooks run on every reconnect)
// and live.js (seat maps kept in version order, resumed with `since` so that no change
// is missed). The wire protocol is docs/protocol.md; its machine-readable form is
// GET /openrpc.json and GET /asyncapi.json.

import { RpcClient, RpcError, defaultUrl, newRequestId } from './rpc.js';
import { SeatWatcher, SeatFeed } from './live.js';

export { RpcClient, RpcError, defaultUrl, newRequestId, SeatWatcher, SeatFeed };

const DEVICE_KEY = 'jetway.device.';

/**
 * The `request_id` of a user's action (a hold, a waitlist join, a payment) that is
 * used again while the action's last answer was uncertain: a call that timed out,
 * whose connection dropped or that failed `internal` may have been done, so the same
 * action tried again must be the same request for the server to answer it once
 * (docs/protocol.md, idempotency).
 * Another action (other params) or a definite answer starts a fresh id.
 */
export class ActionId {
  /** @param {string} prefix */
  constructor(prefix) {
    this.prefix = prefix;
    this.last = null;
  }

  /** The id for an action of `params`. @param {object} params @returns {string} */
  for(params) {
    const key = JSON.stringify(params);
    if (!this.last || this.last.key !== key) this.last = { key, id: newRequestId(this.prefix) };
    return this.last.id;
  }

  /** Notes the action's answer: the id is kept only while it is uncertain. */
  settle(error) {
    if (!error || !ActionId.uncertain(error)) this.last = null;
  }

  /** Starts a fresh id for the next action, whatever the last answer. */
  forget() {
    this.last = null;
  }

  /** Whether an error leaves the action's outcome unknown: a timeout, a lost
   * connection, or `internal` (docs/protocol.md says to retry those with the same id). */
  static uncertain(error) {
    return ['timeout', 'disconnected', 'internal'].includes(error?.reason);
  }
}

/**
 * localStorage, where there is a working one (browsers; not Node, whose 25.x has an
 * empty placeholder without `--localstorage-file`, nor a sandboxed frame).
 */
function storage() {
  try {
    const s = globalThis.localStorage;
    return typeof s?.getItem === 'function' && typeof s.setItem === 'function' ? s : null;
  } catch {
    return null;
  }
}

/**
 * @typedef {{amount: number, currency: 'EUR'}} Money  Minor units (cents).
 * @typedef {'business'|'economy'} Cabin
 * @typedef {'available'|'held'|'booked'} SeatStatus
 * @typedef {{code: string, city: string, name: string}} Airport
 * @typedef {{cabin: Cabin, fare: Money, seats_total: number, seats_available: number}} CabinFares
 * @typedef {{flight_id: string, number: string, from: string, to: string, departs_at: string,
 *   arrives_at: string, aircraft: string, aircraft_name: string,
 *   status: 'scheduled'|'departed'|'cancelled', cabins: CabinFares[], cancel_reason?: string}} Flight
 * @typedef {{seat: string, cabin: Cabin, status: SeatStatus, row: number, column: string,
 *   window: boolean, aisle: boolean, exit: boolean}} Seat
 * @typedef {{cabins: {cabin: Cabin, rows: number[], columns: string}[], exit_rows: number[]}} Layout
 * @typedef {{version: number, seats: {seat: string, status: SeatStatus}[],
 *   cabins: {cabin: Cabin, seats_available: number}[]}} Change
 * @typedef {{seat: string, passenger: string, cabin: Cabin, fare: Money, ticket_number?: string,
 *   checked_in: boolean}} BookedSeat
 * @typedef {{flight_id: string, seat: string, passenger: string, sequence: number, bcbp: string}} BoardingPass
 *   `bcbp`: the 60-character IATA bar-coded boarding pass (format M, one leg).
 * @typedef {{locator: string, flight_id: string,
 *   status: 'held'|'confirmed'|'cancelled'|'expired'|'refunded', seats: BookedSeat[],
 *   total: Money, created_at: string, updated_at: string, hold_expires_at?: string,
 *   refund?: Money, cancelled_seats?: BookedSeat[], order_id?: string,
 *   flight?: {number: string, from: string, to: string, departs_at: string, arrives_at: string}}} Booking
 * @typedef {{order_id: string, locator: string, status: 'paid'|'partially_refunded'|'refunded',
 *   amount: Money, refunded: Money, created_at: string}} Order
 * @typedef {{at: string, type: string, locator?: string, [extra: string]: unknown}} HistoryEvent
 * @typedef {{token: string, expires_at: string,
 *   user: {id: number, username: string, role: 'passenger'|'admin'}, device_token?: string}} Session
 * @typedef {{flight_id: string, number: string, from: string, to: string, departs_at: string,
 *   status: string, version: number, seats_total: number, seats_held: number,
 *   seats_booked: number, load_factor: number, revenue: Money}} FlightStats
 * @typedef {{id: string, flight_id: string, cabin: Cabin, count: number, position?: number,
 *   status: 'waiting'|'offered'|'accepted'|'expired'|'left', created_at: string,
 *   locator?: string}} WaitlistEntry
 * @typedef {{type: 'snapshot'|'change', flightId: string, version: number,
 *   seats: (Seat & {previous?: SeatStatus})[], feed: SeatFeed}} SeatEvent
 *   `snapshot`: the whole map (`seats` is every seat); `change`: one version's seats.
 * @typedef {{url?: string, baseDelay?: number, maxDelay?: number, timeout?: number, stableAfter?: number}} ConnectOptions
 *   Reconnect delays in ms (exponential with full jitter, from baseDelay up to maxDelay;
 *   back to baseDelay only after a connection that stayed ready stableAfter ms) and a
 *   per-call timeout in ms.
 */

/** Calls carrying a `request_id`: retried after a reconnect with the same id. */
const IDEMPOTENT = { retry: true };

/**
 * A logout whose answer could not be known (sent while offline, say): the page forgets
 * the token at once, and the token is kept under `key` in `storage` until the server
 * has revoked it, on a connection of its own (an anonymous connection's logout is
 * refused), at the next `flush()`: whoever uses this browser next must not be resumed
 * as the user who logged out.
 */
export class PendingRevoke {
  /** @param {Storage} storage @param {string} key @param {string} url */
  constructor(storage, key, url) {
    this.storage = storage;
    this.key = key;
    this.url = url;
    this.flushing = false;
  }

  /** Keeps `token` to revoke until it is. */
  add(token) {
    if (token) this.storage.setItem(this.key, token);
  }

  /** Notes `token` revoked (unless another logout has been pending since). */
  done(token) {
    if (this.storage.getItem(this.key) === token) this.storage.removeItem(this.key);
  }

  /** Revokes the pending token, if any, on a throwaway connection. */
  async flush() {
    const token = this.storage.getItem(this.key);
    if (!token || this.flushing) return;
    this.flushing = true;
    const once = new RpcClient({ url: this.url });
    let done = false;
    try {
      await once.call('auth.resume', { token });
      await once.call('auth.logout', {});
      done = true;
    } catch (e) {
      done = ['invalid_token', 'unauthenticated'].includes(e.reason); // ended already
    } finally {
      once.close();
      this.flushing = false;
    }
    if (done) this.done(token);
  }
}

/**
 * What a failed `auth.resume` means for the page: `ended` (the session is over: log in
 * again), `offline` (no answer: the next connection resumes it), or `retry` (the token
 * may well be valid: rate_limited, internal, a timeout; drop this connection and resume
 * on the next).
 * @returns {'ended' | 'offline' | 'retry'}
 */
export function resumeFailure(error) {
  if (['invalid_token', 'unauthenticated', 'bad_credentials', 'not_found'].includes(error?.reason)) return 'ended';
  if (error?.reason === 'disconnected') return 'offline';
  return 'retry';
}

/**
 * A page's resumes of its session on each connect, counting the `retry`s of
 * `resumeFailure` in a row: the `tries`-th is `gaveUp` (log in again) instead.
 */
export class SessionResumes {
  constructor(tries = 3) {
    this.tries = tries;
    this.failures = 0;
  }

  succeeded() {
    this.failures = 0;
  }

  /** @returns {'ended' | 'offline' | 'retry' | 'gaveUp'} */
  failed(error) {
    const what = resumeFailure(error);
    if (what === 'offline') return what;
    if (what === 'retry' && ++this.failures < this.tries) return what;
    this.failures = 0;
    return what === 'retry' ? 'gaveUp' : what;
  }
}

export class Jetway extends RpcClient {
  /** @param {ConnectOptions} [options] */
  constructor(options = {}) {
    super(options);
    /** @type {SeatWatcher|null} */
    this._seats = null;
    /** The session token of the last register/login/resume through this client. */
    this.token = null;
    /** Device tokens by `DEVICE_KEY` + username, where there is no localStorage. */
    this._devices = new Map();
    // a reconnect resumes the session before anything queued is sent
    this.onConnect(async (client, { reconnect }) => {
      if (!reconnect || !this.token) return;
      try {
        await this.call('auth.resume', { token: this.token }, { immediate: true });
      } catch (e) {
        if (e.reason === 'invalid_token') {
          this.token = null;
          this.dispatchEvent(new CustomEvent('session-lost', { detail: e }));
        }
      }
    });
  }

  async _session(method, params) {
    const session = await this.call(method, params);
    this.token = session.token;
    this.rememberDevice(session);
    return session;
  }

  /**
   * The `device_token` an earlier login or registration of `username` gave this
   * device, as params to add to its `auth.login`: such a login is not held up by wrong
   * passwords for the name sent from elsewhere (docs/protocol.md, auth.login). Kept in
   * localStorage where there is one, else for this client's life.
   * @param {string} username @returns {{device_token?: string}}
   */
  deviceParams(username) {
    const key = DEVICE_KEY + String(username).trim().toLowerCase();
    let token = this._devices.get(key);
    try {
      token = storage()?.getItem(key) ?? token;
    } catch {
      /* storage refused: what this client kept */
    }
    return token ? { device_token: token } : {};
  }

  /** Keeps the `device_token` of a login's or registration's result. @param {Session} session */
  rememberDevice(session) {
    if (!session.device_token || !session.user) return;
    const key = DEVICE_KEY + session.user.username;
    this._devices.set(key, session.device_token);
    try {
      storage()?.setItem(key, session.device_token);
    } catch {
      /* storage full or refused: kept for this client's life */
    }
  }

  /** The live seat maps of this client (one subscription per flight, shared). */
  get seats() {
    if (!this._seats) this._seats = new SeatWatcher(this);
    return this._seats;
  }

  /**
   * An idempotent call: a `request_id` is made when the caller gave none, and the very
   * same request (same id) is sent again if the connection drops before the reply, so
   * the server answers it once.
   */
  _idempotent(method, params, prefix, options = {}) {
    const p = { ...params, request_id: params.request_id || newRequestId(prefix) };
    return this.call(method, p, { ...IDEMPOTENT, ...options });
  }

  // ----- auth -----

  // A session started here is resumed on every reconnect; a `session-lost` event
  // tells when its token no longer works (expired, or logged out elsewhere).

  /** @returns {Promise<Session>} */
  register(username, password) {
    return this._session('auth.register', { username, password });
  }
  /** @returns {Promise<Session>} */
  login(username, password) {
    return this._session('auth.login', { username, password, ...this.deviceParams(username) });
  }
  /** @param {string} token @returns {Promise<Session>} */
  resume(token) {
    return this._session('auth.resume', { token });
  }
  /** @returns {Promise<{}>} */
  async logout() {
    try {
      return await this.call('auth.logout', {});
    } finally {
      // ended here whatever the answer: a reconnect must not resume it
      this.token = null;
    }
  }

  // ----- flights -----

  /** @returns {Promise<{airports: Airport[]}>} */
  airports() {
    return this.call('flights.airports', {});
  }
  /**
   * @param {{from?: string, to?: string, date?: string, limit?: number}} [query]
   * @returns {Promise<{flights: Flight[]}>}
   */
  searchFlights(query = {}) {
    return this.call('flights.search', query);
  }
  /** @param {string} flightId @returns {Promise<{flight: Flight, version: number, seats: Seat[], layout: Layout}>} */
  getFlight(flightId) {
    return this.call('flights.get', { flight_id: flightId });
  }

  /**
   * Watches a flight's seat map: `onChange` gets the snapshot, then every change in
   * version order, across reconnects (resubscribing with `since`, so none is missed;
   * a gap in the pushes is filled the same way). Returns a function that stops it.
   * @param {string} flightId
   * @param {(event: SeatEvent) => void} onChange
   * @returns {() => void}
   */
  subscribeSeats(flightId, onChange) {
    const { feed, release } = this.seats.watch(flightId);
    const snapshot = (e) =>
      onChange({ type: 'snapshot', flightId, version: e.detail.version, seats: [...feed.seats.values()], feed });
    const change = (e) => onChange({ type: 'change', flightId, version: e.detail.version, seats: e.detail.seats, feed });
    feed.addEventListener('snapshot', snapshot);
    feed.addEventListener('change', change);
    if (feed.loaded) snapshot({ detail: { version: feed.version } });
    return () => {
      feed.removeEventListener('snapshot', snapshot);
      feed.removeEventListener('change', change);
      release();
    };
  }

  // ----- bookings (idempotent ones take an optional request_id) -----

  /**
   * Holds named seats (`seats`) or the best available (`count` in `cabin`).
   * @param {{flight_id: string, passengers: {name: string}[], seats?: string[],
   *   count?: number, cabin?: Cabin, request_id?: string}} params
   * @returns {Promise<{booking: Booking}>}
   */
  hold(params) {
    return this._idempotent('booking.hold', params, 'hold');
  }
  /**
   * @param {{locator: string, payment_method: string, request_id?: string}} params
   * @returns {Promise<{booking: Booking, order: Order}>}
   */
  pay(params) {
    return this._idempotent('booking.pay', params, 'pay', { timeout: 60000 });
  }
  /**
   * Pays, completing the customer's action (3-D Secure) when the server asks for it:
   * on `payment_action_required`, `handleAction(data.client_secret)` runs (with
   * Stripe.js: `stripe.handleNextAction({clientSecret})`), then `booking.pay` is sent
   * again with the same `locator` and `payment_method` and a new `request_id`, as
   * docs/protocol.md ("Customer action") says. Without `handleAction`, or when the
   * second answer asks again, the `payment_action_required` error is thrown.
   * @param {{locator: string, payment_method: string, request_id?: string}} params
   * @param {((clientSecret: string) => Promise<void>)|null} [handleAction]
   * @returns {Promise<{booking: Booking, order: Order}>}
   */
  async payCompletingAction(params, handleAction) {
    try {
      return await this.pay(params);
    } catch (e) {
      if (e.reason !== 'payment_action_required' || !handleAction || !e.data?.client_secret) throw e;
      await handleAction(e.data.client_secret);
      return this.pay({ ...params, request_id: newRequestId('pay') });
    }
  }
  /**
   * Releases a hold, or cancels a confirmed booking (only `seats`, when given).
   * @param {{locator: string, seats?: string[], request_id?: string}} params
   * @returns {Promise<{booking: Booking, order?: Order}>}  `order` when a refund was made
   */
  cancel(params) {
    return this._idempotent('booking.cancel', params, 'cancel');
  }
  /**
   * @param {{locator: string, from: string, to: string, request_id?: string}} params
   * @returns {Promise<{booking: Booking}>}
   */
  changeSeat(params) {
    return this._idempotent('booking.change_seat', params, 'seat');
  }
  /**
   * Checks in every passenger of a confirmed booking, or those in `seats`, while
   * check-in is open (`checkin_closed` outside the window). Checking in again returns
   * the same passes.
   * @param {{locator: string, seats?: string[], request_id?: string}} params
   * @returns {Promise<{booking: Booking, boarding_passes: BoardingPass[]}>}
   */
  checkIn(params) {
    return this._idempotent('booking.check_in', params, 'checkin');
  }
  /** @param {string} locator @returns {Promise<{boarding_passes: BoardingPass[]}>} */
  boardingPasses(locator) {
    return this.call('booking.boarding_passes', { locator });
  }
  /** @param {string} locator @returns {Promise<{booking: Booking}>} */
  getBooking(locator) {
    return this.call('booking.get', { locator });
  }
  /** Every booking, newest first (read a page at a time). @returns {Promise<{bookings: Booking[]}>} */
  listBookings() {
    return this._everyPage('bookings.list', 'bookings', (b) => b.locator);
  }
  /** Every order, newest first (read a page at a time). @returns {Promise<{orders: Order[]}>} */
  listOrders() {
    return this._everyPage('orders.list', 'orders', (o) => o.order_id);
  }
  /**
   * Calls a paged list method until no older records are left (`more` absent).
   * @param {string} method @param {string} key @param {(item: any) => string} cursor
   */
  async _everyPage(method, key, cursor) {
    const all = [];
    let params = {};
    for (;;) {
      const page = await this.call(method, params);
      const items = page[key];
      all.push(...items);
      if (!page.more || items.length === 0) return { [key]: all };
      params = { before: cursor(items[items.length - 1]) };
    }
  }
  /** @param {number} [limit] @returns {Promise<{events: HistoryEvent[]}>} */
  history(limit) {
    return this.call('history.list', limit ? { limit } : {});
  }
  /**
   * Every change of the logged-in user's bookings, from any connection.
   * @param {(booking: Booking) => void} fn
   * @returns {() => void} stops listening
   */
  onBookingUpdated(fn) {
    return this.on('booking.updated', (p) => fn(p.booking));
  }

  // ----- departure boards -----

  /**
   * Watches an airport's departures: its flights now, then `flight.changed` pushes
   * (listen with `on('flight.changed', fn)`). Watch again after a reconnect.
   * @param {string} airport @param {number} [hours] 1-48, default 24
   * @returns {Promise<{airport: string, flights: Flight[]}>}
   */
  watchBoard(airport, hours) {
    return this.call('flights.watch', hours ? { airport, hours } : { airport });
  }
  /** @param {string} airport @returns {Promise<{}>} */
  unwatchBoard(airport) {
    return this.call('flights.unwatch', { airport });
  }

  // ----- waitlist -----

  /**
   * Waits for seats of a sold-out cabin; freed seats become a held booking for it.
   * @param {{flight_id: string, cabin: Cabin, count: number, passengers: {name: string}[],
   *   request_id?: string}} params
   * @returns {Promise<{entry: WaitlistEntry}>}
   */
  joinWaitlist(params) {
    return this._idempotent('waitlist.join', params, 'wl');
  }
  /** @param {string} id @returns {Promise<{entry: WaitlistEntry}>} */
  leaveWaitlist(id) {
    return this.call('waitlist.leave', { id });
  }
  /** Every waitlist entry, newest first (read a page at a time). @returns {Promise<{entries: WaitlistEntry[]}>} */
  listWaitlist() {
    return this._everyPage('waitlist.list', 'entries', (e) => e.id);
  }

  // ----- airline (role admin) -----

  /**
   * @param {{number: string, from: string, to: string, departs_at: string, arrives_at: string,
   *   aircraft: string, fares: {economy: Money, business: Money}}} params
   * @returns {Promise<{flight: Flight}>}
   */
  createFlight(params) {
    return this.call('admin.flights.create', params);
  }
  /**
   * @param {string} flightId @param {string} reason
   * @returns {Promise<{flight: Flight, refunded: number, released: number}>}
   */
  cancelFlight(flightId, reason) {
    return this.call('admin.flights.cancel', { flight_id: flightId, reason }, { timeout: 120000 });
  }
  /**
   * New estimated times and/or the next status (`boarding`, then `departed`).
   * @param {{flight_id: string, estimated_departs_at?: string, estimated_arrives_at?: string,
   *   status?: 'boarding'|'departed', reason?: string}} params
   * @returns {Promise<{flight: Flight}>}
   */
  updateFlight(params) {
    return this.call('admin.flights.update', params);
  }
  /** @returns {Promise<{flights: FlightStats[]}>} */
  flightStats() {
    return this.call('admin.flights.stats', {});
  }
  /** Extension: the open refunds. @returns {Promise<{refunds: object[]}>} */
  openRefunds() {
    return this.call('admin.refunds.list', {});
  }
  /**
   * Extension: closes an open refund the gateway keeps refusing as paid by other means,
   * has it asked again under a fresh key, or voids a seat refund its booking no longer
   * backs.
   * @param {{refund_id: string, outcome: 'paid_elsewhere'|'retry'|'void'}} params
   * @returns {Promise<{refund: object}>}
   */
  resolveRefund(params) {
    return this.call('admin.refunds.resolve', params);
  }

  /** The OpenRPC document of the server. @returns {Promise<object>} */
  discover() {
    return this.call('rpc.discover', {});
  }
}

/**
 * A client that connects at once (and again after every drop, with backoff).
 * @param {ConnectOptions} [options]
 * @returns {Jetway}
 */
export function connect(options = {}) {
  const jw = new Jetway(options);
  jw.connect();
  return jw;
}
