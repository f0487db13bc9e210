// kubectl canary dashboard: lays out the views the dashboard pushes (Server-Sent Events) and
// sends the actions. Every number and sentence comes from the server; this only draws.
'use strict';

const config = JSON.parse(document.getElementById('config').textContent);
const main = document.getElementById('main');
const live = document.getElementById('live');
let stream = null;
let busy = false;
let lastDetail = null;

// ---- DOM helpers -------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : v);
  }
}

function append(node, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

const enc = encodeURIComponent;

function time(t) {
  return t ? new Date(t).toLocaleTimeString() : '-';
}

function ago(t) {
  if (!t) return '';
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

function weightBar(bp, big) {
  const bar = el('span', { class: big ? 'weightbar big' : 'weightbar', title: `canary ${bp / 100}% · stable ${100 - bp / 100}%` });
  const fill = el('span');
  fill.style.width = `${bp / 100}%`;
  bar.append(fill);
  return bar;
}

function badge(text) {
  return el('span', { class: `badge ${text}`, text });
}

function health(h) {
  return el('span', { class: `health ${h.level}`, text: h.text || h.level });
}

function problems(list) {
  if (!list || !list.length) return null;
  return el('div', { class: 'problems' }, list.map((p) => el('p', { text: p })));
}

// ---- Live connection ---------------------------------------------------------------------

function connect(url, handlers) {
  if (stream) stream.close();
  setLive('connecting');
  stream = new EventSource(url);
  stream.onopen = () => setLive('live');
  stream.onerror = () => setLive('reconnecting');
  for (const [name, handler] of Object.entries(handlers)) {
    stream.addEventListener(name, (e) => {
      setLive('live');
      handler(JSON.parse(e.data));
    });
  }
}

function setLive(state) {
  live.dataset.state = state;
  live.textContent = { live: 'live', connecting: 'connecting', reconnecting: 'reconnecting…' }[state];
}

// ---- Routing -----------------------------------------------------------------------------

function route() {
  const m = location.hash.match(/^#\/rollouts\/([^/]+)\/([^/]+)$/);
  if (m) {
    const [ns, name] = [decodeURIComponent(m[1]), decodeURIComponent(m[2])];
    lastDetail = null;
    main.replaceChildren(el('p', { class: 'empty', text: `Loading ${name}…` }));
    connect(`/api/rollouts/${enc(ns)}/${enc(name)}/stream`, {
      detail: (view) => { lastDetail = view; render(detailView(view)); },
      gone: (e) => render(el('div', null, backLink(), el('p', { class: 'empty', text: e.error }))),
    });
  } else {
    lastDetail = null;
    main.replaceChildren(el('p', { class: 'empty', text: 'Loading rollouts…' }));
    connect('/api/stream', { list: (view) => render(listView(view)) });
  }
}

function render(node) {
  main.replaceChildren(node);
}

function backLink() {
  return el('a', { class: 'back', href: '#/', text: '← all rollouts' });
}

// ---- List --------------------------------------------------------------------------------

function listView(view) {
  const all = view.scope === 'all namespaces';
  const rows = view.rollouts.map((r) => {
    const href = `#/rollouts/${enc(r.namespace)}/${enc(r.name)}`;
    return el('tr', { class: 'rollout', 'data-rollout': `${r.namespace}/${r.name}`, onclick: () => { location.hash = href; } },
      all ? el('td', { text: r.namespace }) : null,
      el('td', null, el('a', { href, text: r.name })),
      el('td', { 'data-field': 'phase' }, badge(r.phase)),
      el('td', { 'data-field': 'step', text: r.step }),
      el('td', { 'data-field': 'weight', class: 'nowrap' }, weightBar(r.weightBp), r.weight),
      el('td', null, health(r.health)),
      el('td', { class: 'hash', text: r.stableHash || '-' }),
      el('td', { class: 'hash', text: r.canaryHash || '-' }),
      el('td', { class: 'muted', text: r.message || '' }));
  });
  const table = el('table', null,
    el('thead', null, el('tr', null,
      all ? el('th', { text: 'Namespace' }) : null,
      ['Rollout', 'Phase', 'Steps done', 'Canary weight', 'Health', 'Stable', 'Canary', 'Message'].map((h) => el('th', { text: h })))),
    el('tbody', null, rows));
  return el('div', { id: 'list' },
    problems(view.problems),
    view.rollouts.length
      ? el('div', { class: 'list panel' }, table)
      : el('p', { class: 'empty', text: `No CanaryRollouts in ${view.scope}.` }));
}

// ---- One rollout -------------------------------------------------------------------------

function detailView(d) {
  const s = d.summary;
  const flags = [];
  if (d.specAbort) flags.push('spec.abort: true');
  if (d.specPaused) flags.push('spec.paused: true');
  if (d.promoteRequested) flags.push(`promote ${d.promoteRequested} requested, waiting for the controller`);
  if (d.stale) flags.push('the controller has not seen the latest spec yet');
  const canaryVersion = d.versions.find((v) => v.role === 'canary');
  return el('div', { id: 'detail', 'data-rollout': `${s.namespace}/${s.name}` },
    problems(d.problems),
    el('div', { class: 'head' },
      backLink(),
      el('h1', { text: s.name }),
      el('span', { class: 'muted', text: `namespace ${s.namespace}` }),
      health(s.health)),
    el('div', { class: 'cards' },
      card('Phase', badge(s.phase), 'phase'),
      card('Steps done', s.step, 'step'),
      card('Canary weight', el('span', null, s.weight, weightBar(s.weightBp, true)), 'weight'),
      card('Stable', s.stableHash || '-', 'stable', 'hash'),
      card('Canary', s.canaryHash || '-', 'canary', canaryVersion ? 'hash canary' : 'hash')),
    s.message ? el('p', { class: 'message', 'data-field': 'message', text: s.message }) : null,
    flags.length ? el('div', { class: 'flags' }, flags.map((f) => el('span', { class: 'flag', text: f }))) : null,
    config.readOnly ? null : actions(d),
    el('div', { class: 'grid' },
      panel('Steps', steps(d.steps)),
      panel('Canary weight over time', weightChart(d)),
      panel('Versions', versions(d.versions)),
      panel('Header routes to canary', headerRoutes(d.headerRoutes)),
      panel('Analysis', analysis(d), 'wide'),
      panel('Recent events', events(d.events), 'wide'),
      d.conditions.length ? panel('Conditions', conditions(d.conditions), 'wide') : null));
}

function card(label, value, field, cls) {
  return el('div', { class: 'card' },
    el('div', { class: 'label', text: label }),
    el('div', { class: `value ${cls || ''}`, 'data-field': field }, value));
}

function panel(title, body, cls) {
  return el('section', { class: `panel ${cls || ''}` }, el('h2', { text: title }), body);
}

function steps(list) {
  if (!list.length) return el('p', { class: 'muted', text: 'No steps: a new version is promoted as soon as its pods are available.' });
  return el('ol', { class: 'steps' }, list.map((st) => el('li', { 'data-state': st.state },
    el('span', { class: 'num', text: st.number }),
    el('span', { class: 'text', text: st.text }),
    st.state === 'current' ? el('span', { class: 'marker', text: '◀ current' }) : null)));
}

function versions(list) {
  if (!list.length) return el('p', { class: 'muted', text: 'No version yet.' });
  return el('table', null,
    el('thead', null, el('tr', null, ['', 'Hash', 'ReplicaSet', 'Ready'].map((h) => el('th', { text: h })))),
    el('tbody', null, list.map((v) => {
      const bar = el('span', { class: 'ready' });
      const fill = el('span');
      fill.style.width = v.desired ? `${Math.min(100, (100 * v.ready) / v.desired)}%` : '0%';
      bar.append(fill);
      return el('tr', { 'data-role': v.role },
        el('td', { class: `role ${v.role}`, text: v.role }),
        el('td', { class: 'hash', text: v.hash }),
        el('td', { class: 'hash', text: v.replicaSet || 'not found' }),
        el('td', null, `${v.ready}/${v.desired} ready, ${v.available} available`, bar));
    })));
}

function headerRoutes(list) {
  if (!list.length) return el('p', { class: 'muted', text: 'None in force.' });
  return el('ul', null, list.map((r) => el('li', null,
    el('strong', { text: r.name }), ': ',
    r.matches.length ? r.matches.map((m, i) => [i ? ' and ' : '', el('code', { text: m })]) : 'no match (removed)')));
}

function events(list) {
  if (!list.length) return el('p', { class: 'muted', text: 'No events.' });
  return el('table', { class: 'events' },
    el('tbody', null, list.map((e) => el('tr', { class: e.kind },
      el('td', { class: 'time', title: time(e.t), text: ago(e.t) }),
      el('td', { class: 'reason', text: e.reason }),
      el('td', null, e.note, e.count > 1 ? el('span', { class: 'muted', text: ` (×${e.count})` }) : null)))));
}

function conditions(list) {
  return el('table', null,
    el('thead', null, el('tr', null, ['Type', 'Status', 'Reason', 'Message'].map((h) => el('th', { text: h })))),
    el('tbody', null, list.map((c) => el('tr', null,
      el('td', { text: c.kind }), el('td', { text: c.status }), el('td', { text: c.reason }), el('td', { class: 'muted', text: c.message })))));
}

// ---- Charts (hand-drawn SVG) -------------------------------------------------------------

const W = 560;
const H = 190;
const PAD = { l: 40, r: 12, t: 10, b: 22 };

function scale(d0, d1, r0, r1) {
  const span = d1 - d0 || 1;
  return (v) => r0 + ((v - d0) / span) * (r1 - r0);
}

function axes(root, x, y, t0, t1, yTicks, yFormat) {
  for (const v of yTicks) {
    root.append(svg('line', { class: 'grid-line', x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v) }));
    root.append(svg('text', { x: PAD.l - 6, y: y(v) + 3, 'text-anchor': 'end', text: yFormat(v) }));
  }
  const labels = [[t0, 'start'], [(t0 + t1) / 2, 'middle'], [t1, 'end']];
  for (const [t, anchor] of labels) {
    root.append(svg('text', { x: x(t), y: H - 6, 'text-anchor': anchor, text: time(t) }));
  }
}

function chart(label) {
  return svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label });
}

