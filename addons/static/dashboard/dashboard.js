/* Portico analytics dashboard.
 *
 * Every chart is one query against <base>api/query (the `portico query` flags as URL
 * parameters); its "Download CSV" link is the same parameters against api/query.csv, so
 * the CSV is exactly the chart's data, written by the same code as `portico export`.
 * The page's own URL holds the view and every filter (bookmarkable); charts are drawn
 * with the vendored Chart.js, the map from the vendored Natural Earth land outline.
 */
(() => {
  'use strict';

  const body = document.body;
  const BASE = body.dataset.base;
  const API = BASE + 'api/';
  // Okabe-Ito: distinguishable with the common colour-vision deficiencies
  const PALETTE = ['#0072B2', '#E69F00', '#009E73', '#D55E00', '#CC79A7', '#56B4E9', '#8C7A00', '#000000'];
  const MAX_PAGES = 20;
  const TOP = 12;
  const VIEWS = ['overview', 'accounts', 'enrolments', 'outreach', 'funnel', 'map', 'security'];
  const PAGE_KEYS = ['from', 'to', 'interval', 'tz', 'near', 'bbox', 'org', 'project', 'supply', 'need', 'touch',
    'series', 'within', 'by', 'geo_precision', 'maptype'];
  const charts = [];
  let state = {};
  let generation = 0;

  // ---- state <-> URL ----------------------------------------------------------------------

  function defaults() {
    return { view: 'overview', from: body.dataset.range || '-7d', to: 'now', interval: 'auto', tz: body.dataset.tz || 'UTC',
      filter: [], step: [], near: '', bbox: '', org: '', project: '', supply: '', need: '', touch: 'last',
      series: 'requests', within: '1d', by: 'user', geo_precision: '1', maptype: 'request' };
  }

  function readState() {
    const u = new URLSearchParams(location.search);
    const s = defaults();
    const view = u.get('view');
    if (view && VIEWS.includes(view)) s.view = view;
    for (const k of PAGE_KEYS) if (u.get(k) !== null && u.get(k) !== '') s[k] = u.get(k);
    s.filter = u.getAll('filter').filter(Boolean);
    s.step = u.getAll('step').filter(Boolean);
    return s;
  }

  function stateURL(s) {
    const d = defaults();
    const p = new URLSearchParams();
    p.set('view', s.view);
    for (const k of PAGE_KEYS) if (s[k] && s[k] !== d[k]) p.set(k, s[k]);
    for (const f of s.filter) p.append('filter', f);
    for (const st of s.step) p.append('step', st);
    return '?' + p.toString();
  }

  function go(changes, push = true) {
    state = Object.assign({}, state, changes);
    const url = stateURL(state);
    if (url !== location.search) history[push ? 'pushState' : 'replaceState'](null, '', url);
    render();
  }

  // ---- API --------------------------------------------------------------------------------

  function queryParams(extra) {
    const p = new URLSearchParams();
    p.set('from', state.from);
    p.set('to', state.to);
    p.set('tz', state.tz);
    for (const f of state.filter) p.append('filter', f);
    if (state.near) p.set('near', state.near);
    else if (state.bbox) p.set('bbox', state.bbox);
    for (const [k, v] of Object.entries(extra)) {
      if (v === undefined || v === null || v === '') continue;
      if (Array.isArray(v)) v.forEach((x) => p.append(k, x)); else p.set(k, v);
    }
    return p;
  }

  async function getJSON(endpoint, params) {
    let resp;
    try {
      resp = await fetch(API + endpoint + '?' + params.toString(), { headers: { Accept: 'application/json' }, credentials: 'same-origin' });
    } catch (e) {
      throw new Error('the gateway could not be reached (' + e.message + ')');
    }
    let data = null;
    try { data = await resp.json(); } catch (e) { /* not JSON: reported below */ }
    if (!resp.ok) {
      if (resp.status === 401 && data && data.login) { location.href = data.login; }
      const msg = data && data.error ? data.error.message : 'HTTP ' + resp.status;
      throw new Error(msg + (data && data.request_id ? ' (request id ' + data.request_id + ')' : ''));
    }
    return data;
  }

  /** Every page of a query (charts need all rows; the CSV endpoint walks pages itself). */
  async function queryAll(params) {
    let data = await getJSON('query', params);
    const rows = data.rows.slice();
    let pages = 1;
    while (data.next_page_token && pages < MAX_PAGES) {
      const p = new URLSearchParams(params);
      p.set('page_token', data.next_page_token);
      data = await getJSON('query', p);
      rows.push(...data.rows);
      pages += 1;
    }
    return Object.assign({}, data, { rows, next_page_token: null });
  }

  // ---- formatting -------------------------------------------------------------------------

  const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  const narrow = () => window.innerWidth < 600;

  /** A bucket label from the bucket's wall time in the query's zone (no browser-zone conversion). */
  function bucketLabel(iso, interval) {
    if (!iso) return '';
    const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})/.exec(iso);
    if (!m) return iso;
    const [, y, mo, d, h, mi] = m;
    const mon = MONTHS[Number(mo) - 1];
    const short = narrow();
    switch (interval) {
      case 'minute': return h + ':' + mi;
      case 'hour': return short ? h + 'h' : Number(d) + ' ' + mon + ' ' + h + ':00';
      case 'day': case 'week': return short ? Number(d) + '/' + Number(mo) : Number(d) + ' ' + mon;
      case 'month': return short ? mon : mon + ' ' + y;
      default: return iso;
    }
  }

  function fmtNumber(v, unit) {
    if (v === null || v === undefined || Number.isNaN(v)) return '–';
    if (unit === '%') return (Math.round(v * 10) / 10).toFixed(1) + ' %';
    if (unit === 'bytes') {
      const units = ['B', 'KB', 'MB', 'GB', 'TB'];
      let i = 0; let x = v;
      while (Math.abs(x) >= 1000 && i < units.length - 1) { x /= 1000; i += 1; }
      return (i ? x.toFixed(1) : String(Math.round(x))) + ' ' + units[i];
    }
    if (unit === 'ms') return (v >= 100 ? Math.round(v) : Math.round(v * 10) / 10) + ' ms';
    return Number.isInteger(v) ? v.toLocaleString('en') : (Math.round(v * 100) / 100).toLocaleString('en');
  }

  function shortNumber(v) {
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(1).replace(/\.0$/, '') + 'G';
    if (a >= 1e6) return (v / 1e6).toFixed(1).replace(/\.0$/, '') + 'M';
    if (a >= 1e3) return (v / 1e3).toFixed(1).replace(/\.0$/, '') + 'k';
    return String(Math.round(v * 100) / 100);
  }

  const keyText = (v) => (v === null || v === undefined || v === '' ? '(none)' : Array.isArray(v) ? v.join(', ') : String(v));

  // ---- DOM helpers ------------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c.nodeType ? c : document.createTextNode(String(c)));
    return e;
  }

  /** A chart card: title, tools (CSV link), status line (loading/empty/error), plot, data table. */
  function card(id, title, opts = {}) {
    const csv = el('a', { class: 'csv', href: '#', download: 'portico-' + id + '.csv' }, 'Download CSV');
    const tools = el('div', { class: 'tools' }, opts.tools || [], opts.csv === false ? null : csv);
    const status = el('div', { class: 'status', role: 'status' }, 'Loading…');
    const plot = el('div', { class: 'plot' + (opts.short ? ' short' : '') });
    const canvas = el('canvas', { role: 'img', 'aria-label': title });
    if (!opts.noCanvas) plot.append(canvas);
    const table = el('div', { class: 'tablewrap' });
    const holder = opts.tableOpen ? table : el('details', { class: 'table' }, el('summary', {}, 'Data table'), table);
    const root = el('section', { class: 'card' + (opts.full ? ' full' : ''), 'data-chart': id, 'data-state': 'loading',
      'aria-labelledby': 'h-' + id }, el('div', { class: 'bar' }, el('h2', { id: 'h-' + id }, title), tools), status, plot, holder);
    return { id, root, csv, status, plot, canvas, table, chart: null,
      setCsv(endpoint, params) { csv.href = API + endpoint + '.csv?' + params.toString(); },
      loading() { root.dataset.state = 'loading'; status.className = 'status'; status.textContent = 'Loading…'; },
      empty(msg) { root.dataset.state = 'empty'; status.className = 'status'; status.textContent = msg || 'No data for these filters.'; },
      error(e) { root.dataset.state = 'error'; status.className = 'status error'; status.textContent = 'Error: ' + e.message; },
      ready() { root.dataset.state = 'ready'; } };
  }

  function renderTable(c, headers, rows, numeric) {
    const t = el('table', { class: 'data' },
      el('thead', {}, el('tr', {}, headers.map((h, i) => el('th', { scope: 'col', class: numeric[i] ? 'num' : null }, h)))),
      el('tbody', {}, rows.map((r) => el('tr', {}, r.map((v, i) => el('td', { class: numeric[i] ? 'num' : null, 'data-value': numeric[i] ? String(v.raw) : null }, numeric[i] ? v.text : v))))));
    c.table.replaceChildren(t);
  }

  function destroy(c) { if (c.chart) { c.chart.destroy(); c.chart = null; } }

  function axisOptions(unit, stacked, horizontal) {
    const valueAxis = { beginAtZero: true, stacked, ticks: { precision: unit ? undefined : 0, callback: (v) => (unit === '%' ? v + '%' : shortNumber(v)), maxTicksLimit: narrow() ? 5 : 8 } };
    const catAxis = { stacked, ticks: { autoSkip: true, maxRotation: 0, maxTicksLimit: narrow() ? 4 : 12,
      callback(value) { const l = this.getLabelForValue(value); const n = narrow() ? 14 : 32; return l.length > n ? l.slice(0, n - 1) + '…' : l; } } };
    return horizontal ? { x: valueAxis, y: catAxis } : { x: catAxis, y: valueAxis };
  }

  function drawChart(c, type, labels, sets, opts = {}) {
    destroy(c);
    const horizontal = !!opts.horizontal;
    c.chart = new window.Chart(c.canvas, {
      type,
      data: { labels, datasets: sets.map((s, i) => ({ label: s.name, data: s.values, backgroundColor: s.color || PALETTE[i % PALETTE.length],
        borderColor: s.color || PALETTE[i % PALETTE.length], borderWidth: type === 'line' ? 2 : 0, pointRadius: labels.length > 60 ? 0 : 2,
        tension: 0.2, fill: false })) },
      options: { responsive: true, maintainAspectRatio: false, animation: false, indexAxis: horizontal ? 'y' : 'x',
        interaction: { mode: 'index', intersect: false },
        plugins: { legend: { display: sets.length > 1 || !!opts.legend, position: 'bottom', labels: { boxWidth: 12, padding: 8 } },
          tooltip: { callbacks: { label: (ctx) => ctx.dataset.label + ': ' + fmtNumber(ctx.parsed[horizontal ? 'x' : 'y'], opts.unit) } } },
        scales: axisOptions(opts.unit, !!opts.stacked, horizontal) },
    });
  }

  // ---- data shaping -----------------------------------------------------------------------

  /** rows -> {buckets, groups, get(bucket, group)}; the group is the joined group-by key values. */
  function pivot(data, groupKeys) {
    const buckets = [];
    const seenB = new Set();
    const groups = [];
    const seenG = new Set();
    const cells = new Map();
    for (const r of data.rows) {
      const b = r.bucket || '';
      const g = groupKeys.length ? groupKeys.map((k) => keyText(r.keys[k])).join(' · ') : 'value';
      if (!seenB.has(b)) { seenB.add(b); buckets.push(b); }
      if (!seenG.has(g)) { seenG.add(g); groups.push(g); }
      cells.set(b + '\u0000' + g, (cells.get(b + '\u0000' + g) || 0) + (r.value || 0));
    }
    buckets.sort((a, b) => Date.parse(a) - Date.parse(b));
    return { buckets, groups, get: (b, g) => cells.get(b + '\u0000' + g) || 0 };
  }

  /** A time series chart (line or stacked bars) of one query, grouped by `by` keys. */
  async function seriesChart(c, params, opts = {}) {
    const data = await queryAll(params);
    const by = data.group_by || [];  // the query's grouping (a preset adds "type")
    c.setCsv('query', params);
    if (!data.rows.length || data.rows.every((r) => !r.value)) { c.empty(); return data; }
    const pv = pivot(data, by);
    const labels = pv.buckets.map((b) => bucketLabel(b, data.interval));
    let sets;
    if (opts.derive) sets = opts.derive(pv);
    else sets = pv.groups.map((g) => ({ name: opts.names ? opts.names(g) : g, values: pv.buckets.map((b) => pv.get(b, g)) }));
    c.ready();
    drawChart(c, opts.type || 'line', labels, sets, { stacked: !!opts.stacked, unit: opts.unit, legend: by.length > 0 && !opts.derive });
    renderTable(c, ['bucket (' + data.tz + ')', ...sets.map((s) => s.name)],
      pv.buckets.map((b, i) => [b, ...sets.map((s) => ({ raw: s.values[i], text: fmtNumber(s.values[i], opts.unit) }))]),
      [false, ...sets.map(() => true)]);
    return data;
  }

  /** Horizontal bars: totals (interval none) by one or more keys, largest first. */
  async function barsChart(c, params, opts = {}) {
    const data = await queryAll(params);
    const by = (data.group_by || []).filter((k) => k !== 'type' || !params.get('preset') || opts.stackKey === 'type');
    c.setCsv('query', params);
    if (!data.rows.length) { c.empty(); return data; }
    const rows = data.rows.slice().sort((a, b) => b.value - a.value);
    if (opts.stackKey) {
      const main = by.filter((k) => k !== opts.stackKey);
      const cats = [...new Set(rows.map((r) => main.map((k) => keyText(r.keys[k])).join(' · ')))].slice(0, TOP);
      const stacks = [...new Set(rows.map((r) => keyText(r.keys[opts.stackKey])))];
      const value = (cat, st) => rows.filter((r) => main.map((k) => keyText(r.keys[k])).join(' · ') === cat && keyText(r.keys[opts.stackKey]) === st)
        .reduce((a, r) => a + r.value, 0);
      const sets = stacks.map((st) => ({ name: opts.stackNames ? opts.stackNames(st) : st, values: cats.map((cat) => value(cat, st)) }));
      c.ready();
      drawChart(c, 'bar', cats, sets, { horizontal: true, stacked: true, unit: opts.unit });
    } else {
      // the chart draws the largest TOP; the table and the CSV hold every row
      const top = rows.slice(0, TOP);
      const labels = top.map((r) => by.map((k) => keyText(r.keys[k])).join(' · '));
      c.ready();
      drawChart(c, 'bar', labels, [{ name: opts.name || data.metric, values: top.map((r) => r.value) }], { horizontal: true, unit: opts.unit });
      if (rows.length > TOP) c.plot.setAttribute('title', 'Largest ' + TOP + ' of ' + rows.length + ' shown; the table and CSV have all');
    }
    renderTable(c, [...by, data.metric], rows.map((r) => [...by.map((k) => keyText(r.keys[k])), { raw: r.value, text: fmtNumber(r.value, opts.unit) }]),
      [...by.map(() => false), true]);
    return data;
  }

  function run(c, fn) {
    const gen = generation;
    c.loading();
    return Promise.resolve().then(fn).catch((e) => { if (gen === generation) c.error(e); });
  }

  // ---- views ------------------------------------------------------------------------------

  const interval = () => state.interval;

  const SERIES = {
    requests: { label: 'Requests', params: { type: 'request' } },
    visitors: { label: 'Visitors', params: { type: 'request', metric: 'users' } },
    pageviews: { label: 'Pageviews', params: { type: 'pageview' } },
    hit_ratio: { label: 'Cache hit ratio', unit: '%', params: { type: 'request', by: 'cache' },
      derive: (pv) => [{ name: 'hit ratio %', values: pv.buckets.map((b) => {
        const total = pv.groups.reduce((a, g) => a + pv.get(b, g), 0);
        const hits = pv.get(b, 'hit') + pv.get(b, 'stale');
        return total ? (100 * hits) / total : 0;
      }) }] },
    bytes_saved: { label: 'Bytes saved', unit: 'bytes', params: { type: 'request', metric: 'sum:resp_bytes', filter: ['cache=hit,stale'] } },
    error_rate: { label: 'Error rate', unit: '%', params: { type: 'request', by: 'status' },
      derive: (pv) => [{ name: 'errors (5xx) %', values: pv.buckets.map((b) => {
        let total = 0; let errors = 0;
        for (const g of pv.groups) { const v = pv.get(b, g); total += v; if (Number(g) >= 500) errors += v; }
        return total ? (100 * errors) / total : 0;
      }) }] },
    p95_latency: { label: 'p95 latency', unit: 'ms', params: { type: 'request', metric: 'p95:duration_ms' } },
  };

  function withFilters(extra) {
    // series-specific filters are added to the user's, like a second --filter flag
    const e = Object.assign({}, extra);
    const p = queryParams(Object.assign({}, e, { filter: undefined }));
    for (const f of e.filter || []) p.append('filter', f);
    return p;
  }

  function kpiCard() {
    const c = card('kpis', 'Totals for the selected range', { full: true, csv: false, noCanvas: true, tableOpen: true });
    c.plot.remove();
    const tiles = [
      ['requests', 'Requests', { type: 'request' }, (d) => sum(d)],
      ['visitors', 'Visitors', { type: 'request', metric: 'users' }, (d) => sum(d)],
      ['pageviews', 'Pageviews', { type: 'pageview' }, (d) => sum(d)],
      ['hit_ratio', 'Cache hit ratio', { type: 'request', by: 'cache' }, (d) => ratio(d, (r) => ['hit', 'stale'].includes(r.keys.cache)), '%'],
      ['bytes_saved', 'Bytes saved', { type: 'request', metric: 'sum:resp_bytes', filter: ['cache=hit,stale'] }, (d) => sum(d), 'bytes'],
      ['error_rate', 'Error rate (5xx)', { type: 'request', by: 'status' }, (d) => ratio(d, (r) => Number(r.keys.status) >= 500), '%'],
      ['p95_latency', 'p95 latency', { type: 'request', metric: 'p95:duration_ms' }, (d) => (d.rows.length ? d.rows[0].value : null), 'ms'],
    ];
    const sum = (d) => d.rows.reduce((a, r) => a + (r.value || 0), 0);
    const ratio = (d, pred) => { const t = sum(d); return t ? (100 * d.rows.filter(pred).reduce((a, r) => a + r.value, 0)) / t : null; };
    const grid = el('div', { class: 'kpis' });
    c.table.replaceChildren(grid);
    run(c, async () => {
      const results = await Promise.all(tiles.map(([, , p]) => queryAll(withFilters(Object.assign({ interval: 'none' }, p)))));
      grid.replaceChildren(...tiles.map(([id, label, , f, unit], i) => {
        const v = f(results[i]);
        return el('div', { class: 'kpi', 'data-kpi': id, 'data-value': v === null ? '' : String(v) },
          el('div', { class: 'label' }, label), el('div', { class: 'value' }, fmtNumber(v, unit)));
      }));
      c.ready();
    });
    return c;
  }

  function overview(main) {
    main.append(kpiCard().root);
    const seriesKey = SERIES[state.series] ? state.series : 'requests';
    const def = SERIES[seriesKey];
    const picker = el('div', { class: 'segmented', role: 'group', 'aria-label': 'Series' },
      Object.entries(SERIES).map(([k, s]) => el('button', { type: 'button', 'aria-pressed': String(k === seriesKey), 'data-series': k,
        onclick: () => go({ series: k }) }, s.label)));
    const ts = card('timeseries', def.label + ' over time', { full: true, tools: [picker] });
    main.append(ts.root);
    run(ts, () => seriesChart(ts, withFilters(Object.assign({ interval: interval() }, def.params)),
      { unit: def.unit, derive: def.derive, names: () => def.label }));
    const tops = [
      ['paths', 'Top paths', 'path'], ['ref_class', 'Referrers by source class', 'ref_class'],
      ['ref_host', 'Top referrer hosts', 'ref_host'], ['browsers', 'Browsers', 'browser'], ['os', 'Operating systems', 'os'],
      ['devices', 'Devices', 'device'], ['modules', 'Modules (routes)', 'route'], ['status', 'Status codes', 'status'],
    ];
    for (const [id, title, attr] of tops) {
      const c = card(id, title);
      main.append(c.root);
      run(c, () => barsChart(c, withFilters({ type: 'request', by: attr, interval: 'none', order: 'value_desc' }), { name: 'requests' }));
    }
  }

  function presetParams(extra) {
    return withFilters(Object.assign({ org: state.org, project: state.project }, extra));
  }

  function accounts(main) {
    const c = card('accounts', 'Accounts: joined, left, role changed', { full: true });
    main.append(c.root);
    run(c, () => seriesChart(c, presetParams({ preset: 'users', interval: interval() }), { type: 'bar', stacked: true }));
    const t = card('accounts_by_org', 'Accounts by org and type');
    main.append(t.root);
    run(t, () => barsChart(t, presetParams({ preset: 'users', by: 'org', interval: 'none', order: 'value_desc' }), { stackKey: 'type' }));
    const p = card('accounts_by_project', 'Accounts by project and type');
    main.append(p.root);
    run(p, () => barsChart(p, presetParams({ preset: 'users', by: 'project', interval: 'none', order: 'value_desc' }), { stackKey: 'type' }));
  }

  function enrolments(main) {
    const extra = { supply: state.supply, need: state.need };
    const c = card('enrolments', 'Enrolments: enrolled and unenrolled', { full: true });
    main.append(c.root);
    run(c, () => seriesChart(c, presetParams(Object.assign({ preset: 'enrolments', interval: interval() }, extra)), { type: 'bar', stacked: true }));
    const s = card('supplies', 'Supplies: enrolments offering each');
    main.append(s.root);
    const totals = card('supply_totals', 'Supplies: totals (e.g. hours)', { csv: false, noCanvas: true, tableOpen: true });
    totals.plot.remove();
    main.append(totals.root);
    const supplyNames = run(s, () => barsChart(s, presetParams(Object.assign({ type: 'enrolment.enrolled', by: 'supplies', interval: 'none', order: 'value_desc' }, extra)), { name: 'enrolments' }));
    run(totals, async () => {
      await supplyNames;
      const names = [...s.root.querySelectorAll('tbody tr td:first-child')].map((td) => td.textContent).filter((n) => n !== '(none)').slice(0, TOP);
      if (!names.length) { totals.empty('No supplies recorded for these filters.'); return; }
      const grid = el('div', { class: 'kpis' });
      const results = await Promise.all(names.map((n) => {
        const p = presetParams(Object.assign({ type: 'enrolment.enrolled', metric: 'sum:supplies.' + n, interval: 'none' }, extra));
        return queryAll(p).then((d) => [n, d, p]);
      }));
      grid.replaceChildren(...results.map(([n, d, p]) => {
        const v = d.rows.reduce((a, r) => a + (r.value || 0), 0);
        return el('div', { class: 'kpi', 'data-kpi': 'supply:' + n, 'data-value': String(v) }, el('div', { class: 'label' }, n),
          el('div', { class: 'value' }, fmtNumber(v)), el('a', { class: 'csv', href: API + 'query.csv?' + p.toString(), download: 'portico-supply-' + n + '.csv' }, 'CSV'));
      }));
      totals.table.replaceChildren(grid);
      totals.ready();
    });
    const n = card('needs', 'Needs (count)');
    main.append(n.root);
    run(n, () => barsChart(n, presetParams(Object.assign({ type: 'enrolment.enrolled', by: 'needs', interval: 'none', order: 'value_desc' }, extra)), { name: 'enrolments' }));
  }

  function outreach(main) {
    const touch = state.touch === 'first' ? 'first' : 'last';
    const summary = card('outreach_summary', 'Campaigns (' + touch + '-touch conversions)', { full: true, csv: false, noCanvas: true, tableOpen: true });
    summary.plot.remove();
    main.append(summary.root);
    const specs = {
      sends: withFilters({ type: 'email_sent', by: 'campaign', interval: 'none' }),
      opens: withFilters({ type: 'email_open', by: ['campaign', 'machine'], interval: 'none' }),
      clicks: withFilters({ type: 'link_click', by: ['campaign', 'machine'], interval: 'none' }),
      conversions: withFilters({ type: 'conversion', by: 'campaign_' + touch, interval: 'none', filter: ['campaign_' + touch + '?'] }),
    };
    const charts = [
      ['opens', 'Email opens by campaign (machine opens apart)', specs.opens],
      ['clicks', 'Link clicks by campaign (machine clicks apart)', specs.clicks],
      ['conversions', 'Conversions by campaign (' + touch + ' touch)', specs.conversions],
      ['sends', 'Sends by campaign (when recorded as email_sent)', specs.sends],
    ];
    const results = {};
    const done = [];
    for (const [id, title, params] of charts) {
      const c = card('outreach_' + id, title);
      main.append(c.root);
      const stack = id === 'opens' || id === 'clicks';
      done.push(run(c, async () => {
        results[id] = await barsChart(c, params, stack ? { stackKey: 'machine', stackNames: (v) => (v === 'true' ? 'machine' : 'human') } : {});
      }));
    }
    const overTime = card('outreach_time', 'Opens and clicks over time', { full: true });
    main.append(overTime.root);
    run(overTime, () => seriesChart(overTime, withFilters({ type: ['email_open', 'link_click'], by: 'type', interval: interval(), filter: ['machine=false'] }), { type: 'bar', stacked: true }));
    run(summary, async () => {
      await Promise.all(done);
      const per = new Map();
      const row = (camp) => { if (!per.has(camp)) per.set(camp, { sends: 0, opens: 0, machine_opens: 0, clicks: 0, machine_clicks: 0, conversions: 0 }); return per.get(camp); };
      for (const r of (results.sends || { rows: [] }).rows) row(keyText(r.keys.campaign)).sends += r.value;
      for (const r of (results.opens || { rows: [] }).rows) row(keyText(r.keys.campaign))[r.keys.machine === true || r.keys.machine === 'true' ? 'machine_opens' : 'opens'] += r.value;
      for (const r of (results.clicks || { rows: [] }).rows) row(keyText(r.keys.campaign))[r.keys.machine === true || r.keys.machine === 'true' ? 'machine_clicks' : 'clicks'] += r.value;
      for (const r of (results.conversions || { rows: [] }).rows) row(keyText(r.keys['campaign_' + touch])).conversions += r.value;
      if (!per.size) { summary.empty('No outreach events for these filters.'); return; }
      const num = (v, unit) => ({ raw: v, text: fmtNumber(v, unit) });
      const rows = [...per.entries()].sort((a, b) => b[1].opens - a[1].opens).map(([camp, v]) => {
        const base = v.sends || v.opens;
        return [camp, num(v.sends), num(v.opens), num(v.machine_opens), num(v.clicks), num(v.conversions), num(base ? (100 * v.clicks) / base : null, '%')];
      });
      renderTable(summary, ['campaign', 'sends', 'opens', 'machine opens', 'clicks', 'conversions', 'CTR'], rows, [false, true, true, true, true, true, true]);
      summary.table.append(el('p', { class: 'hint' }, 'CTR = human clicks / sends (or / human opens when sends are not recorded). Download each part from the charts below.'));
      summary.ready();
    });
  }

  function funnel(main) {
    const steps = state.step.length ? state.step : ['session.start', 'pageview', 'conversion'];
    const inputs = steps.concat(['']).map((s, i) => el('input', { value: s, 'aria-label': 'Step ' + (i + 1), placeholder: 'TYPE or TYPE,FILTER' }));
    const list = el('div', { class: 'steps' }, inputs);
    const within = el('input', { value: state.within, size: 6, 'aria-label': 'Within' });
    const by = el('input', { value: state.by, size: 8, 'aria-label': 'Actor attribute' });
    const form = el('form', { class: 'row', onsubmit: (ev) => {
      ev.preventDefault();
      go({ step: inputs.map((i) => i.value.trim()).filter(Boolean), within: within.value.trim(), by: by.value.trim() });
    } }, el('label', {}, 'Within', within), el('label', {}, 'Actor', by), el('button', { class: 'btn', type: 'submit' }, 'Run funnel'));
    const editor = el('section', { class: 'card full' }, el('h2', {}, 'Funnel steps (in order)'), list, form,
      el('p', { class: 'hint' }, 'Each step: an event type, optionally ",filter" (e.g. conversion,goal=signup). Add a step in the empty box.'));
    main.append(editor);
    const c = card('funnel', 'Conversion and drop-off per step', { full: true });
    main.append(c.root);
    const p = new URLSearchParams();
    p.set('from', state.from); p.set('to', state.to);
    steps.forEach((s) => p.append('step', s));
    p.set('within', state.within); p.set('by', state.by);
    run(c, async () => {
      const data = await getJSON('funnel', p);
      c.setCsv('funnel', p);
      if (!data.steps.length || !data.steps[0].entered) { c.empty('Nobody entered the first step in this range.'); }
      else c.ready();
      const first = data.steps.length ? data.steps[0].entered : 0;
      drawChart(c, 'bar', data.steps.map((s) => s.step + '. ' + s.type), [
        { name: 'converted', values: data.steps.map((s) => s.converted), color: PALETTE[2] },
        { name: 'dropped off', values: data.steps.map((s) => s.drop_off), color: PALETTE[3] }], { stacked: true });
      renderTable(c, ['step', 'type', 'entered', 'converted', 'drop-off', 'conversion', 'of first step'], data.steps.map((s) => [
        String(s.step), s.type, { raw: s.entered, text: fmtNumber(s.entered) }, { raw: s.converted, text: fmtNumber(s.converted) },
        { raw: s.drop_off, text: fmtNumber(s.drop_off) }, { raw: s.entered ? (100 * s.converted) / s.entered : 0, text: fmtNumber(s.entered ? (100 * s.converted) / s.entered : 0, '%') },
        { raw: first ? (100 * s.converted) / first : 0, text: fmtNumber(first ? (100 * s.converted) / first : 0, '%') }]),
      [false, false, true, true, true, true, true]);
    });
  }

  function security(main) {
    const defs = [
      ['alerts', 'Moderation alerts and blocks', { type: ['moderation.alert', 'moderation.blocked', 'moderation.warned', 'moderation.flagged'], by: 'type' }],
      ['phishing', 'Phishing verdicts (by action)', { type: 'phishing.detected', by: 'action' }],
      ['denied', 'Denied requests (access rules)', { type: 'access.denied', by: 'rule' }],
      ['refused', 'Refused requests (401/403)', { type: 'request', by: 'status', filter: ['status>=401', 'status<=403'] }],
      ['dns', 'DNS guard events', { type: ['dns.doh_detected', 'dns.plaintext_fallback'], by: 'type' }],
    ];
    for (const [id, title, params] of defs) {
      const c = card(id, title, { full: id === 'alerts' });
      main.append(c.root);
      run(c, () => seriesChart(c, withFilters(Object.assign({ interval: interval() }, params)), { type: 'bar', stacked: true }));
    }
    const k = card('phishing_kinds', 'Phishing verdicts by kind');
    main.append(k.root);
    run(k, () => barsChart(k, withFilters({ type: 'phishing.detected', by: 'kind', interval: 'none', order: 'value_desc' })));
  }

  // ---- map --------------------------------------------------------------------------------

  let landPath = null;
  async function land() {
    if (landPath) return landPath;
    const resp = await fetch(BASE + 'static/vendor/land-110m.json', { credentials: 'same-origin' });
    if (!resp.ok) throw new Error('map outline: HTTP ' + resp.status);
    const topo = await resp.json();
    const geo = window.topojson.feature(topo, topo.objects.land);
    const parts = [];
    // a ring that crosses the antimeridian jumps ~360 degrees: start a new subpath there
    // instead of drawing a line across the whole map
    const ring = (r) => r.map(([lon, lat], i) => (i && Math.abs(lon - r[i - 1][0]) > 180 ? 'M' : i ? 'L' : 'M')
      + (lon + 180).toFixed(2) + ',' + (90 - lat).toFixed(2)).join('') + 'Z';
    for (const f of geo.features || [geo]) {
      const g = f.geometry;
      const polys = g.type === 'Polygon' ? [g.coordinates] : g.type === 'MultiPolygon' ? g.coordinates : [];
      for (const poly of polys) for (const r of poly) parts.push(ring(r));
    }
    landPath = parts.join('');
    return landPath;
  }

  function map(main) {
    const NS = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('viewBox', '0 0 360 180');
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', 'World map of event counts');
    const gLand = document.createElementNS(NS, 'path');
    gLand.setAttribute('class', 'land');
    const gDots = document.createElementNS(NS, 'g');
    const boxEl = document.createElementNS(NS, 'rect');
    boxEl.setAttribute('class', 'box');
    svg.append(gLand, gDots, boxEl);
    let view = { x: 0, y: 0, w: 360, h: 180 };
    const setView = (v) => {
      const w = Math.min(360, Math.max(4, v.w));
      const h = w / 2;
      view = { x: Math.min(360 - w, Math.max(0, v.x)), y: Math.min(180 - h, Math.max(0, v.y)), w, h };
      svg.setAttribute('viewBox', `${view.x} ${view.y} ${view.w} ${view.h}`);
      redrawDots();
    };
    const zoom = (f, cx = view.x + view.w / 2, cy = view.y + view.h / 2) =>
      setView({ x: cx - (cx - view.x) * f, y: cy - (cy - view.y) * f, w: view.w * f });
    let drawing = false;
    const drawBtn = el('button', { type: 'button', 'aria-pressed': 'false', onclick: () => {
      drawing = !drawing; drawBtn.setAttribute('aria-pressed', String(drawing)); svg.classList.toggle('drawing', drawing);
    } }, 'Draw box');
    const precision = el('select', { 'aria-label': 'Cell size', onchange: () => go({ geo_precision: precision.value }) },
      [['0', '1° cells'], ['1', '0.1° cells'], ['2', '0.01° cells']].map(([v, t]) => el('option', { value: v, selected: v === state.geo_precision }, t)));
    const typeIn = el('input', { value: state.maptype, size: 14, 'aria-label': 'Event type', onchange: () => go({ maptype: typeIn.value.trim() || 'request' }) });
    const tools = el('div', { class: 'maptools' },
      el('button', { type: 'button', 'aria-label': 'Zoom in', onclick: () => zoom(0.5) }, '+'),
      el('button', { type: 'button', 'aria-label': 'Zoom out', onclick: () => zoom(2) }, '−'),
      el('button', { type: 'button', onclick: () => setView({ x: 0, y: 0, w: 360 }) }, 'World'),
      drawBtn,
      el('button', { type: 'button', onclick: () => go({ bbox: '', near: '' }) }, 'Clear area'),
      precision, typeIn);
    const c = card('map', 'Where events come from', { full: true, noCanvas: true, tools: [] });
    const box = el('div', { class: 'map' });
    box.append(svg);
    c.plot.className = 'plot-map';
    c.plot.append(tools, box, el('p', { class: 'hint' }, 'Scroll or +/− to zoom, drag to pan; "Draw box" then drag to filter every view by that area.'));
    main.append(c.root);
    // the current area filter, drawn
    const showBox = () => {
      const b = (state.bbox || '').split(',').map(Number);
      if (b.length === 4 && b.every(Number.isFinite)) {
        const [s, w, n, e] = b;
        boxEl.setAttribute('x', w + 180); boxEl.setAttribute('y', 90 - n);
        boxEl.setAttribute('width', Math.max(0, e - w)); boxEl.setAttribute('height', Math.max(0, n - s));
        boxEl.style.display = '';
      } else boxEl.style.display = 'none';
    };
    showBox();
    let cells = [];
    let maxCount = 1;
    function redrawDots() {
      const scale = view.w / 360;
      gDots.replaceChildren(...cells.map((r) => {
        const dot = document.createElementNS(NS, 'circle');
        dot.setAttribute('class', 'dot');
        dot.setAttribute('cx', (r.lon + 180).toFixed(3));
        dot.setAttribute('cy', (90 - r.lat).toFixed(3));
        dot.setAttribute('r', ((1.2 + 7 * Math.sqrt(r.value / maxCount)) * scale).toFixed(3));
        const t = document.createElementNS(NS, 'title');
        t.textContent = `${r.lat}, ${r.lon}: ${r.value}`;
        dot.append(t);
        return dot;
      }));
    }
    const toMap = (ev) => {
      const rect = svg.getBoundingClientRect();
      return [view.x + ((ev.clientX - rect.left) / rect.width) * view.w, view.y + ((ev.clientY - rect.top) / rect.height) * view.h];
    };
    let drag = null;
    svg.addEventListener('pointerdown', (ev) => { drag = { start: toMap(ev), view: Object.assign({}, view), px: [ev.clientX, ev.clientY] }; svg.setPointerCapture(ev.pointerId); });
    svg.addEventListener('pointermove', (ev) => {
      if (!drag) return;
      const p = toMap(ev);
      if (drawing) {
        const [x0, y0] = drag.start;
        boxEl.setAttribute('x', Math.min(x0, p[0])); boxEl.setAttribute('y', Math.min(y0, p[1]));
        boxEl.setAttribute('width', Math.abs(p[0] - x0)); boxEl.setAttribute('height', Math.abs(p[1] - y0));
        boxEl.style.display = '';
      } else {
        const rect = svg.getBoundingClientRect();
        setView({ x: drag.view.x - ((ev.clientX - drag.px[0]) / rect.width) * drag.view.w,
          y: drag.view.y - ((ev.clientY - drag.px[1]) / rect.height) * drag.view.h, w: drag.view.w });
      }
    });
    svg.addEventListener('pointerup', (ev) => {
      if (!drag) return;
      const start = drag.start;
      drag = null;
      if (!drawing) return;
      const p = toMap(ev);
      const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
      const w = clamp(Math.min(start[0], p[0]) - 180, -180, 180); const e = clamp(Math.max(start[0], p[0]) - 180, -180, 180);
      const n = clamp(90 - Math.min(start[1], p[1]), -90, 90); const s = clamp(90 - Math.max(start[1], p[1]), -90, 90);
      if (e - w < 0.01 || n - s < 0.01) { showBox(); return; }
      const r2 = (v) => Math.round(v * 100) / 100;
      go({ bbox: [r2(s), r2(w), r2(n), r2(e)].join(','), near: '' });
    });
    svg.addEventListener('wheel', (ev) => { ev.preventDefault(); const [x, y] = toMap(ev); zoom(ev.deltaY < 0 ? 0.8 : 1.25, x, y); }, { passive: false });
    run(c, async () => {
      const params = withFilters({ type: state.maptype, by: 'geo_cell', interval: 'none', geo_precision: state.geo_precision, order: 'value_desc', limit: 10000 });
      const [outline, data] = await Promise.all([land(), queryAll(params)]);
      gLand.setAttribute('d', outline);
      c.setCsv('query', params);
      cells = data.rows.map((r) => ({ lat: Number(r.keys.lat), lon: Number(r.keys.lon), value: r.value })).filter((r) => Number.isFinite(r.lat) && Number.isFinite(r.lon));
      maxCount = Math.max(1, ...cells.map((r) => r.value));
      redrawDots();
      renderTable(c, ['lat', 'lon', data.metric], cells.map((r) => [String(r.lat), String(r.lon), { raw: r.value, text: fmtNumber(r.value) }]), [false, false, true]);
      c.ready();
      if (!cells.length) c.status.textContent = 'No located events for these filters.';
    });
  }

  // ---- page -------------------------------------------------------------------------------

  const RENDER = { overview, accounts, enrolments, outreach, funnel, map, security };

  function syncForm() {
    const form = document.getElementById('filters');
    for (const k of ['from', 'to', 'interval', 'tz', 'near', 'bbox', 'org', 'project', 'supply', 'need', 'touch']) {
      if (form.elements[k]) form.elements[k].value = state[k] || '';
    }
    form.elements.filter.value = state.filter.join('; ');
    for (const label of form.querySelectorAll('label[data-for]')) label.hidden = !label.dataset.for.split(' ').includes(state.view);
    for (const a of document.querySelectorAll('nav.views a')) {
      if (a.dataset.view === state.view) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
      const s = Object.assign({}, state, { view: a.dataset.view });
      a.href = stateURL(s);
    }
  }

  function render() {
    generation += 1;
    for (const c of charts.splice(0)) destroy(c);
    for (const inst of Object.values(window.Chart ? window.Chart.instances || {} : {})) inst.destroy();
    syncForm();
    const main = document.getElementById('view');
    main.replaceChildren();
    document.title = 'Portico analytics · ' + document.querySelector(`nav.views a[data-view="${state.view}"]`).textContent;
    RENDER[state.view](main);
  }

  document.getElementById('filters').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const f = ev.target.elements;
    const changes = {};
    for (const k of ['from', 'to', 'interval', 'tz', 'near', 'bbox', 'org', 'project', 'supply', 'need', 'touch']) changes[k] = f[k].value.trim();
    changes.filter = f.filter.value.split(';').map((x) => x.trim()).filter(Boolean);
    if (changes.near && changes.bbox) changes.bbox = '';
    go(changes);
  });
  document.querySelector('nav.views').addEventListener('click', (ev) => {
    const a = ev.target.closest('a[data-view]');
    if (!a) return;
    ev.preventDefault();
    go({ view: a.dataset.view });
  });
  window.addEventListener('popstate', () => { state = readState(); render(); });
  let resizeTimer = null;
  let lastNarrow = narrow();
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (narrow() !== lastNarrow) { lastNarrow = narrow(); render(); } }, 200);
  });

  state = readState();
  history.replaceState(null, '', stateURL(state));
  render();
  window.porticoDashboard = { state: () => Object.assign({}, state), go };
})();
