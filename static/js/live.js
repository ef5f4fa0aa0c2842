// Live seat maps: one subscription per flight, shared by every view that watches it.
// Keeps the map and its version, applies `seats.changed` pushes in version order and,
// after a reconnect (or a gap), resubscribes with `since` so that no change is missed.
// Also keeps the flight's viewer count (`viewers`, then `flight.presence` pushes).

/** Seats per cabin: Map cabin -> {cabin, total, available, held, booked}. */
export function countSeats(seats) {
  const out = new Map();
  for (const s of seats) {
    const c = out.get(s.cabin) || { cabin: s.cabin, total: 0, available: 0, held: 0, booked: 0 };
    c.total += 1;
    if (s.status === 'available') c.available += 1;
    else if (s.status === 'held') c.held += 1;
    else if (s.status === 'booked') c.booked += 1;
    out.set(s.cabin, c);
  }
  return out;
}

export class SeatFeed extends EventTarget {
  constructor(flightId) {
    super();
    this.flightId = flightId;
    this.version = null;
    this.seats = new Map(); // seat -> {seat, cabin, status, ...}
    this.cabins = new Map(); // cabin -> seats_available
    this.loaded = false;
    this.refs = 0;
    this.subscribing = null;
    this.buffer = [];
    this.viewers = null; // connections watching the flight, this one included
    this.error = null; // the last failure to subscribe, until one succeeds
    this.failed = false; // that failure may pass: a subscribe is tried again
  }

  _viewers(n) {
    this.viewers = n;
    this.dispatchEvent(new CustomEvent('viewers', { detail: n }));
  }

  /** Seed seat metadata (row, column, window, ...) e.g. from flights.get. */
  seed(seats) {
    for (const s of seats) this.seats.set(s.seat, { ...this.seats.get(s.seat), ...s });
  }

  counts() {
    return countSeats(this.seats.values());
  }

  _snapshot(version, seats) {
    const prev = this.seats;
    this.seats = new Map();
    for (const s of seats) this.seats.set(s.seat, { ...prev.get(s.seat), ...s });
    this.version = version;
    this.cabins = new Map();
    for (const c of this.counts().values()) this.cabins.set(c.cabin, c.available);
    this.loaded = true;
    this.dispatchEvent(new CustomEvent('snapshot', { detail: { version } }));
  }

  _apply(change) {
    const changed = [];
    for (const s of change.seats || []) {
      const cur = this.seats.get(s.seat) || { seat: s.seat };
      this.seats.set(s.seat, { ...cur, ...s });
      changed.push({ ...cur, ...s, previous: cur.status });
    }
    for (const c of change.cabins || []) this.cabins.set(c.cabin, c.seats_available);
    this.version = change.version;
    this.dispatchEvent(new CustomEvent('change', { detail: { version: change.version, seats: changed } }));
  }
}

/** Failures of a call, other than a lost connection, that may pass: worth trying
 * again after a while. */
export const PASSING = ['timeout', 'rate_limited', 'internal'];

/** How long to wait before trying such a call again for the `tries`+1st time: 2-4 s,
 * doubling up to 30-60 s, spread so that many screens do not ask at once. */
export function passingDelay(tries) {
  return Math.min(30000, 2000 * 2 ** tries) * (1 + Math.random());
}

export class SeatWatcher {
  constructor(client) {
    this.client = client;
    this.feeds = new Map();
    client.on('seats.changed', (p) => this._onPush(p));
    client.on('flight.presence', (p) => this.feeds.get(p.flight_id)?._viewers(p.viewers));
    client.onConnect(async (c) => {
      for (const feed of this.feeds.values()) {
        feed.subscribing = null;
        await this._subscribeRetrying(feed, true);
      }
    });
  }

  /** Start watching a flight. Returns {feed, release}. */
  watch(flightId) {
    let feed = this.feeds.get(flightId);
    if (!feed) {
      feed = new SeatFeed(flightId);
      this.feeds.set(flightId, feed);
      this._subscribeRetrying(feed, false);
    }
    feed.refs += 1;
    let released = false;
    return {
      feed,
      release: () => {
        if (released) return;
        released = true;
        feed.refs -= 1;
        if (feed.refs <= 0) {
          this.feeds.delete(flightId);
          this._unsubscribe(flightId);
        }
      },
    };
  }

