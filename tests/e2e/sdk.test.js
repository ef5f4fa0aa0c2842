// The client SDK (static/js/jetway.js) as a third-party front end uses it, in a page of
// its own: subscribeSeats resuming gap-free across a lost connection, the session
// resumed on reconnect, an idempotent call retried with the same request_id after the
// connection drops, and calls refused `rate_limited` sent again until answered. And the
// contract documents the server publishes are valid OpenRPC 1.3 and AsyncAPI 3.0 by
// those specifications' own JSON Schemas.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { JetwayServer, NetworkGate, launchBrowser, openPage, Api, pickFlight, requestId, until, uniqueName } from './harness.js';

describe('client SDK', () => {
  let server;
  let gate;
  let browser;

  before(async () => {
    server = await new JetwayServer().start();
    gate = await new NetworkGate(server).start();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await gate?.close();
    await server?.dispose();
  });

  it('keeps device tokens per account in Node, without a working localStorage', async () => {
    const { Jetway } = await import('../../static/js/jetway.js');
    const had = Object.getOwnPropertyDescriptor(globalThis, 'localStorage');
    try {
      // none (Node 22-24), then the empty placeholder Node 25 has without a file
      for (const placeholder of [undefined, {}]) {
        Object.defineProperty(globalThis, 'localStorage', { value: placeholder, configurable: true });
        const jw = new Jetway({ url: 'ws://127.0.0.1:9/ws' });
        assert.deepEqual(jw.deviceParams('Ada'), {});
        jw.rememberDevice({ token: 't', user: { username: 'ada' }, device_token: 'd1.x' });
        assert.deepEqual(jw.deviceParams(' ADA '), { device_token: 'd1.x' });
        assert.deepEqual(jw.deviceParams('bob'), {});
      }
    } finally {
      if (had) Object.defineProperty(globalThis, 'localStorage', had);
      else delete globalThis.localStorage;
    }
  });

  it('gives up resuming a session only after a few passing failures in a row', async () => {
    const { SessionResumes } = await import('../../static/js/jetway.js');
    const resumes = new SessionResumes(3);
    const failed = (reason) => resumes.failed({ reason });
    assert.deepEqual([failed('internal'), failed('timeout'), failed('rate_limited')], ['retry', 'retry', 'gaveUp']);
    assert.equal(failed('disconnected'), 'offline', 'a lost connection is not counted');
    assert.deepEqual([failed('internal'), failed('invalid_token'), failed('internal')], ['retry', 'ended', 'retry'], 'an ended session starts the count again');
    resumes.succeeded();
    assert.deepEqual([failed('internal'), failed('internal')], ['retry', 'retry']);
  });

  it('keeps the request_id of an action only while its answer is uncertain', async () => {
    const { ActionId } = await import('../../static/js/jetway.js');
    const hold = new ActionId('hold');
    const a = { flight_id: 'JW1-20261201', seats: ['1A'] };
    const first = hold.for(a);
    assert.match(first, /^hold-/);
    hold.settle({ reason: 'timeout' });
    assert.equal(hold.for({ ...a }), first, 'the same action after a timeout');
    hold.settle({ reason: 'disconnected' });
    assert.equal(hold.for(a), first, 'and after a lost connection');
    hold.settle({ reason: 'internal' });
    assert.equal(hold.for(a), first, 'and after internal, which is retried with the same id');
    assert.notEqual(hold.for({ ...a, seats: ['1B'] }), first, 'another action');
    const other = hold.for(a);
    assert.notEqual(other, first);
    hold.settle({ reason: 'seat_unavailable' });
    assert.notEqual(hold.for(a), other, 'a definite refusal ends the id');
    const last = hold.for(a);
    hold.settle();
    assert.notEqual(hold.for(a), last, 'and so does a result');
    const kept = hold.for(a);
    hold.settle({ reason: 'timeout' });
    hold.forget();
    assert.notEqual(hold.for(a), kept, 'forget starts afresh whatever the last answer');
  });

  /** Runs `test` on a page of a server of its own allowing `rate` requests a second
   * per connection after a `burst`, then checks the page logged no error. */
  async function onLimitedServer({ rate, burst }, test) {
    const limited = await new JetwayServer({ env: { JETWAY_RATE_LIMIT: rate, JETWAY_RATE_BURST: burst } }).start();
    const page = await openPage(browser);
    try {
      await page.goto(`${limited.url}/healthz`);
      await test(page);
      assert.deepEqual(page.consoleErrors(true), []);
    } finally {
      await page.context().close();
      await limited.dispose();
    }
  }

  it('subscribes gap-free across a reconnect and retries a hold once', async () => {
    const api = await Api.open(browser, server);
    await api.register();
    const flight = await pickFlight(api, { skip: 3 });
    const { seats } = await api.call('flights.get', { flight_id: flight.flight_id });
    const free = seats.filter((s) => s.status === 'available' && s.cabin === 'economy').map((s) => s.seat);

    const page = await openPage(browser);
    await page.goto(`${gate.url}/healthz`);
    await page.evaluate(
      async ([flightId, name]) => {
        const { connect } = await import('/js/jetway.js');
        const jw = connect({ baseDelay: 200, maxDelay: 1000 });
        window.jw = jw;
        window.events = [];
        window.subscribes = [];
        const send = WebSocket.prototype.send;
        WebSocket.prototype.send = function (data) {
          const m = JSON.parse(data);
          if (m.method === 'seats.subscribe') window.subscribes.push(m.params);
          return send.call(this, data);
        };
        await jw.register(name, 'correct-horse-42');
        jw.subscribeSeats(flightId, (ev) => {
          window.events.push({ type: ev.type, version: ev.version, seats: Object.fromEntries(ev.seats.map((s) => [s.seat, s.status])) });
        });
      },
      [flight.flight_id, uniqueName('sdk')],
    );
    const statusOf = (seat) => page.evaluate((seat) => {
      const last = window.events.findLast((e) => e.seats[seat]);
      return last?.seats[seat];
    }, seat);
    await until(async () => (await statusOf(free[0])) === 'available', { message: 'snapshot' });

    // a change made by someone else arrives live
    await api.call('booking.hold', { flight_id: flight.flight_id, seats: [free[0]], passengers: [{ name: 'Live' }], request_id: requestId() });
    await until(async () => (await statusOf(free[0])) === 'held', { message: 'live change' });

    // a change made while this client is offline arrives after the reconnect, by `since`
    gate.cut();
    await api.call('booking.hold', { flight_id: flight.flight_id, seats: [free[1]], passengers: [{ name: 'Offline' }], request_id: requestId() });
    gate.restore();
    await until(async () => (await statusOf(free[1])) === 'held', { timeout: 40000, message: 'missed change after reconnect' });
    const { events, subscribes } = await page.evaluate(() => ({ events: window.events, subscribes: window.subscribes }));
    assert.equal(events.filter((e) => e.type === 'snapshot').length, 1, 'resumed with changes, not a new snapshot');
    assert.ok(subscribes.some((p) => typeof p.since === 'number'), JSON.stringify(subscribes));
    const versions = events.map((e) => e.version);
    assert.deepEqual(versions, [...versions].sort((a, b) => a - b), 'changes in version order');

    // a hold whose connection drops before the reply is sent again with its request_id:
    // one booking, and the reply is the booking
    const result = await page.evaluate(async ([flightId, seat]) => {
      const jw = window.jw;
      const p = jw.hold({ flight_id: flightId, seats: [seat], passengers: [{ name: 'Retry Me' }] });
      jw.ws.close();
      const { booking } = await p;
      const { bookings } = await jw.listBookings();
      return { locator: booking.locator, status: booking.status, count: bookings.length };
    }, [flight.flight_id, free[2]]);
    assert.equal(result.status, 'held');
    assert.equal(result.count, 1, 'the retried hold made one booking');
    assert.deepEqual(page.consoleErrors(true), []);
    await api.close();
    await page.context().close();
  });

  it('keeps backing off while every connection is lost soon after it opens', async () => {
    const page = await openPage(browser);
    await page.goto(`${server.url}/healthz`);
    const attempts = await page.evaluate(async () => {
      // every connection is closed 100 ms after it opens, but the fifth lives 3 s
      const Real = WebSocket;
      let opened = 0;
      window.WebSocket = class extends Real {
        constructor(url) {
          super(url);
          this.addEventListener('open', () => {
            opened += 1;
            setTimeout(() => this.close(), opened === 5 ? 3000 : 100);
          });
        }
      };
      const { connect } = await import('/js/jetway.js');
      const jw = connect({ baseDelay: 20, maxDelay: 5000, stableAfter: 1500 });
      const seen = [];
      await new Promise((resolve) => {
        jw.addEventListener('state', (e) => {
          if (e.detail.state !== 'reconnecting' || !e.detail.waiting) return;
          seen.push(e.detail.attempt);
          if (seen.length === 6) resolve();
        });
      });
      jw.close();
      return seen;
    });
    await page.close();
    // before, every connection that got ready started the backoff again: 1, 1, 1, ...
    assert.deepEqual(attempts, [1, 2, 3, 4, 1, 2], 'the backoff restarts only after the connection that stayed up');
  });

  it('sends calls refused rate_limited again until they are answered', async () => {
    // a server allowing 5 requests a second per connection; 25 calls at once
    await onLimitedServer({ rate: '5', burst: '5' }, async (page) => {
      const result = await page.evaluate(async () => {
        const { connect } = await import('/js/jetway.js');
        const jw = connect();
        let waits = 0;
        jw.addEventListener('rate_limited', () => (waits += 1));
        const answers = await Promise.all(Array.from({ length: 25 }, () => jw.call('flights.airports', {})));
        jw.close();
        return { answered: answers.filter((a) => Array.isArray(a.airports)).length, waits };
      });
      assert.equal(result.answered, 25, 'every call answered');
      assert.ok(result.waits > 0, 'the limit refused some first');
    });
  });

  it('drops a call refused rate_limited that is no longer wanted', async () => {
    // 5 at once, then one a second: of 8 calls sent together some are refused
    await onLimitedServer({ rate: '1', burst: '5' }, async (page) => {
      const result = await page.evaluate(async () => {
        const { connect } = await import('/js/jetway.js');
        const jw = connect();
        let sent = 0;
        const send = WebSocket.prototype.send;
        WebSocket.prototype.send = function (data) {
          if (JSON.parse(data).method === 'flights.airports') sent += 1;
          return send.call(this, data);
        };
        let want = true;
        // made stale by the time of the first refusal (as an unsubscribe by a new subscribe)
        jw.addEventListener('rate_limited', () => (want = false));
        const calls = Array.from({ length: 8 }, () => jw.call('flights.airports', {}, { wanted: () => want }));
        const settled = await Promise.allSettled(calls);
        jw.close();
        return {
          answered: settled.filter((r) => r.status === 'fulfilled').length,
          reasons: settled.filter((r) => r.status === 'rejected').map((r) => r.reason.reason),
          sent,
        };
      });
      assert.ok(result.answered >= 5, JSON.stringify(result));
      assert.ok(result.reasons.length > 0, JSON.stringify(result));
      assert.deepEqual(new Set(result.reasons), new Set(['cancelled']), JSON.stringify(result));
      assert.equal(result.sent, 8, 'none sent again');
    });
  });

  it('drops a subscription whose subscribe is answered after it was released', async () => {
    // a subscribe refused rate_limited is sent again after a wait, so the unsubscribe
    // of a flight released meanwhile can reach the server first: here the page holds
    // the subscribe back until the unsubscribe is answered
    const api = await Api.open(browser, server);
    const page = await openPage(browser);
    try {
      const flight = await pickFlight(api, { skip: 5 });
      await page.goto(`${server.url}/healthz`);
      await page.evaluate(async (flightId) => {
        const { connect } = await import('/js/jetway.js');
        const jw = connect();
        await jw.call('flights.airports', {});
        const held = [];
        const send = WebSocket.prototype.send;
        WebSocket.prototype.send = function (data) {
          if (JSON.parse(data).method === 'seats.subscribe') held.push([this, data]);
          else send.call(this, data);
        };
        // calls not yet settled, counted down after their own handlers ran
        window.outstanding = 0;
        const call = jw.call.bind(jw);
        jw.call = (method, params, opts) => {
          window.outstanding += 1;
          const r = call(method, params, opts);
          r.catch(() => {}).finally(() => setTimeout(() => (window.outstanding -= 1), 0));
          return r;
        };
        const stop = jw.subscribeSeats(flightId, () => {});
        stop();
        while (window.outstanding > 1) await new Promise((r) => setTimeout(r, 10));
        WebSocket.prototype.send = send;
        for (const [ws, data] of held) send.call(ws, data);
      }, flight.flight_id);
      await until(() => page.evaluate(() => window.outstanding === 0), {
        message: 'the late subscribe answered, and every call after it',
      });
      const { viewers } = await api.call('seats.subscribe', { flight_id: flight.flight_id });
      assert.equal(viewers, 1, 'the released subscription is not left on the server');
      assert.deepEqual(page.consoleErrors(true), []);
    } finally {
      await page.context().close();
      await api.close();
    }
  });

  it('publishes valid OpenRPC and AsyncAPI documents', async () => {
    const require = createRequire(import.meta.url);
    const Ajv = require('ajv');
    const addFormats = require('ajv-formats');
    const { openrpcDocument } = require('@open-rpc/meta-schema');
    const { jsonSchema } = require('@json-schema-tools/meta-schema');
    const asyncapi3 = require('@asyncapi/specs').schemasWithoutId['3.0.0'];
    // ajv knows draft-07 by its own id only: the meta-schemas are draft-07
    const plain = (schema, { id = true } = {}) => {
      const copy = { ...schema };
      delete copy.$schema;
      if (!id) delete copy.$id;
      return copy;
    };
    for (const [path, spec] of [['/openrpc.json', openrpcDocument], ['/asyncapi.json', asyncapi3]]) {
      const ajv = new Ajv({ strict: false, allErrors: true });
      addFormats(ajv);
      // OpenRPC's meta-schema refers to json-schema.tools' by two spellings of its id
      ajv.addSchema(plain(jsonSchema));
      ajv.addSchema(plain(jsonSchema, { id: false }), 'https://meta.json-schema.tools');
      const validate = ajv.compile(plain(spec));
      const doc = await (await fetch(`${server.url}${path}`)).json();
      assert.ok(validate(doc), `${path}: ${JSON.stringify(validate.errors, null, 1)}`);
    }
  });
});
