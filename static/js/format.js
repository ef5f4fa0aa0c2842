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