function weightChart(d) {
  const points = d.weights;
  const samples = d.split ? d.split.samples : [];
  const box = el('div', null);
  if (!points.length && !samples.length) {
    box.append(el('p', { class: 'muted', text: 'No weight seen yet.' }));
  } else {
    // From the first point seen to now (at least ten seconds), with a little room on the left.
    const first = Math.min(...points.map((p) => p.t), ...samples.map((p) => p.t));
    // The view carries no clock (it would differ at every push): the browser's is the
    // dashboard's, both run on the user's machine.
    const t1 = Math.max(Date.now(), ...points.map((p) => p.t), ...samples.map((p) => p.t));
    const t0 = t1 - Math.max(t1 - first, 10000) * 1.04;
    const x = scale(t0, t1, PAD.l, W - PAD.r);
    const y = scale(0, 100, H - PAD.b, PAD.t);
    const root = chart('canary weight over time');
    axes(root, x, y, t0, t1, [0, 25, 50, 75, 100], (v) => `${v}%`);
    if (points.length) {
      let path = '';
      points.forEach((p, i) => {
        const px = x(p.t);
        const py = y(p.bp / 100);
        path += i ? `H${px}V${py}` : `M${px},${py}`;
      });
      path += `H${x(t1)}`;
      root.append(svg('path', { class: 'weight-area', d: `${path}V${y(0)}H${x(points[0].t)}Z` }));
      root.append(svg('path', { class: 'weight', d: path }));
    }
    if (samples.length) {
      const path = samples.map((p, i) => `${i ? 'L' : 'M'}${x(p.t)},${y(p.canaryPercent)}`).join('');
      root.append(svg('path', { class: 'observed', d: path }));
      for (const p of samples) {
        root.append(svg('circle', { class: 'observed-dot', cx: x(p.t), cy: y(p.canaryPercent), r: 2 },
          svg('title', { text: `${time(p.t)}: ${p.canaryPercent.toFixed(2)}% to canary, ${p.requestsPerSecond.toFixed(1)} req/s` })));
      }
    }
    box.append(root);
    box.append(el('div', { class: 'legend' },
      el('span', { class: 'weight', text: 'weight set by the controller (since the dashboard started)' }),
      d.split ? el('span', { class: 'observed', text: `split observed (${d.split.source})` }) : null));
  }
  if (d.split) {
    box.append(el('p', { class: 'muted', 'data-field': 'observed' },
      d.split.error ? `Observed split unavailable: ${d.split.error}`
        : d.split.total ? `Decisions counted by the filter: ${d.split.total}` : 'The filter has counted no decision for this service yet.'));
  }
  return box;
}

