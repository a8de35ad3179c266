// Cairn's web console: a page over the member's own HTTP APIs — the keys API (/kv/,
// docs/HTTP.md) for keys, history and watches, etcd's JSON gateway (/v3/) for leases,
// members and alarms, /metrics for the rates. No framework, no build step.
'use strict';

const $ = (sel) => document.querySelector(sel);
const state = {
  token: sessionStorage.getItem('cairn.token') || '',
  user: sessionStorage.getItem('cairn.user') || '',
  key: null,      // the key open in the editor
  etag: null,     // its ETag when read (null: a new key)
  history: [],
  open: new Set(),   // tree folders the user opened
  closed: new Set(), // and closed (the first two levels start open)
  watch: null,    // AbortController of the running watch
};

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

// ---- HTTP -------------------------------------------------------------------------------

async function call(url, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  if (state.token) headers['Authorization'] = state.token;
  const r = await fetch(url, Object.assign({}, opts, { headers }));
  if (r.status === 401) needLogin();
  return r;
}

async function callJson(url, opts) {
  const r = await call(url, opts);
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { message: text }; }
  if (!r.ok) throw new ApiError(r.status, body);
  return { r, body };
}

// etcd's JSON gateway: POST /v3/<path> with a JSON body.
async function v3(path, body, base = '') {
  const { body: out } = await callJson(`${base}/v3/${path}`, { method: 'POST', body: JSON.stringify(body || {}) });
  return out;
}

// A key in a /kv/ URL: every byte percent-encoded but the slashes, which stay as they are
// (so the key "/app/x" is /kv//app/x).
const keyUrl = (key, query = '') => '/kv/' + encodeURIComponent(key).replace(/%2F/g, '/') + (query ? '?' + query : '');

const utf8 = new TextEncoder();
const b64 = (s) => btoa(String.fromCharCode(...utf8.encode(s)));
const unb64 = (b) => new TextDecoder().decode(Uint8Array.from(atob(b || ''), (c) => c.charCodeAt(0)));
const hexLease = (id) => BigInt(id).toString(16).padStart(16, '0');
const keyText = (kv) => (kv.key !== undefined ? kv.key : '0x' + [...atob(kv.key_base64)].map((c) => c.charCodeAt(0).toString(16).padStart(2, '0')).join(''));
const valueText = (kv) => (kv.value !== undefined ? kv.value : kv.value_base64 !== undefined ? `(binary, base64) ${kv.value_base64}` : '');

function setStatus(el, text, kind = '') {
  el.textContent = text;
  el.className = 'status ' + kind;
}

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  n = Number(n);
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// ---- Login ------------------------------------------------------------------------------

function needLogin(why) {
  $('#login').hidden = false;
  if (why) $('#login-why').textContent = why;
}

function showWho() {
  $('#who-name').textContent = state.user ? `logged in as ${state.user}` : '';
  $('#logout').hidden = !state.user;
}

$('#login').addEventListener('submit', async (e) => {
  e.preventDefault();
  const name = $('#login-user').value;
  const password = $('#login-password').value;
  try {
    const out = await v3('auth/authenticate', { name, password });
    state.token = out.token;
    state.user = name;
    sessionStorage.setItem('cairn.token', out.token);
    sessionStorage.setItem('cairn.user', name);
    $('#login').hidden = true;
    setStatus($('#login-status'), '');
    showWho();
    refreshAll();
  } catch (err) {
    setStatus($('#login-status'), err.message, 'bad');
  }
});

$('#logout').addEventListener('click', () => {
  state.token = state.user = '';
  sessionStorage.removeItem('cairn.token');
  sessionStorage.removeItem('cairn.user');
  showWho();
  refreshAll();
});

// ---- Tabs -------------------------------------------------------------------------------

let tab = 'keys';
document.querySelectorAll('nav button').forEach((b) => b.addEventListener('click', () => {
  tab = b.dataset.tab;
  document.querySelectorAll('nav button').forEach((o) => o.classList.toggle('active', o === b));
  document.querySelectorAll('.tab').forEach((s) => { s.hidden = s.id !== 'tab-' + tab; });
  refreshAll();
}));