  /** Subscribes `feed` (see `_subscribe`). A passing failure (no answer in time, a
   * refusal that says to come back) is tried again after a few seconds, spread and
   * growing, while the feed is watched and nothing else subscribed it meanwhile: an
   * unattended screen would otherwise never go live, or stay stale. A lost
   * connection is left to the reconnect, which resubscribes every feed. Never
   * rejects: a failure is the feed's `error` event. */
  _subscribeRetrying(feed, immediate, tries = 0) {
    // one in flight went through here too, and retries on its own failure
    if (feed.subscribing) return feed.subscribing.catch(() => {});
    return this._subscribe(feed, immediate).then(
      () => {
        feed.failed = false;
        feed.error = null;
      },
      (e) => {
        // (cancelled: released before a refused subscribe was sent again)
        if (e.reason === 'disconnected' || e.reason === 'cancelled') return;
        if (PASSING.includes(e.reason)) {
          feed.failed = true;
          setTimeout(() => {
            // a subscribe in flight, or the reconnect's, retries on its own failure
            if (this.feeds.get(feed.flightId) !== feed || !feed.failed || feed.subscribing || !this.client.ready) return;
            this._subscribeRetrying(feed, false, tries + 1);
          }, passingDelay(tries));
        }
        feed.error = e;
        feed.dispatchEvent(new CustomEvent('error', { detail: e }));
      },
    );
  }

  /** Drops the server's subscription to a flight no longer watched, on the open
   * connection (while its connect hooks run too: one may have just resubscribed it; a
   * connection's subscriptions end with it). If it is refused rate_limited, it is sent
   * again only if the flight is still not watched by then: a feed made meanwhile has
   * subscribed again, after it. */
  _unsubscribe(flightId) {
    const ws = this.client.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    const wanted = () => !this.feeds.has(flightId);
    const immediate = !this.client.ready;
    this.client.call('seats.unsubscribe', { flight_id: flightId }, { wanted, immediate }).catch(() => {});
  }

  _subscribe(feed, immediate) {
    if (feed.subscribing) return feed.subscribing;
    feed.buffer = [];
    const params = { flight_id: feed.flightId };
    if (feed.version !== null && feed.loaded) params.since = feed.version;
    const p = this.client
      .call('seats.subscribe', params, { immediate, wanted: () => this.feeds.get(feed.flightId) === feed })
      .then((r) => {
        if (this.feeds.get(feed.flightId) !== feed) {
          // released meanwhile, and its unsubscribe may have gone out before this
          // subscribe (one refused rate_limited is sent again later, or a connect
          // hook's): drop it again, unless the flight is watched anew (that feed
          // subscribes for itself)
          if (!this.feeds.has(feed.flightId)) this._unsubscribe(feed.flightId);
          return;
        }
        if (typeof r.viewers === 'number') feed._viewers(r.viewers);
        if (Array.isArray(r.seats)) {
          feed._snapshot(r.version, r.seats);
        } else if (Array.isArray(r.changes)) {
          for (const c of r.changes) if (c.version > feed.version) feed._apply(c);
          feed.version = Math.max(feed.version ?? 0, r.version);
        } else if (typeof r.version === 'number') {
          feed.version = Math.max(feed.version ?? 0, r.version);
        }
        feed.subscribing = null;
        const buffered = feed.buffer.sort((a, b) => a.version - b.version);
        feed.buffer = [];
        for (const push of buffered) this._onPush(push);
      })
      .finally(() => {
        if (feed.subscribing === p) feed.subscribing = null;
      });
    feed.subscribing = p;
    return p;
  }

  _onPush(p) {
    const feed = this.feeds.get(p.flight_id);
    if (!feed) return;
    if (feed.subscribing || !feed.loaded) {
      feed.buffer.push(p);
      return;
    }
    if (p.version <= feed.version) return; // already seen
    if (p.version === feed.version + 1) {
      feed._apply(p);
      return;
    }
    // A gap: ask for what we missed.
    feed.buffer.push(p);
    this._subscribeRetrying(feed, false);
  }
}