function metricChart(m) {
  const pts = m.points.filter((p) => p.t);
  const numeric = pts.filter((p) => p.value !== null && p.value !== undefined);
  const root = chart(`measurements of ${m.name}`);
  if (!pts.length) return el('p', { class: 'muted', text: 'Nothing measured yet.' });
  const values = numeric.map((p) => p.value).concat(m.thresholds.map((t) => t.value));
  let lo = values.length ? Math.min(...values) : 0;
  let hi = values.length ? Math.max(...values) : 1;
  if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
  const margin = (hi - lo) * 0.1;
  lo -= margin; hi += margin;
  const t0 = pts[0].t;
  const t1 = pts.length > 1 ? pts[pts.length - 1].t : t0 + 60000;
  const x = scale(t0, t1, PAD.l + 8, W - PAD.r - 8);
  const y = scale(lo, hi, H - PAD.b, PAD.t);
  const fmt = (v) => (Math.abs(hi - lo) < 10 ? v.toFixed(2) : v.toFixed(0));
  axes(root, x, y, t0, t1, [lo + margin, (lo + hi) / 2, hi - margin], fmt);
  for (const th of m.thresholds) {
    root.append(svg('line', { class: `threshold ${th.condition}`, x1: PAD.l, x2: W - PAD.r, y1: y(th.value), y2: y(th.value) },
      svg('title', { text: `${th.condition}: result ${th.op} ${th.value}` })));
  }
  if (numeric.length > 1) {
    root.append(svg('path', { class: 'series', d: numeric.map((p, i) => `${i ? 'L' : 'M'}${x(p.t)},${y(p.value)}`).join('') }));
  }
  for (const p of pts) {
    const cy = p.value === null || p.value === undefined ? H - PAD.b - 4 : y(p.value);
    root.append(svg('circle', { class: `point ${p.phase}`, cx: x(p.t), cy, r: 4 },
      svg('title', { text: `${time(p.t)} ${p.phase}: ${p.text}` })));
  }
  return root;
}