// ---- Keys: tree ---------------------------------------------------------------------------

async function loadTree() {
  const prefix = $('#filter').value;
  const status = $('#tree-status');
  try {
    const { body } = await callJson(keyUrl(prefix, 'prefix&keys&limit=10000'));
    const more = body.more ? ` (first ${body.kvs.length})` : '';
    setStatus(status, `${body.count} keys${more} at revision ${body.revision}`);
    renderTree(body.kvs.map(keyText));
  } catch (err) {
    setStatus(status, err.message, 'bad');
  }
}

// Keys split on "/" into folders; a folder that is also a key shows both.
function renderTree(keys) {
  const root = { children: new Map(), key: null };
  for (const key of keys) {
    const parts = key.split('/');
    let node = root;
    parts.forEach((part, i) => {
      const last = i === parts.length - 1;
      const name = last ? part : part + '/';
      if (!node.children.has(name)) node.children.set(name, { children: new Map(), key: null });
      node = node.children.get(name);
      if (last) node.key = key;
    });
  }
  const tree = $('#tree');
  tree.replaceChildren(renderNode(root, ''));
}

function renderNode(node, path) {
  const ul = document.createElement('ul');
  for (const [name, child] of node.children) {
    const li = document.createElement('li');
    const full = path + name;
    if (child.key !== null) {
      const a = document.createElement('a');
      a.textContent = name || '(empty)';
      a.dataset.key = child.key;
      a.title = child.key;
      if (child.key === state.key) a.classList.add('selected');
      a.addEventListener('click', () => openKey(child.key));
      li.append(a);
    }
    if (child.children.size) {
      const details = document.createElement('details');
      const depth = full.split('/').length - 1;
      details.open = state.open.has(full) || (depth <= 2 && !state.closed.has(full));
      details.addEventListener('toggle', () => {
        (details.open ? state.open : state.closed).add(full);
        (details.open ? state.closed : state.open).delete(full);
      });
      const summary = document.createElement('summary');
      summary.textContent = name;
      details.append(summary, renderNode(child, full));
      li.append(details);
    }
    ul.append(li);
  }
  return ul;
}

$('#refresh').addEventListener('click', loadTree);
$('#filter').addEventListener('change', loadTree);

// ---- Keys: editor -------------------------------------------------------------------------

async function openKey(key) {
  state.key = key;
  document.querySelectorAll('#tree a').forEach((a) => a.classList.toggle('selected', a.dataset.key === key));
  $('#editor').hidden = false;
  $('#key-name').textContent = key;
  setStatus($('#key-status'), '');
  $('#diff').replaceChildren();
  try {
    const { r, body } = await callJson(keyUrl(key));
    state.etag = r.headers.get('ETag');
    $('#value').value = valueText(body);
    const lease = body.lease ? `, lease ${body.lease}` : '';
    $('#key-meta').textContent = `version ${body.version}, created at revision ${body.create_revision}, modified at ${body.mod_revision}${lease}`;
  } catch (err) {
    state.etag = null;
    $('#value').value = '';
    $('#key-meta').textContent = err.status === 404 ? 'not in the store (deleted, or new)' : '';
    if (err.status !== 404) setStatus($('#key-status'), err.message, 'bad');
  }
  loadHistory();
}

$('#new').addEventListener('click', () => {
  const key = $('#new-key').value;
  if (!key) return;
  state.key = key;
  state.etag = null;
  $('#editor').hidden = false;
  $('#key-name').textContent = key;
  $('#key-meta').textContent = 'new key';
  $('#value').value = '';
  setStatus($('#key-status'), '');
  $('#history tbody').replaceChildren();
  $('#value').focus();
});

