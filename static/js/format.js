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

const timeFmt = new Intl.DateTimeFormat('en-GB', { hour: '2-digit', minute: '2-digit', timeZone: 'UTC' });
const dateFmt = new Intl.DateTimeFormat('en-GB', { weekday: 'short', day: 'numeric', month: 'short', timeZone: 'UTC' });
const longDateFmt = new Intl.DateTimeFormat('en-GB', { weekday: 'long', day: 'numeric', month: 'long', year: 'numeric', timeZone: 'UTC' });
const dateTimeFmt = new Intl.DateTimeFormat('en-GB', {
  day: 'numeric', month: 'short', year: 'numeric', hour: '2-digit', minute: '2-digit', timeZone: 'UTC',
});

// Schedule times are shown in UTC (the contract's time zone), labelled as such.
export const formatTime = (iso) => (iso ? timeFmt.format(new Date(iso)) : '–');
export const formatDate = (iso) => (iso ? dateFmt.format(new Date(iso)) : '–');
export const formatLongDate = (iso) => (iso ? longDateFmt.format(new Date(iso)) : '–');
export const formatDateTime = (iso) => (iso ? `${dateTimeFmt.format(new Date(iso))} UTC` : '–');

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

const localFmts = new Map();
function localFmt(tz, zone) {
  const key = `${tz || 'UTC'}|${zone}`;
  if (!localFmts.has(key)) {
    const opts = { hour: '2-digit', minute: '2-digit', ...(zone ? { timeZoneName: 'short' } : {}) };
    let fmt;
    try {
      fmt = new Intl.DateTimeFormat('en-GB', { ...opts, timeZone: tz || 'UTC' });
    } catch {
      fmt = new Intl.DateTimeFormat('en-GB', { ...opts, timeZone: 'UTC' });
    }
    localFmts.set(key, fmt);
  }
  return localFmts.get(key);
}

/** "08:15 GMT": the local time at an airport, with its zone. */
export const formatLocal = (iso, tz) => (iso ? localFmt(tz, true).format(new Date(iso)) : '–');
/** "08:15": the local time without the zone (boards say the zone once). */
export const formatLocalShort = (iso, tz) => (iso ? localFmt(tz, false).format(new Date(iso)) : '–');

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
