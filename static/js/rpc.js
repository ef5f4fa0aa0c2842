// Jetway JSON-RPC 2.0 over WebSocket client, shared by the app and the display.
//
// - request/response matched by id, as promises;
// - server pushes (no id) dispatched to handlers registered with on(method, fn);
// - automatic reconnect with exponential backoff and full jitter, restarted only by a
//   connection that stayed up (`stableAfter`);
// - "connect hooks" run on every (re)connect before queued calls are sent, so the
//   session can be resumed and subscriptions renewed first;
// - a call refused `rate_limited` (nothing was done) sent again after a backoff, a
//   "rate_limited" event telling each wait (it then goes after calls made since, and
//   a `wanted` check can drop it if those made it stale);
// - a "state" event whenever the connection state changes.

export class RpcError extends Error {
  constructor(error) {
    super(error?.message || 'Request failed');
    this.name = 'RpcError';
    this.code = error?.code;
    this.data = error?.data || {};
    this.reason = this.data.reason || (error?.code === 'disconnected' ? 'disconnected' : 'unknown');
  }
}

// `rate_limited` answers to these say the account or address must wait (a login
// backoff, the hourly registrations), not the connection: not worth a quick retry.
const NOT_RETRIED_WHEN_LIMITED = new Set(['auth.login', 'auth.register']);
// Waits before each send again of a call refused `rate_limited`: the per-connection
// rate refills within a second, and a burst of calls gets through within a few.
const RATE_LIMITED_WAITS = [250, 500, 1000, 2000, 2000, 2000];