// Save: only over the version that was read (If-Match), or only if still absent for a new
// key (If-None-Match), so nobody's write is lost silently.
$('#save').addEventListener('click', async () => {
  const headers = state.etag ? { 'If-Match': state.etag } : { 'If-None-Match': '*' };
  try {
    const { r } = await callJson(keyUrl(state.key), { method: 'PUT', body: $('#value').value, headers });
    await Promise.all([loadTree(), openKey(state.key)]);
    setStatus($('#key-status'), `saved at revision ${r.headers.get('X-Cairn-Revision')}`, 'good');
  } catch (err) {
    if (err.status === 412 || err.status === 409) {
      const now = err.body && err.body.current;
      const rev = now ? `revision ${now.mod_revision}` : 'deleted';
      setStatus($('#key-status'), `not saved: changed by someone else since you read it (now ${rev}); Reload to see it`, 'bad');
    } else {
      setStatus($('#key-status'), err.message, 'bad');
    }
  }
});

$('#reload').addEventListener('click', () => state.key !== null && openKey(state.key));

$('#delete').addEventListener('click', async () => {
  if (!confirm(`Delete ${state.key}?`)) return;
  try {
    const headers = state.etag ? { 'If-Match': state.etag } : {};
    await callJson(keyUrl(state.key), { method: 'DELETE', headers });
    setStatus($('#key-status'), 'deleted', 'good');
    state.etag = null;
    await loadTree();
    loadHistory();
  } catch (err) {
    setStatus($('#key-status'), err.status === 412 ? 'not deleted: changed since you read it; Reload' : err.message, 'bad');
  }
});

// ---- Keys: history and diff ------------------------------------------------------------

async function loadHistory() {
  const tbody = $('#history tbody');
  try {
    const { body } = await callJson(keyUrl(state.key, 'history&limit=50'));
    state.history = body.history.slice().reverse();
    tbody.replaceChildren(...state.history.map((h, i) => {
      const tr = document.createElement('tr');
      tr.dataset.revision = h.mod_revision;
      const pick = (side, checked) => {
        const td = document.createElement('td');
        const input = document.createElement('input');
        input.type = 'radio';
        input.name = 'diff-' + side;
        input.value = i;
        input.checked = checked;
        input.addEventListener('change', showDiff);
        td.append(input);
        return td;
      };
      const cells = [h.mod_revision, h.type, h.version, h.type === 'delete' ? '' : valueText(h)].map((t) => {
        const td = document.createElement('td');
        td.textContent = t;
        return td;
      });
      cells[3].className = 'value';
      tr.append(pick('a', i === 1), pick('b', i === 0), ...cells);
      return tr;
    }));
    if (body.compact_revision) {
      const tr = document.createElement('tr');
      tr.innerHTML = '<td colspan="6" class="meta"></td>';
      tr.firstChild.textContent = `older versions were compacted away (revision ${body.compact_revision})`;
      tbody.append(tr);
    }
    showDiff();
  } catch (err) {
    tbody.replaceChildren();
  }
}

function showDiff() {
  const a = document.querySelector('input[name="diff-a"]:checked');
  const b = document.querySelector('input[name="diff-b"]:checked');
  const out = $('#diff');
  if (!a || !b) { out.replaceChildren(); return; }
  const va = state.history[a.value], vb = state.history[b.value];
  const header = document.createElement('span');
  header.textContent = `revision ${va.mod_revision} → ${vb.mod_revision}\n`;
  const lines = diffLines(valueText(va).split('\n'), valueText(vb).split('\n'));
  out.replaceChildren(header, ...lines.map(([kind, text]) => {
    const s = document.createElement('span');
    s.className = kind === '+' ? 'add' : kind === '-' ? 'del' : '';
    s.textContent = `${kind} ${text}\n`;
    return s;
  }));
}

// A line diff by longest common subsequence: [' ' | '-' | '+', line].
function diffLines(a, b) {
  const n = a.length, m = b.length;
  const lcs = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--)
    for (let j = m - 1; j >= 0; j--)
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { out.push([' ', a[i]]); i++; j++; }
    else if (lcs[i + 1][j] >= lcs[i][j + 1]) out.push(['-', a[i++]]);
    else out.push(['+', b[j++]]);
  }
  while (i < n) out.push(['-', a[i++]]);
  while (j < m) out.push(['+', b[j++]]);
  return out;
}

