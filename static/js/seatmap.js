// Seat map rendering, shared by the app (interactive) and the display (read-only).
//
// Interactive maps render every seat as a <button> inside an ARIA grid per cabin, with
// a full aria-label ("Seat 12A, economy, window, available"), the state also shown by
// a symbol/pattern, and roving-tabindex arrow-key navigation across the whole map.

import { cabinName } from './format.js';

const STATUS_TEXT = {
  available: 'available',
  held: 'held',
  booked: 'booked',
  selected: 'selected',
  mine: 'in your booking',
};

/** Derive a layout from seats when the server does not send one. */
export function deriveLayout(seats) {
  const cabins = new Map();
  for (const s of seats) {
    const m = /^(\d+)([A-Z])$/.exec(s.seat);
    const row = s.row ?? (m ? Number(m[1]) : 0);
    const col = s.column ?? (m ? m[2] : s.seat);
    if (!cabins.has(s.cabin)) cabins.set(s.cabin, { cabin: s.cabin, rows: new Set(), cols: new Set() });
    const c = cabins.get(s.cabin);
    c.rows.add(row);
    c.cols.add(col);
  }
  const order = ['first', 'business', 'premium', 'economy'];
  return {
    cabins: [...cabins.values()]
      .map((c) => ({ cabin: c.cabin, rows: [...c.rows].sort((a, b) => a - b), columns: [...c.cols].sort().join('') }))
      .sort((a, b) => a.rows[0] - b.rows[0] || order.indexOf(a.cabin) - order.indexOf(b.cabin)),
    exit_rows: seats.filter((s) => s.exit).map((s) => s.row).filter((v, i, a) => a.indexOf(v) === i),
  };
}

function seatFeatures(seat, exitRows) {
  const f = [];
  if (seat.window) f.push('window');
  if (seat.aisle) f.push('aisle');
  if (seat.exit || exitRows.has(seat.row)) f.push('exit row');
  return f;
}

export class SeatMap extends EventTarget {
  /**
   * @param {HTMLElement} container
   * @param {{interactive?: boolean, label?: string}} options
   */
  constructor(container, { interactive = true, label = 'Seat map' } = {}) {
    super();
    this.container = container;
    this.interactive = interactive;
    this.label = label;
    this.cells = new Map(); // seat -> element
    this.meta = new Map(); // seat -> seat object
    this.status = new Map(); // seat -> server status
    this.selected = new Set();
    this.mine = new Set();
    this.disabled = false;
    this.grid = []; // [{row, cabin, cells: [el|null], el}]
    this.focusSeat = null;
  }