function analysis(d) {
  if (!d.analysisRuns.length) return el('p', { class: 'muted', text: 'No analysis run for this canary.' });
  return el('div', null,
    d.analysisAborted ? el('p', { class: 'problems', text: 'A failed analysis aborted the rollout: retry it to run the canary again.' }) : null,
    d.analysisRuns.map((run) => el('div', { class: 'run' },
      el('div', { class: 'head' }, el('strong', { text: run.name }), badge(run.phase),
        el('span', { class: 'muted', text: run.message || `started ${ago(Date.parse(run.startedAt))}` })),
      el('div', { class: 'metrics' }, run.metrics.map((m) => el('div', { class: 'metric' },
        el('div', null, el('strong', { text: m.name }), ' ', badge(m.phase), m.dryRun ? el('span', { class: 'muted', text: ' dry run' }) : null),
        metricChart(m),
        el('div', { class: 'legend' },
          m.thresholds.some((t) => t.condition === 'success') ? el('span', { class: 'success', text: 'success bound' }) : null,
          m.thresholds.some((t) => t.condition === 'failure') ? el('span', { class: 'failure', text: 'failure bound' }) : null),
        el('div', { class: 'conds' },
          m.successCondition ? el('div', null, 'success: ', el('code', { text: m.successCondition })) : null,
          m.failureCondition ? el('div', null, 'failure: ', el('code', { text: m.failureCondition })) : null,
          el('div', { text: m.counts }),
          m.message ? el('div', { text: m.message }) : null)))))));
}

// ---- Actions -----------------------------------------------------------------------------

function actions(d) {
  const s = d.summary;
  return el('div', { class: 'actions' }, d.actions.map((a) => el('button', {
    type: 'button',
    'data-action': a.action,
    class: a.action === 'abort' ? 'danger' : null,
    disabled: busy || !!a.refused,
    title: a.refused || a.consequence,
    text: a.label,
    onclick: () => confirmAction(s.namespace, s.name, a),
  })));
}

const dialog = document.getElementById('confirm');
let pending = null;

function confirmAction(ns, name, a) {
  pending = { ns, name, a };
  document.getElementById('confirm-title').textContent = `${a.label} ${name}?`;
  document.getElementById('confirm-consequence').textContent = a.consequence;
  document.getElementById('confirm-command').textContent = a.command;
  const ok = document.getElementById('confirm-ok');
  ok.textContent = a.label;
  ok.classList.toggle('danger', a.action === 'abort');
  dialog.showModal();
}

document.getElementById('confirm-cancel').addEventListener('click', () => {
  pending = null;
  dialog.close();
});

document.getElementById('confirm-ok').addEventListener('click', async () => {
  const p = pending;
  pending = null;
  dialog.close();
  if (!p) return;
  busy = true;
  for (const b of document.querySelectorAll('[data-action]')) b.disabled = true;
  try {
    const res = await fetch(`/api/rollouts/${enc(p.ns)}/${enc(p.name)}/actions/${p.a.action}`, {
      method: 'POST',
      headers: { 'x-dashboard-token': config.token },
    });
    const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
    toast(res.ok ? body.message : body.error, !res.ok);
  } catch (e) {
    toast(`The dashboard did not answer: ${e}`, true);
  } finally {
    busy = false;
    // The buttons come back as the rollout's state allows (a refused action changes nothing,
    // so no new view would redraw them).
    if (lastDetail) render(detailView(lastDetail));
  }
});

let toastTimer = null;
function toast(text, error) {
  const t = document.getElementById('toast');
  t.textContent = text;
  t.className = error ? 'error' : '';
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, error ? 15000 : 8000);
}

// ---- Start -------------------------------------------------------------------------------

document.getElementById('scope').textContent = config.scope;
if (config.readOnly) document.getElementById('mode').textContent = 'read-only';
window.addEventListener('hashchange', route);
route();