// ---- Watch: Server-Sent Events read with fetch (EventSource cannot send a token) --------

$('#watch-start').addEventListener('click', async () => {
  stopWatch();
  const prefix = $('#watch-prefix').value;
  const ctl = new AbortController();
  state.watch = ctl;
  $('#watch-start').disabled = true;
  $('#watch-stop').disabled = false;
  const status = $('#watch-status');
  try {
    const r = await call(keyUrl(prefix, 'prefix&watch'), { signal: ctl.signal });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new ApiError(r.status, body);
    }
    const reader = r.body.getReader();
    const text = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += text.decode(value, { stream: true });
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        onEvent(buf.slice(0, end));
        buf = buf.slice(end + 2);
      }
    }
    setStatus(status, 'the watch ended', 'bad');
  } catch (err) {
    if (err.name !== 'AbortError') setStatus(status, err.message, 'bad');
  } finally {
    if (state.watch === ctl) stopWatch();
  }
});

function onEvent(block) {
  const ev = {};
  for (const line of block.split('\n')) {
    const at = line.indexOf(': ');
    if (at > 0) ev[line.slice(0, at)] = line.slice(at + 2);
  }
  const data = ev.data ? JSON.parse(ev.data) : {};
  const status = $('#watch-status');
  if (ev.event === 'created') return setStatus(status, `watching from revision ${data.revision + 1}`, 'good');
  if (ev.event === 'progress') return setStatus(status, `watching, up to date at revision ${data.revision}`, 'good');
  if (ev.event === 'error') return setStatus(status, data.error, 'bad');
  const tr = document.createElement('tr');
  tr.className = 'event';
  [data.mod_revision, ev.event, keyText(data), ev.event === 'put' ? valueText(data) : '', new Date().toLocaleTimeString()]
    .forEach((t, i) => {
      const td = document.createElement('td');
      td.textContent = t;
      if (i === 3) td.className = 'value';
      tr.append(td);
    });
  const tbody = $('#events tbody');
  tbody.prepend(tr);
  while (tbody.children.length > 500) tbody.lastChild.remove();
}

function stopWatch() {
  if (state.watch) state.watch.abort();
  state.watch = null;
  $('#watch-start').disabled = false;
  $('#watch-stop').disabled = true;
}
$('#watch-stop').addEventListener('click', () => { stopWatch(); setStatus($('#watch-status'), 'stopped'); });

// ---- Leases -----------------------------------------------------------------------------

async function loadLeases() {
  const status = $('#leases-status');
  try {
    const list = await v3('lease/leases', {});
    const leases = list.leases || [];
    const rows = await Promise.all(leases.map(async (l) => {
      const t = await v3('lease/timetolive', { ID: l.ID, keys: true }).catch(() => null);
      return { id: l.ID, t };
    }));
    setStatus(status, `${leases.length} leases`);
    $('#leases tbody').replaceChildren(...rows.map(({ id, t }) => {
      const tr = document.createElement('tr');
      tr.dataset.lease = hexLease(id);
      const keys = t && t.keys ? t.keys.map(unb64).join(', ') : '';
      [hexLease(id), t ? `${t.TTL} s` : '?', t ? `${t.grantedTTL} s` : '?', keys].forEach((v) => {
        const td = document.createElement('td');
        td.textContent = v;
        tr.append(td);
      });
      return tr;
    }));
  } catch (err) {
    setStatus(status, err.message, 'bad');
  }
}

// ---- Cluster: members (each asked for its own status, as etcdctl endpoint status) --------

async function memberStatus(url) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 1500);
  try {
    const r = await call(`${url}/v3/maintenance/status`, { method: 'POST', body: '{}', signal: ctl.signal });
    return r.ok ? await r.json() : null;
  } catch (_) {
    return null;
  } finally {
    clearTimeout(timer);
  }
}