  render(layout, seats) {
    this.container.textContent = '';
    this.cells.clear();
    this.grid = [];
    for (const s of seats) {
      this.meta.set(s.seat, s);
      this.status.set(s.seat, s.status);
    }
    const exitRows = new Set(layout.exit_rows || []);
    this.exitRows = exitRows;
    const root = document.createElement('div');
    root.className = `seatmap${this.interactive ? ' interactive' : ''}`;
    for (const cabin of layout.cabins) {
      const section = document.createElement('section');
      section.className = `cabin cabin-${cabin.cabin}`;
      const rows = cabin.rows;
      const title = document.createElement('h3');
      title.className = 'cabin-title';
      const gridId = `cabin-${cabin.cabin}-${Math.random().toString(36).slice(2, 7)}`;
      title.id = `${gridId}-title`;
      title.textContent = `${cabinName(cabin.cabin)} · rows ${rows[0]}–${rows[rows.length - 1]}`;
      section.append(title);

      const cols = [...cabin.columns];
      const template = ['var(--exit-col)', 'var(--rownum-col)']
        .concat(cols.map((c) => (c === ' ' ? 'var(--aisle-col)' : 'var(--seat-col)')))
        .concat(['var(--exit-col)'])
        .join(' ');

      const grid = document.createElement('div');
      grid.className = 'cabin-grid';
      grid.style.setProperty('--tpl', template);
      if (this.interactive) {
        grid.setAttribute('role', 'grid');
        grid.setAttribute('aria-labelledby', title.id);
      }

      // Column letters.
      const head = document.createElement('div');
      head.className = 'seat-row col-head';
      if (this.interactive) head.setAttribute('role', 'row');
      const rowHead = cellOf('span', 'rownum', '', this.interactive ? 'columnheader' : null);
      rowHead.append(Object.assign(document.createElement('span'), { className: 'visually-hidden', textContent: 'Row' }));
      head.append(spacer(), rowHead);
      for (const c of cols) {
        if (c === ' ') head.append(spacer('aisle'));
        else head.append(cellOf('span', 'col-letter', c, this.interactive ? 'columnheader' : null));
      }
      head.append(spacer());
      grid.append(head);

      for (const row of rows) {
        const isExit = exitRows.has(row);
        const rowEl = document.createElement('div');
        rowEl.className = `seat-row${isExit ? ' exit-row' : ''}`;
        if (this.interactive) rowEl.setAttribute('role', 'row');
        rowEl.append(exitMarker(isExit, 'left'));
        const num = cellOf('span', 'rownum', String(row), this.interactive ? 'rowheader' : null);
        rowEl.append(num);
        const rowCells = [];
        for (const c of cols) {
          if (c === ' ') {
            const a = spacer('aisle');
            a.textContent = String(row);
            rowEl.append(a);
            continue;
          }
          const id = `${row}${c}`;
          const seat = this.meta.get(id);
          if (!seat) {
            rowEl.append(spacer('noseat'));
            rowCells.push(null);
            continue;
          }
          let el;
          if (this.interactive) {
            const cell = document.createElement('span');
            cell.setAttribute('role', 'gridcell');
            cell.className = 'seat-cell';
            el = document.createElement('button');
            el.type = 'button';
            el.tabIndex = -1;
            cell.append(el);
            rowEl.append(cell);
          } else {
            el = document.createElement('span');
            el.setAttribute('role', 'img');
            rowEl.append(el);
          }
          el.className = 'seat';
          el.dataset.seat = id;
          el.dataset.cabin = seat.cabin;
          const mark = document.createElement('span');
          mark.className = 'mark';
          mark.setAttribute('aria-hidden', 'true');
          el.append(mark);
          this.cells.set(id, el);
          rowCells.push(el);
          this._paint(id);
        }
        rowEl.append(exitMarker(isExit, 'right'));
        grid.append(rowEl);
        this.grid.push({ row, cabin: cabin.cabin, cells: rowCells, el: rowEl });
      }
      section.append(grid);
      root.append(section);
    }
    this.container.append(root);
    if (this.interactive) {
      root.addEventListener('click', (e) => {
        const btn = e.target.closest('button.seat');
        if (btn) this._activate(btn.dataset.seat);
      });
      root.addEventListener('keydown', (e) => this._onKey(e));
      root.addEventListener('focusin', (e) => {
        const btn = e.target.closest('button.seat');
        if (btn) this._setRoving(btn.dataset.seat);
      });
      const first = this._firstFocusable();
      if (first) this._setRoving(first);
    }
  }

  /** Server status of a seat changed. */
  setStatus(seat, status) {
    this.status.set(seat, status);
    const m = this.meta.get(seat);
    if (m) m.status = status;
    this._paint(seat);
  }

  setSelected(seats) {
    const prev = this.selected;
    this.selected = new Set(seats);
    for (const s of new Set([...prev, ...this.selected])) this._paint(s);
  }

  setMine(seats) {
    const prev = this.mine;
    this.mine = new Set(seats);
    for (const s of new Set([...prev, ...this.mine])) this._paint(s);
  }

  setDisabled(disabled) {
    this.disabled = disabled;
    for (const s of this.cells.keys()) this._paint(s);
  }

  visualState(seat) {
    const st = this.status.get(seat);
    if (this.mine.has(seat) && st !== 'available') return 'mine';
    if (this.selected.has(seat) && st === 'available') return 'selected';
    return st || 'available';
  }

  _paint(seat) {
    const el = this.cells.get(seat);
    if (!el) return;
    const meta = this.meta.get(seat) || {};
    const vs = this.visualState(seat);
    el.dataset.status = this.status.get(seat) || 'available';
    el.dataset.state = vs;
    const parts = [`Seat ${seat}`, meta.cabin, ...seatFeatures(meta, this.exitRows || new Set()), STATUS_TEXT[vs] || vs];
    const label = parts.filter(Boolean).join(', ');
    el.setAttribute('aria-label', label);
    if (!this.interactive) el.title = label;
    if (this.interactive) {
      const usable = !this.disabled && (vs === 'available' || vs === 'selected');
      el.setAttribute('aria-disabled', usable ? 'false' : 'true');
      el.setAttribute('aria-pressed', vs === 'selected' ? 'true' : 'false');
    }
  }

  _activate(seat) {
    const vs = this.visualState(seat);
    if (this.disabled || (vs !== 'available' && vs !== 'selected')) {
      this.dispatchEvent(new CustomEvent('unavailable', { detail: { seat, state: vs } }));
      return;
    }
    this.dispatchEvent(new CustomEvent('toggle', { detail: { seat, selected: vs !== 'selected' } }));
  }

  _firstFocusable() {
    for (const r of this.grid) for (const c of r.cells) if (c) return c.dataset.seat;
    return null;
  }

