// Formatting helpers shared by the app and the display.

const moneyFormats = new Map();

/** Money {amount: minor units, currency} -> "€1,234.50" */
export function formatMoney(money) {
  if (!money || typeof money.amount !== 'number') return '–';
  const currency = money.currency || 'EUR';
  if (!moneyFormats.has(currency)) {
    moneyFormats.set(currency, new Intl.NumberFormat('en-IE', { style: 'currency', currency }));
  }
  const fmt = moneyFormats.get(currency);
  const digits = fmt.resolvedOptions().maximumFractionDigits ?? 2;
  return fmt.format(money.amount / 10 ** digits);
}

// One formatter per (options, zone); an unknown zone falls back to UTC.
const formats = new Map();
function fmtIn(name, opts, tz) {
  const key = `${name}|${tz || 'UTC'}`;
  if (!formats.has(key)) {
    let fmt;
    try {
      fmt = new Intl.DateTimeFormat('en-GB', { ...opts, timeZone: tz || 'UTC' });
    } catch {
      fmt = new Intl.DateTimeFormat('en-GB', { ...opts, timeZone: 'UTC' });
    }
    formats.set(key, fmt);
  }
  return formats.get(key);
}
const TIME = { hour: '2-digit', minute: '2-digit' };
const DATE = { weekday: 'short', day: 'numeric', month: 'short' };
const LONG_DATE = { weekday: 'long', day: 'numeric', month: 'long', year: 'numeric' };
const DATE_TIME = { day: 'numeric', month: 'short', year: 'numeric', hour: '2-digit', minute: '2-digit' };

// Times that belong to no airport (hold expiry, orders, history) are shown in UTC,
// labelled as such; dates of a flight take its airport's zone (`tz`) when given.
export const formatTime = (iso) => (iso ? fmtIn('time', TIME).format(new Date(iso)) : '–');
export const formatDate = (iso, tz) => (iso ? fmtIn('date', DATE, tz).format(new Date(iso)) : '–');
export const formatLongDate = (iso, tz) => (iso ? fmtIn('long', LONG_DATE, tz).format(new Date(iso)) : '–');
export const formatDateTime = (iso) => (iso ? `${fmtIn('datetime', DATE_TIME).format(new Date(iso))} UTC` : '–');

export function formatDuration(fromIso, toIso) {
  const mins = Math.round((new Date(toIso) - new Date(fromIso)) / 60000);
  if (!Number.isFinite(mins) || mins < 0) return '';
  const h = Math.floor(mins / 60);
  const m = mins % 60;
  return h ? `${h}h ${String(m).padStart(2, '0')}m` : `${m}m`;
}

/** Remaining milliseconds -> "9:05" or "1:02:03" */
export function formatCountdown(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const mm = h ? String(m).padStart(2, '0') : String(m);
  return `${h ? `${h}:` : ''}${mm}:${String(s).padStart(2, '0')}`;
}

export function todayIso() {
  const d = new Date();
  return `${d.getUTCFullYear()}-${String(d.getUTCMonth() + 1).padStart(2, '0')}-${String(d.getUTCDate()).padStart(2, '0')}`;
}

export const cabinName = (cabin) => (cabin === 'business' ? 'Business' : cabin === 'economy' ? 'Economy' : cabin ? cabin[0].toUpperCase() + cabin.slice(1) : '');

export function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

// ---- local times and flight status ------------------------------------------------
// Times on the wire are UTC; each airport's IANA zone (flight.from_tz / to_tz) turns
// them into the local time shown with its zone's short name, e.g. "08:15 GMT".

const ZONED_TIME = { ...TIME, timeZoneName: 'short' };

/** "08:15 GMT": the local time at an airport, with its zone. */
export const formatLocal = (iso, tz) => (iso ? fmtIn('zoned', ZONED_TIME, tz).format(new Date(iso)) : '–');
/** "08:15": the local time without the zone (boards say the zone once). */
export const formatLocalShort = (iso, tz) => (iso ? fmtIn('time', TIME, tz).format(new Date(iso)) : '–');

// A `datetime-local` input in an airport's zone: "2026-12-01T09:40" is that airport's
// wall clock; the wire gets the UTC instant.
const WALL = { year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' };

/** The wall clock in `tz` at `ms` (to the minute), read as if it were UTC. */
function wallMs(ms, tz) {
  const p = Object.fromEntries(fmtIn('wall', WALL, tz).formatToParts(new Date(ms)).map((x) => [x.type, x.value]));
  return Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute);
}

/** "2026-12-01T09:40:00Z" -> "2026-12-01T10:40" in Europe/Paris, for a datetime-local input. */
export const toLocalInput = (iso, tz) => (iso ? new Date(wallMs(Date.parse(iso), tz)).toISOString().slice(0, 16) : '');

/** A datetime-local value read in `tz` -> the UTC instant ("...Z"), or '' if invalid. */
export function fromLocalInput(value, tz) {
  if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d$/.test(value || '')) return '';
  const wall = Date.parse(`${value}:00Z`);
  if (!Number.isFinite(wall)) return '';
  // the zone's offset at the guess, then at the result (they differ across a DST change)
  let t = wall - (wallMs(wall, tz) - wall);
  t = wall - (wallMs(t, tz) - t);
  return new Date(t).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** Departure (estimate, else schedule), as ms. */
export const departureOf = (f) => Date.parse(f.estimated_departs_at || f.departs_at);

/** Statuses that still allow holds, payments and seat changes. */
export const isBookable = (f) => !f.status || f.status === 'scheduled' || f.status === 'delayed';

/** Board remark: "DELAYED 14:35", "BOARDING", "DEPARTED", "CANCELLED", or "" on time. */
export function flightRemark(f) {
  switch (f.status) {
    case 'delayed':
      return `DELAYED ${formatLocalShort(f.estimated_departs_at, f.from_tz)}`;
    case 'boarding':
    case 'departed':
    case 'cancelled':
      return f.status.toUpperCase();
    default:
      return f.estimated_departs_at && f.estimated_departs_at !== f.departs_at ? `NEW TIME ${formatLocalShort(f.estimated_departs_at, f.from_tz)}` : '';
  }
}

/** "Departs 08:15 GMT · estimated 08:55 GMT" */
export function departureText(f) {
  const sched = `Departs ${formatLocal(f.departs_at, f.from_tz)}`;
  const est = f.estimated_departs_at && Date.parse(f.estimated_departs_at) !== Date.parse(f.departs_at) ? ` · estimated ${formatLocal(f.estimated_departs_at, f.from_tz)}` : '';
  return sched + est;
}