async function loadCluster() {
  const status = $('#cluster-status');
  try {
    const list = await v3('cluster/member/list', {});
    const members = list.members || [];
    const rows = await Promise.all(members.map(async (m) => {
      const url = (m.clientURLs || [])[0];
      return { m, s: url ? await memberStatus(url) : null };
    }));
    const up = rows.filter((r) => r.s).length;
    setStatus(status, `${members.length} members, ${up} answering`);
    $('#members tbody').replaceChildren(...rows.map(({ m, s }) => {
      const tr = document.createElement('tr');
      tr.dataset.member = m.name || m.ID;
      let stateCell;
      if (!s) stateCell = ['down', 'down'];
      else if (s.leader === s.header.member_id) stateCell = ['leader', 'leader'];
      else stateCell = [m.isLearner ? 'learner' : 'follower', ''];
      const cells = [m.name || '(unstarted)', BigInt(m.ID).toString(16), stateCell[0],
        s ? s.raftIndex : '', s ? s.raftTerm : '', s ? bytes(s.dbSize) : '', s ? s.version : '', (m.clientURLs || []).join(' ')];
      cells.forEach((v, i) => {
        const td = document.createElement('td');
        td.textContent = v;
        if (i === 2) td.className = 'state ' + stateCell[1];
        tr.append(td);
      });
      return tr;
    }));
    const alarms = await v3('maintenance/alarm', { action: 'GET' });
    const items = (alarms.alarms || []).map((a) => {
      const li = document.createElement('li');
      li.textContent = `${a.alarm} on member ${BigInt(a.memberID).toString(16)}`;
      return li;
    });
    if (!items.length) {
      const li = document.createElement('li');
      li.textContent = 'none';
      items.push(li);
    }
    $('#alarms').replaceChildren(...items);
  } catch (err) {
    setStatus(status, err.message, 'bad');
  }
}

// ---- Rates from /metrics ----------------------------------------------------------------

const samples = [];
let last = null;

function metric(text, name) {
  const m = text.match(new RegExp('^' + name + '(?:\\{[^}]*\\})? ([0-9.e+]+)$', 'm'));
  return m ? Number(m[1]) : 0;
}

async function sampleRates() {
  try {
    const r = await fetch('/metrics');
    const text = await r.text();
    const now = { t: performance.now(), writes: metric(text, 'etcd_server_proposals_applied_total'), events: metric(text, 'etcd_debugging_mvcc_events_total') };
    if (last) {
      const dt = (now.t - last.t) / 1000;
      const s = { writes: Math.max(0, (now.writes - last.writes) / dt), events: Math.max(0, (now.events - last.events) / dt) };
      samples.push(s);
      if (samples.length > 60) samples.shift();
      $('#rate-writes').textContent = s.writes.toFixed(1);
      $('#rate-events').textContent = s.events.toFixed(1);
      drawChart();
    }
    last = now;
  } catch (_) {
    // The member is gone: keep the last chart.
  }
}

function drawChart() {
  const c = $('#chart');
  const g = c.getContext('2d');
  g.clearRect(0, 0, c.width, c.height);
  const top = Math.max(1, ...samples.map((s) => Math.max(s.writes, s.events)));
  for (const [field, color] of [['writes', '#2f6fdb'], ['events', '#1e8e3e']]) {
    g.strokeStyle = color;
    g.beginPath();
    const step = (c.width - 2) / 59;
    samples.forEach((s, i) => {
      const x = c.width - 1 - (samples.length - 1 - i) * step;
      const y = c.height - 2 - (s[field] / top) * (c.height - 4);
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  }
}

// ---- Refresh loop -----------------------------------------------------------------------

function refreshAll() {
  if (tab === 'keys') loadTree();
  if (tab === 'leases') loadLeases();
  if (tab === 'cluster') loadCluster();
}

setInterval(() => {
  if (tab === 'leases') loadLeases();
  if (tab === 'cluster') loadCluster();
}, 2000);
setInterval(sampleRates, 2000);

showWho();
sampleRates();
refreshAll();