  _setRoving(seat) {
    if (this.focusSeat && this.cells.get(this.focusSeat)) this.cells.get(this.focusSeat).tabIndex = -1;
    this.focusSeat = seat;
    const el = this.cells.get(seat);
    if (el) el.tabIndex = 0;
  }

  _position(seat) {
    for (let r = 0; r < this.grid.length; r++) {
      const i = this.grid[r].cells.findIndex((c) => c && c.dataset.seat === seat);
      if (i >= 0) return { r, i };
    }
    return null;
  }

  _moveTo(el) {
    if (!el) return;
    this._setRoving(el.dataset.seat);
    el.focus();
  }

  _onKey(e) {
    const btn = e.target.closest('button.seat');
    if (!btn) return;
    const pos = this._position(btn.dataset.seat);
    if (!pos) return;
    const { r, i } = pos;
    const row = this.grid[r].cells;
    const inRow = (cells, from, step) => {
      for (let k = from; k >= 0 && k < cells.length; k += step) if (cells[k]) return cells[k];
      return null;
    };
    const vertical = (step) => {
      for (let rr = r + step; rr >= 0 && rr < this.grid.length; rr += step) {
        const cells = this.grid[rr].cells;
        // Same relative position when the cabins have different widths.
        const target = cells.length === row.length ? i : Math.round((i / Math.max(1, row.length - 1)) * (cells.length - 1));
        const el = cells[target] || inRow(cells, target, -1) || inRow(cells, target, 1);
        if (el) return el;
      }
      return null;
    };
    let target = null;
    switch (e.key) {
      case 'ArrowRight': target = inRow(row, i + 1, 1); break;
      case 'ArrowLeft': target = inRow(row, i - 1, -1); break;
      case 'ArrowDown': target = vertical(1); break;
      case 'ArrowUp': target = vertical(-1); break;
      case 'Home':
        target = e.ctrlKey ? this.cells.get(this._firstFocusable()) : inRow(row, 0, 1);
        break;
      case 'End':
        if (e.ctrlKey) {
          const last = this.grid[this.grid.length - 1].cells;
          target = inRow(last, last.length - 1, -1);
        } else target = inRow(row, row.length - 1, -1);
        break;
      case 'PageDown': target = this._rowsAway(r, i, 5); break;
      case 'PageUp': target = this._rowsAway(r, i, -5); break;
      default: return;
    }
    e.preventDefault();
    this._moveTo(target);
  }

  _rowsAway(r, i, n) {
    const rr = Math.max(0, Math.min(this.grid.length - 1, r + n));
    const cells = this.grid[rr].cells;
    return cells[Math.min(i, cells.length - 1)] || cells.find(Boolean);
  }
}

function spacer(kind = '') {
  const s = document.createElement('span');
  s.className = `spacer ${kind}`.trim();
  s.setAttribute('aria-hidden', 'true');
  return s;
}

function cellOf(tag, cls, text, role, ariaLabel) {
  const el = document.createElement(tag);
  el.className = cls;
  el.textContent = text;
  if (role) el.setAttribute('role', role);
  if (ariaLabel) el.setAttribute('aria-label', ariaLabel);
  if (!role && !text) el.setAttribute('aria-hidden', 'true');
  return el;
}

function exitMarker(isExit, side) {
  const s = document.createElement('span');
  s.className = `exit-marker ${side}`;
  s.setAttribute('aria-hidden', 'true');
  if (isExit) s.textContent = side === 'left' ? '◄' : '►';
  return s;
}

/** Build a legend element. */
export function legend({ interactive = true } = {}) {
  const wrap = document.createElement('ul');
  wrap.className = 'legend';
  wrap.setAttribute('aria-label', 'Seat map legend');
  const items = [
    ['available', 'Available'],
    ...(interactive ? [['selected', 'Your selection']] : []),
    ['held', 'On hold'],
    ['booked', 'Booked'],
    ...(interactive ? [['mine', 'In your booking']] : []),
  ];
  for (const [state, text] of items) {
    const li = document.createElement('li');
    const sample = document.createElement('span');
    sample.className = 'seat sample';
    sample.dataset.state = state;
    sample.setAttribute('aria-hidden', 'true');
    const mark = document.createElement('span');
    mark.className = 'mark';
    sample.append(mark);
    li.append(sample, document.createTextNode(text));
    wrap.append(li);
  }
  const li = document.createElement('li');
  const ex = document.createElement('span');
  ex.className = 'exit-sample';
  ex.setAttribute('aria-hidden', 'true');
  ex.textContent = '◄ ►';
  li.append(ex, document.createTextNode('Exit row'));
  wrap.append(li);
  return wrap;
}
