// Tiny DOM helpers.

/** The element with this id. */
export const byId = (id) => document.getElementById(id);

/**
 * Keeps the <time> element `el` showing `text(nowIso)`, refreshed every five seconds;
 * returns the refresh, for a change of what `text` shows.
 */
export function runClock(el, text) {
  const tick = () => {
    const now = new Date().toISOString();
    el.textContent = text(now);
    el.dateTime = now;
  };
  tick();
  setInterval(tick, 5000);
  return tick;
}

/**
 * h('div', {class: 'x', onclick: fn, 'aria-label': '...'}, child, 'text', [more])
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value') el.value = v;
    else if (k === 'checked' || k === 'disabled' || k === 'selected' || k === 'required' || k === 'hidden') el[k] = !!v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.append(c);
    else el.append(document.createTextNode(String(c)));
  }
}

export function clear(el) {
  el.textContent = '';
  return el;
}

let toastRegion;
export function toast(message, kind = 'info', ms = 6000) {
  if (!toastRegion) toastRegion = document.getElementById('toasts');
  if (!toastRegion) return;
  const t = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, message);
  toastRegion.append(t);
  setTimeout(() => {
    t.classList.add('leaving');
    setTimeout(() => t.remove(), 300);
  }, ms);
}

/**
 * Shows `content` in a modal dialog (its title carries id="dlg-title") and resolves with
 * `result(returnValue)` once it closes; `content` may be a function of the dialog.
 */
export function modal(content, result = (value) => value) {
  return new Promise((resolve) => {
    const dlg = h('dialog', { class: 'dialog', 'aria-labelledby': 'dlg-title' });
    append(dlg, [typeof content === 'function' ? content(dlg) : content]);
    dlg.addEventListener('close', () => {
      resolve(result(dlg.returnValue));
      dlg.remove();
    });
    document.body.append(dlg);
    dlg.showModal();
  });
}

/** A modal confirm dialog; resolves true/false. */
export function confirmDialog({ title, body, confirm = 'Confirm', cancel = 'Keep', danger = false }) {
  return modal(
    (dlg) => [
      h('h2', { id: 'dlg-title' }, title),
      h('div', { class: 'dialog-body' }, body),
      h(
        'div',
        { class: 'dialog-actions' },
        h('button', { type: 'button', class: 'btn btn-ghost', value: 'no', onclick: () => dlg.close('no') }, cancel),
        h('button', { type: 'button', class: `btn ${danger ? 'btn-danger' : 'btn-primary'}`, value: 'yes', onclick: () => dlg.close('yes') }, confirm),
      ),
    ],
    (value) => value === 'yes',
  );
}

export function statusBadge(status) {
  const text = {
    held: 'On hold',
    confirmed: 'Confirmed',
    cancelled: 'Cancelled',
    expired: 'Expired',
    refunded: 'Refunded',
    paid: 'Paid',
    partially_refunded: 'Partly refunded',
    scheduled: 'Scheduled',
    delayed: 'Delayed',
    boarding: 'Boarding',
    departed: 'Departed',
  }[status] || status;
  return h('span', { class: `badge badge-${status}` }, text);
}

/** Keeps `el` saying how many people view the feed's flight; returns a stop function. */
export function followViewers(feed, el) {
  const show = () => {
    if (feed.viewers === null) return;
    el.dataset.value = String(feed.viewers);
    el.textContent = feed.viewers === 1 ? '1 person is viewing this flight' : `${feed.viewers} people are viewing this flight`;
  };
  feed.addEventListener('viewers', show);
  show();
  return () => feed.removeEventListener('viewers', show);
}

/**
 * Keeps a page's connection indicator (`data-state` live | reconnecting | connecting,
 * its text in `textSelector`, body.is-offline) in step with the client; `onChange(name)`
 * hears each state too.
 */
export function followConnection(client, indicator, textSelector, onChange = () => {}) {
  client.addEventListener('state', (e) => {
    const { state, ready } = e.detail;
    const name = state === 'open' && ready ? 'live' : state === 'reconnecting' ? 'reconnecting' : 'connecting';
    indicator.dataset.state = name;
    indicator.querySelector(textSelector).textContent = { live: 'Live', reconnecting: 'Reconnecting…', connecting: 'Connecting…' }[name];
    document.body.classList.toggle('is-offline', name === 'reconnecting');
    onChange(name);
  });
}