export function defaultUrl() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}/ws`;
}

export function newRequestId(prefix = 'req') {
  const rnd = crypto.getRandomValues(new Uint8Array(9));
  return `${prefix}-${Date.now().toString(36)}-${Array.from(rnd, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

export class RpcClient extends EventTarget {
  constructor({
    url = defaultUrl(),
    baseDelay = 500,
    maxDelay = 15000,
    timeout = 20000,
    stableAfter = 10000,
  } = {}) {
    super();
    this.url = url;
    this.baseDelay = baseDelay;
    this.maxDelay = maxDelay;
    this.timeout = timeout;
    // a connection lost sooner after it was ready does not restart the backoff: a
    // server (or proxy) that closes every connection soon after it opens is not
    // hammered at the shortest delay by every client it has
    this.stableAfter = stableAfter;
    this.readyAt = 0;
    this.ws = null;
    this.state = 'idle'; // idle | connecting | open | reconnecting | closed
    this.ready = false; // open and connect hooks have finished
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, timer, frame, retry}
    this.queue = []; // calls waiting for a ready connection
    this.handlers = new Map(); // method -> Set<fn>
    this.connectHooks = [];
    this.attempt = 0;
    this.retryAt = 0;
    this.retryTimer = null;
    this.connections = 0;
    this.stopped = false;
    this._onOnline = () => this.reconnectNow();
    if (typeof window !== 'undefined') window.addEventListener('online', this._onOnline);
  }

  /** Register a push handler. Returns an unsubscribe function. */
  on(method, fn) {
    if (!this.handlers.has(method)) this.handlers.set(method, new Set());
    this.handlers.get(method).add(fn);
    return () => this.handlers.get(method)?.delete(fn);
  }

  /** Run fn(client, {reconnect}) after each successful (re)connect, before queued calls. */
  onConnect(fn) {
    this.connectHooks.push(fn);
    return () => {
      this.connectHooks = this.connectHooks.filter((h) => h !== fn);
    };
  }

  connect() {
    this.stopped = false;
    if (this.ws && (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING)) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this._setState(this.connections > 0 || this.attempt > 0 ? 'reconnecting' : 'connecting');
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      this._scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => this._onOpen(ws);
    ws.onmessage = (ev) => this._onMessage(ev.data);
    ws.onclose = () => this._onClose(ws);
    ws.onerror = () => {
      /* a close event follows */
    };
  }

  close() {
    this.stopped = true;
    this.ready = false;
    this.readyAt = 0;
    clearTimeout(this.retryTimer);
    if (typeof window !== 'undefined') window.removeEventListener('online', this._onOnline);
    if (this.ws) this.ws.close();
    this._setState('closed');
  }

  /** Skip the remaining backoff delay and try to connect at once. */
  reconnectNow() {
    if (this.stopped) return;
    if (this.state === 'reconnecting' && this.retryTimer) {
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
      this.connect();
    }
  }

  /**
   * Call a method. Resolves with `result`, rejects with RpcError.
   * options.immediate: send now even if connect hooks are still running (used by hooks).
   * options.retry: if the connection drops before the reply, send it again after the
   *   reconnect (only for idempotent calls, e.g. ones carrying a request_id).
   * options.wanted: asked before a call refused `rate_limited` is sent again; if it
   *   answers false the call is dropped (rejected with reason `cancelled`): calls made
   *   since may have made it stale (a subscription's unsubscribe, say).
   */
  call(method, params = {}, options = {}) {
    return new Promise((resolve, reject) => {
      const entry = { method, params, resolve, reject, retry: !!options.retry, immediate: !!options.immediate, timeout: options.timeout ?? this.timeout, wanted: options.wanted };
      const canSend = this.ws && this.ws.readyState === WebSocket.OPEN && (this.ready || options.immediate);
      if (canSend) this._send(entry);
      else if (options.immediate) reject(new RpcError({ code: 'disconnected', message: 'Not connected' }));
      else {
        this.queue.push(entry);
        if (this.state === 'idle') this.connect();
      }
    });
  }

  _send(entry) {
    const id = this.nextId++;
    entry.id = id;
    entry.ws = this.ws;
    entry.timer = setTimeout(() => {
      this.pending.delete(id);
      entry.reject(new RpcError({ code: 'timeout', message: 'The server did not answer in time', data: { reason: 'timeout' } }));
    }, entry.timeout);
    this.pending.set(id, entry);
    this.ws.send(JSON.stringify({ jsonrpc: '2.0', id, method: entry.method, params: entry.params }));
  }

  async _onOpen(ws) {
    if (ws !== this.ws) return;
    const reconnect = this.connections > 0;
    this.connections += 1;
    this._setState('open', { ready: false });
    try {
      for (const hook of this.connectHooks) {
        await hook(this, { reconnect });
        if (ws !== this.ws || ws.readyState !== WebSocket.OPEN) return;
      }
    } catch (e) {
      console.warn('connect hook failed', e);
      if (ws !== this.ws || ws.readyState !== WebSocket.OPEN) return;
    }
    this.readyAt = Date.now();
    this.ready = true;
    this._setState('open', { ready: true });
    const queued = this.queue;
    this.queue = [];
    for (const entry of queued) this._send(entry);
  }

  _onMessage(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    const batch = Array.isArray(msg) ? msg : [msg];
    for (const m of batch) {
      if (m && m.id !== undefined && m.id !== null && (m.result !== undefined || m.error !== undefined)) {
        const entry = this.pending.get(m.id);
        if (!entry) continue;
        this.pending.delete(m.id);
        clearTimeout(entry.timer);
        if (m.error?.data?.reason === 'rate_limited' && this._retryLimited(entry)) continue;
        if (m.error) entry.reject(new RpcError(m.error));
        else entry.resolve(m.result);
      } else if (m && typeof m.method === 'string') {
        const set = this.handlers.get(m.method);
        if (set) {
          for (const fn of [...set]) {
            try {
              fn(m.params || {}, m.method);
            } catch (e) {
              console.warn('push handler failed', e);
            }
          }
        }
        const any = this.handlers.get('*');
        if (any) for (const fn of [...any]) fn(m.params || {}, m.method);
      }
    }
  }

  /** Sends a call refused `rate_limited` again after a wait, if it has tries left. */
  _retryLimited(entry) {
    const tries = entry.limitedTries ?? 0;
    if (NOT_RETRIED_WHEN_LIMITED.has(entry.method) || tries >= RATE_LIMITED_WAITS.length || this.stopped) return false;
    entry.limitedTries = tries + 1;
    // jittered, so calls refused together do not come back together
    const delay = Math.round(RATE_LIMITED_WAITS[tries] * (0.5 + Math.random()));
    this.dispatchEvent(new CustomEvent('rate_limited', { detail: { method: entry.method, try: tries + 1, delay } }));
    setTimeout(() => {
      const open = this.ws && this.ws.readyState === WebSocket.OPEN;
      if (this.stopped) entry.reject(new RpcError({ code: 'disconnected', message: 'Client stopped', data: { reason: 'disconnected' } }));
      else if (entry.wanted && !entry.wanted()) entry.reject(new RpcError({ code: 'cancelled', message: 'No longer wanted', data: { reason: 'cancelled' } }));
      else if (open && !entry.immediate && this.ready) this._send(entry);
      // a connect hook's call goes again on its own connection only: never queued
      // behind the hooks that wait for it, nor sent before a new connection's hooks
      else if (entry.immediate && open && this.ws === entry.ws) this._send(entry);
      else if (entry.immediate) entry.reject(new RpcError({ code: 'disconnected', message: 'Not connected', data: { reason: 'disconnected' } }));
      else this.queue.push(entry);
    }, delay);
    return true;
  }

  _onClose(ws) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.ready = false;
    if (this.readyAt && Date.now() - this.readyAt >= this.stableAfter) this.attempt = 0;
    this.readyAt = 0;
    // Fail or re-queue in-flight calls.
    for (const [id, entry] of this.pending) {
      clearTimeout(entry.timer);
      this.pending.delete(id);
      if (entry.retry && !this.stopped) this.queue.push(entry);
      else entry.reject(new RpcError({ code: 'disconnected', message: 'Connection lost', data: { reason: 'disconnected' } }));
    }
    if (this.stopped) {
      this._setState('closed');
      return;
    }
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    // Exponential backoff with full jitter: a random delay in [base/2, cap] where the
    // cap doubles on each failed attempt up to maxDelay.
    const cap = Math.min(this.maxDelay, this.baseDelay * 2 ** this.attempt);
    const delay = Math.round(cap / 2 + Math.random() * (cap / 2));
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.connect();
    }, delay);
    this._setState('reconnecting', { waiting: true, delay, retryAt: this.retryAt });
  }

  _setState(state, extra = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, ready: this.ready, attempt: this.attempt, ...extra } }));
  }
}
