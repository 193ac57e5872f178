// abgate's experiment page: the list of experiments, and per experiment its
// weights with the decisions that moved them, per-arm rates, latency and
// inference metrics, and each guardrail and primary comparison with its
// confidence sequence over time. Live from GET /v1/events (Server-Sent
// Events), polling GET /v1/experiments once a second when the stream is down.
//
// Safe by construction: no inline script or style (the CSP forbids both), no
// HTML built from data (text nodes only), and the admin token lives in
// sessionStorage and goes out in the Authorization header, never a cookie.
'use strict';

(function () {
  // ---- errors: kept where a person (and the browser test) can read them ----
  const errors = [];
  window.__abgateErrors = errors;
  function recordError(msg) {
    errors.push(String(msg));
    const el = document.getElementById('errors');
    if (el) {
      el.hidden = false;
      el.textContent = errors.join('\n');
    }
  }
  window.addEventListener('error', (e) => recordError('error: ' + (e.message || e.type)));
  window.addEventListener('unhandledrejection', (e) =>
    recordError('unhandled rejection: ' + ((e.reason && e.reason.message) || e.reason)));
  document.addEventListener('securitypolicyviolation', (e) =>
    recordError('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI));
  const consoleError = console.error.bind(console);
  console.error = function (...args) {
    recordError('console.error: ' + args.join(' '));
    consoleError(...args);
  };

  const TOKEN_KEY = 'abgate.admin_token';
  const MAX_CLIENT_POINTS = 4000;
  const COLORS = ['#175cd3', '#dc6803', '#067647', '#b42318', '#6941c6', '#0e9384', '#c11574', '#4e5ba6'];

  const state = {
    experiments: [],
    selected: null,
    history: null, // {lineage, series}
    decisions: [],
    charts: [], // {id, plot, build}
    lastEvent: 0,
    polling: null,
    historyLoading: false,
  };

  const $ = (id) => document.getElementById(id);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmt(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return '–';
    const d = digits === undefined ? 3 : digits;
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(2);
    return Number(x.toPrecision(d)).toString();
  }
  function pct(x) { return x === null || x === undefined ? '–' : fmt(x, 3) + '%'; }
  function when(ms) { return new Date(ms).toLocaleTimeString(); }

  // ---- the admin API ----
  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (_) { return ''; }
  }
  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    const t = token();
    if (t) headers.Authorization = 'Bearer ' + t;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const r = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
    });
    let json = null;
    try { json = await r.json(); } catch (_) { json = null; }
    return { status: r.status, ok: r.ok, json };
  }

  // ---- the list ----
  function stepText(e) {
    const a = e.analysis;
    return a && a.step ? a.step + '/' + a.steps.length : '–';
  }
  function verdictText(e) {
    const a = e.analysis;
    if (!a) return '–';
    return a.verdict || '–';
  }
  function weightsText(e) {
    return e.arms.map((a) => a.name + ' ' + fmt(a.weight, 4) + '%').join(' · ');
  }
  function decisionText(d) {
    if (!d) return '–';
    const s = d.reason && d.reason.summary ? ': ' + d.reason.summary : '';
    return d.kind + ' by ' + d.actor + s;
  }
  function renderList() {
    const body = $('list').tBodies[0];
    const rows = state.experiments.map((e) => {
      const tr = el('tr');
      tr.dataset.experiment = e.name;
      if (e.name === state.selected) tr.classList.add('selected');
      tr.append(
        el('td', 'name', e.name),
        el('td', 'state state-' + e.state, e.state.replace('_', ' ')),
        el('td', null, stepText(e)),
        el('td', null, weightsText(e)),
        el('td', 'verdict', verdictText(e)),
        el('td', 'last-decision', decisionText(e.last_decision)),
      );
      return tr;
    });
    body.replaceChildren(...rows);
    $('list-empty').hidden = state.experiments.length > 0;
  }
  $('list').addEventListener('click', (ev) => {
    const tr = ev.target.closest('tr[data-experiment]');
    if (tr) location.hash = '#' + encodeURIComponent(tr.dataset.experiment);
  });

  function selectedView() {
    return state.experiments.find((e) => e.name === state.selected) || null;
  }

  function renderSummary() {
    const e = selectedView();
    if (!e) return;
    $('detail-name').textContent = e.name;
    const a = e.analysis;
    const parts = ['state ' + e.state.replace('_', ' '), 'baseline ' + e.baseline, 'weights ' + weightsText(e)];
    if (a && a.explain) parts.push(a.explain);
    $('detail-summary').textContent = parts.join(' — ');
    renderWatch(e.watch);
    renderCapture(e.capture);
    const sel = $('promote-arm');
    const names = e.arms.map((x) => x.name);
    if (Array.from(sel.options).map((o) => o.value).join() !== names.join()) {
      sel.replaceChildren(...names.map((n) => { const o = el('option', null, n); o.value = n; return o; }));
    }
  }

  // The drift watch on the arm in force: its status, then each metric with
  // its e-statistic against the threshold and the means it compares.
  function renderWatch(w) {
    const box = $('detail-watch');
    box.hidden = !w;
    if (!w) return;
    const head = w.arm
      ? 'Drift watch: ' + w.status + ' on ' + w.arm + ' (reference: ' +
        (w.reference && w.reference.source === 'promoted' ? "the promoted arm's evidence window" : 'the first period of watching') + ')'
      : 'Drift watch: ' + w.status + (w.note ? ' (' + w.note + ')' : '');
    const lines = (w.metrics || []).map((m) => {
      if (m.state !== 'ok' && m.state !== 'drift') return m.metric + ': ' + m.state + (m.note ? ' (' + m.note + ')' : '');
      const mean = (x) => (x ? fmt(x.mean, 4) + ' over ' + x.n : '–');
      return m.metric + ' (' + m.harm + '): ' + m.state + ', e = ' + fmt(m.statistic) + ' of ' + fmt(m.threshold) +
        ', reference ' + mean(m.reference) + ', recent ' + mean(m.recent);
    });
    box.textContent = [head].concat(lines).join('\n');
    box.classList.toggle('alarm', w.status === 'drift');
  }

  // The capture of examples: its share and what it has kept or dropped.
  function renderCapture(c) {
    const box = $('detail-capture');
    box.hidden = !c;
    if (!c) return;
    const d = c.dropped || {};
    const dropped = (d.queue_full || 0) + (d.too_large || 0) + (d.write_failed || 0);
    const mib = (b) => ((b || 0) / 1048576).toFixed(1) + ' MiB';
    box.textContent = 'Capture: ' + c.percent + '% of requests, ' + c.written + ' examples written (' +
      mib(c.stored_bytes) + ' of ' + mib(c.max_total) + '), ' + c.evicted + ' evicted, ' + dropped + ' dropped' +
      (dropped ? ' (queue full ' + (d.queue_full || 0) + ', too large ' + (d.too_large || 0) +
        ', write failed ' + (d.write_failed || 0) + ')' : '');
  }

  // ---- evidence, for people ----
  function evidenceItems(v, out) {
    if (!v || typeof v !== 'object') return out;
    if (Array.isArray(v)) { v.forEach((x) => evidenceItems(x, out)); return out; }
    if ('metric' in v && 'estimate' in v) { out.push(v); return out; }
    Object.values(v).forEach((x) => evidenceItems(x, out));
    return out;
  }
  function evidenceText(reason) {
    const items = evidenceItems(reason && (reason.verdict || reason.drift), []);
    return items.map((x) => {
      if (Array.isArray(x.ci95)) {
        // A drift: the reference and the current mean, and the change.
        return x.metric + ' ' + x.direction + ': ' + fmt(x.reference.mean, 4) + ' → ' + fmt(x.now.mean, 4) +
          ', change ' + fmt(x.estimate) + ' [' + fmt(x.ci95[0]) + ', ' + fmt(x.ci95[1]) + '] (95%), e = ' +
          fmt(x.statistic) + ' of ' + fmt(x.threshold);
      }
      const ci = Array.isArray(x.ci) ? ' CS [' + fmt(x.ci[0]) + ', ' + (Math.abs(x.ci[1]) > 1e12 ? '∞' : fmt(x.ci[1])) + ']' : '';
      return x.metric + ' on ' + x.arm + ': ' + fmt(x.estimate) + ' (' + (x.effect || '') + ')' + ci +
        ', p = ' + fmt(x.p_value) + ' vs ' + fmt(x.threshold) + ', n = ' + x.units_arm + '/' + x.units_baseline;
    }).join('\n');
  }

  // ---- charts ----
  function chartWidth(container) {
    return Math.max(300, (container.clientWidth || 600) - 4);
  }
  function seriesByName(name) {
    return state.history && state.history.series.find((s) => s.name === name);
  }
  function column(s, field) {
    const i = s.fields.indexOf(field);
    return s.points.map((p) => (i < 0 ? null : p[i + 1]));
  }
  function times(s) { return s.points.map((p) => p[0] / 1000); }
  function armSeries() {
    return state.history ? state.history.series.filter((s) => s.kind === 'arm') : [];
  }
  function comparisonSeries() {
    return state.history ? state.history.series.filter((s) => s.kind === 'comparison') : [];
  }
  function joined(tables) {
    if (tables.length === 0) return [[]];
    if (tables.length === 1) return tables[0];
    return uPlot.join(tables);
  }

  function placeMarkers(u, marks) {
    let layer = u.over.querySelector('.markers');
    if (!layer) { layer = el('div', 'markers'); u.over.append(layer); }
    const nodes = marks.map((m) => {
      const x = u.valToPos(m.t, 'x');
      const node = el('div', 'marker ' + m.cls);
      node.style.left = x + 'px';
      node.dataset.kind = m.kind || '';
      node.dataset.tip = m.tip;
      node.hidden = !(x >= 0 && x <= u.over.clientWidth);
      node.addEventListener('mouseenter', (ev) => showTip(m.tip, ev));
      node.addEventListener('mousemove', (ev) => showTip(m.tip, ev));
      node.addEventListener('mouseleave', hideTip);
      return node;
    });
    layer.replaceChildren(...nodes);
  }
  function showTip(text, ev) {
    const tip = $('tip');
    tip.textContent = text;
    tip.hidden = false;
    tip.style.left = Math.min(ev.clientX + 12, window.innerWidth - 490) + 'px';
    tip.style.top = ev.clientY + 12 + 'px';
  }
  function hideTip() { $('tip').hidden = true; }

  function decisionMarks() {
    return state.decisions.map((d) => ({
      t: d.created_at_ms / 1000,
      cls: 'kind-' + d.kind,
      kind: d.kind,
      tip: '#' + d.id + ' ' + d.kind + ' by ' + d.actor + ' at ' + when(d.created_at_ms) + '\n' +
        ((d.reason && d.reason.summary) || '') + (evidenceText(d.reason) ? '\n\nevidence:\n' + evidenceText(d.reason) : ''),
    }));
  }

  // A chart: `build()` gives {data, series, bands, marks}; redrawn in place.
  // A comparison's scale follows its estimate and tolerance: an early
  // confidence sequence is wide (its open end is cut off) and would flatten
  // everything that matters.
  function comparisonRange(u) {
    const vals = [];
    [2, 3, 4].forEach((i) => (u.data[i] || []).forEach((v) => { if (v !== null && v !== undefined) vals.push(v); }));
    if (vals.length === 0) return [0, 1];
    let lo = Math.min(...vals);
    let hi = Math.max(...vals);
    const est = (u.data[3] || []).filter((v) => v !== null && v !== undefined);
    if (est.length) hi = Math.max(hi, Math.max(...est) * 1.5);
    const pad = (hi - lo) * 0.1 || Math.abs(hi) * 0.1 || 1;
    return [lo - pad, hi + pad];
  }

  function makeChart(container, id, title, yLabel, build, options) {
    const box = el('div', 'chart');
    box.id = id;
    box.append(el('div', 'chart-title', title));
    container.append(box);
    const first = build();
    const opts = {
      width: chartWidth(box),
      height: 200,
      scales: Object.assign({ x: { time: true } }, (options && options.scales) || {}),
      series: [{}].concat(first.series),
      bands: first.bands || [],
      axes: [{}, { label: yLabel, size: 60 }],
      legend: { live: true },
      hooks: { draw: [(u) => placeMarkers(u, build().marks || [])] },
    };
    const plot = new uPlot(opts, first.data, box);
    const chart = { id, box, plot, build, signature: first.series.map((s) => s.label).join('|') };
    box.dataset.points = String(first.data[0].length);
    state.charts.push(chart);
    return chart;
  }

  function armTable(field, scale) {
    const arms = armSeries();
    const tables = arms.map((s) => [times(s), column(s, field).map((v) => (v === null || v === undefined ? null : v * (scale || 1)))]);
    return { data: joined(tables), series: arms.map((s, i) => ({ label: s.arm, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false })) };
  }
  function armTable2(f1, f2, label1, label2) {
    const arms = armSeries();
    const tables = arms.map((s) => [times(s), column(s, f1), column(s, f2)]);
    const series = [];
    arms.forEach((s, i) => {
      series.push({ label: s.arm + ' ' + label1, stroke: COLORS[i % COLORS.length], width: 1.5 });
      series.push({ label: s.arm + ' ' + label2, stroke: COLORS[i % COLORS.length], width: 1, dash: [4, 3] });
    });
    return { data: joined(tables), series };
  }

  function comparisonBuild(name) {
    return () => {
      const s = seriesByName(name);
      if (!s) return { data: [[], [], [], [], []], series: [] };
      const xs = times(s);
      const est = column(s, 'estimate');
      const lo = column(s, 'lo');
      const hi = column(s, 'hi');
      const tol = column(s, 'tolerance');
      const p = column(s, 'p_value');
      const th = column(s, 'threshold');
      const marks = decisionMarks();
      const cross = p.findIndex((v, i) => v !== null && th[i] !== null && v <= th[i]);
      if (cross >= 0) {
        marks.push({ t: xs[cross], cls: 'crossing', kind: 'crossing',
          tip: 'crossed at ' + when(s.points[cross][0]) + ': p = ' + fmt(p[cross]) + ' ≤ ' + fmt(th[cross]) +
            '\nestimate ' + fmt(est[cross]) + ', CS [' + fmt(lo[cross]) + ', ' + fmt(hi[cross]) + '], tolerance ' + fmt(tol[cross]) });
      }
      return {
        data: [xs, hi, lo, est, tol],
        series: [
          { label: 'CS upper', stroke: '#98a2b3', width: 1 },
          { label: 'CS lower', stroke: '#98a2b3', width: 1 },
          { label: 'estimate', stroke: '#175cd3', width: 2 },
          { label: 'tolerance', stroke: '#b42318', width: 1.5, dash: [6, 4] },
        ],
        bands: [{ series: [1, 2], fill: 'rgba(23, 92, 211, 0.12)' }],
        marks,
      };
    };
  }

  const INFERENCE = [
    ['ttft_ms', 'Time to first token', 'ms'],
    ['itl_ms', 'Inter-token latency', 'ms'],
    ['completion_tokens', 'Completion tokens per response', 'tokens'],
    ['cost', 'Cost per response', 'cost'],
    ['stream_incomplete', 'Streams cut short', 'fraction'],
  ];

  function buildCharts() {
    state.charts.forEach((c) => c.plot.destroy());
    state.charts = [];
    $('chart-weights').replaceChildren();
    $('arm-charts').replaceChildren();
    $('comparison-charts').replaceChildren();
    if (!state.history) return;
    makeChart($('chart-weights'), 'weights', 'Weight per arm (%)', '%', () => {
      const t = armTable('weight');
      t.series.forEach((s) => { s.paths = uPlot.paths.stepped({ align: 1 }); });
      t.marks = decisionMarks();
      return t;
    });
    const arms = $('arm-charts');
    makeChart(arms, 'rps', 'Requests per second', 'req/s', () => armTable('rps'));
    makeChart(arms, 'errors', 'Error rate (%)', '%', () => armTable('error_rate', 100));
    makeChart(arms, 'latency', 'Latency p50 / p99 (ms)', 'ms', () => armTable2('p50_ms', 'p99_ms', 'p50', 'p99'));
    INFERENCE.forEach(([field, title, unit]) => {
      const any = armSeries().some((s) => column(s, field).some((v) => v !== null && v !== undefined));
      if (any) makeChart(arms, 'inf-' + field, title, unit, () => armTable(field));
    });
    const comps = comparisonSeries();
    $('no-comparisons').hidden = comps.length > 0;
    comps.forEach((s) => {
      const scale = { rate_ratio: 'rate ratio to the baseline', relative: 'relative change', absolute: 'difference' }[s.effect] || s.effect;
      const sense = s.role === 'guardrail' ? 'harm is an ' : 'better is an ';
      const title = s.role + ' ' + s.metric + ' on ' + s.arm + ' — ' + scale + '; ' + sense + s.direction;
      makeChart($('comparison-charts'), 'cmp-' + s.name.replace(/[^a-zA-Z0-9_-]/g, '_'), title, scale, comparisonBuild(s.name),
        { scales: { y: { range: (u) => comparisonRange(u) } } });
    });
  }

  function redrawCharts() {
    for (const c of state.charts) {
      const b = c.build();
      const signature = b.series.map((s) => s.label).join('|');
      if (signature !== c.signature) { buildCharts(); return; }
      c.plot.setData(b.data);
      c.box.dataset.points = String(b.data[0].length);
    }
  }

  function renderDecisions() {
    const rows = state.decisions.slice().reverse().map((d) => {
      const tr = el('tr', 'decision kind-' + d.kind);
      tr.dataset.kind = d.kind;
      tr.append(
        el('td', null, d.id),
        el('td', null, when(d.created_at_ms)),
        el('td', 'kind', d.kind),
        el('td', null, d.actor),
        el('td', 'reason', (d.reason && d.reason.summary) || ''),
        el('td', 'evidence', evidenceText(d.reason)),
      );
      return tr;
    });
    $('decisions').tBodies[0].replaceChildren(...rows);
  }

  async function loadHistory() {
    const name = state.selected;
    if (!name || state.historyLoading) return;
    state.historyLoading = true;
    try {
      const enc = encodeURIComponent(name);
      const [h, d] = await Promise.all([
        api('GET', '/v1/experiments/' + enc + '/history'),
        api('GET', '/v1/decisions?experiment=' + enc + '&limit=500'),
      ]);
      if (name !== state.selected) return;
      if (h.ok) {
        const first = !state.history;
        state.history = h.json;
        state.history.series = state.history.series || [];
        state.decisions = d.ok ? d.json.decisions.slice().reverse() : [];
        renderDecisions();
        if (first || state.charts.length === 0) buildCharts(); else redrawCharts();
      } else {
        $('detail-summary').textContent = (h.json && h.json.detail) || ('history: HTTP ' + h.status);
      }
    } finally {
      state.historyLoading = false;
    }
  }

  function select(name) {
    if (name === state.selected) return;
    state.selected = name;
    state.history = null;
    state.decisions = [];
    buildCharts();
    $('detail').hidden = !name;
    $('action-result').textContent = '';
    renderList();
    renderSummary();
    loadHistory();
  }

  // ---- live ----
  // How long each update took to draw (ms), for people and the browser test.
  const renders = { count: 0, lastMs: 0, maxMs: 0 };
  window.__abgateRenders = renders;
  function applyList(list) {
    const t0 = performance.now();
    state.experiments = list;
    renderList();
    renderSummary();
    const ms = performance.now() - t0;
    renders.count += 1;
    renders.lastMs = ms;
    renders.maxMs = Math.max(renders.maxMs, ms);
    if (!state.selected && list.length > 0 && !location.hash) {
      location.hash = '#' + encodeURIComponent(list[0].name);
    }
  }
  function applyPoints(points) {
    if (!state.history) return;
    let unknown = false;
    for (const p of points) {
      if (p.experiment !== state.selected) continue;
      const s = seriesByName(p.series);
      if (!s) { unknown = true; continue; }
      s.points.push(p.point);
      if (s.points.length > MAX_CLIENT_POINTS) s.points.splice(0, s.points.length - MAX_CLIENT_POINTS);
    }
    if (unknown) loadHistory(); else redrawCharts();
  }
  function setLive(text, cls) {
    const l = $('live');
    l.textContent = text;
    l.className = 'live ' + (cls || '');
  }
  function startPolling() {
    if (state.polling) return;
    setLive('live (polling)', 'poll');
    state.polling = setInterval(async () => {
      if (Date.now() - state.lastEvent < 3000) { stopPolling(); return; }
      const r = await api('GET', '/v1/experiments');
      if (r.ok) applyList(r.json.experiments);
      loadHistory();
    }, 1000);
  }
  function stopPolling() {
    if (state.polling) { clearInterval(state.polling); state.polling = null; }
    setLive('live', 'on');
  }
  function connect() {
    if (!window.EventSource) { startPolling(); return; }
    const es = new EventSource('/v1/events');
    es.addEventListener('tick', (ev) => {
      state.lastEvent = Date.now();
      stopPolling();
      const t = JSON.parse(ev.data);
      applyList(t.experiments);
      applyPoints(t.points);
    });
    es.addEventListener('decision', (ev) => {
      state.lastEvent = Date.now();
      const d = JSON.parse(ev.data);
      if (d.experiment === state.selected) loadHistory();
    });
    es.addEventListener('error', () => {
      // The browser reconnects on its own; until a tick arrives again, poll.
      if (Date.now() - state.lastEvent > 2000) startPolling();
    });
    // A stream that opens but never ticks (a proxy buffering it) also polls.
    setInterval(() => { if (Date.now() - state.lastEvent > 3000) startPolling(); }, 1000);
  }

  // ---- manual actions ----
  async function act(verb) {
    const name = state.selected;
    if (!name) return;
    const out = $('action-result');
    out.className = '';
    out.textContent = verb + '…';
    const body = verb === 'promote' ? { arm: $('promote-arm').value } : undefined;
    const r = await api('POST', '/v1/experiments/' + encodeURIComponent(name) + '/' + verb, body);
    if (r.ok) {
      out.className = 'done';
      out.textContent = verb + ' done (decision #' + r.json.decision_id + ')';
      if (r.json.experiment && r.json.experiment.name) {
        state.experiments = state.experiments.map((e) => (e.name === name ? r.json.experiment : e));
        renderList();
        renderSummary();
      }
      loadHistory();
    } else {
      out.className = 'refused';
      const why = (r.json && (r.json.detail || r.json.title)) || '';
      out.textContent = verb + ' refused (' + r.status + '): ' + why +
        (r.status === 401 ? ' — enter the admin token above' : '');
    }
  }
  $('actions').addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-action]');
    if (b) act(b.dataset.action);
  });

  // ---- token ----
  function showTokenState() {
    $('token-state').textContent = token() ? 'token set for this tab' : 'read-only';
  }
  $('token-save').addEventListener('click', () => {
    const v = $('token').value.trim();
    try {
      if (v) sessionStorage.setItem(TOKEN_KEY, v); else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage off: the token cannot be kept */ }
    $('token').value = '';
    showTokenState();
  });
  $('token-forget').addEventListener('click', () => {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* nothing kept */ }
    showTokenState();
  });

  window.addEventListener('hashchange', () => select(decodeURIComponent(location.hash.slice(1)) || null));
  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => state.charts.forEach((c) => c.plot.setSize({ width: chartWidth(c.box), height: 200 })), 150);
  });

  async function start() {
    showTokenState();
    const r = await api('GET', '/v1/experiments');
    if (r.ok) applyList(r.json.experiments);
    if (location.hash) select(decodeURIComponent(location.hash.slice(1)));
    connect();
  }
  start();
})();
