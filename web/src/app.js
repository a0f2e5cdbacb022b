// app.js - Vela's web UI: one page over velad's public API (/api/v1).
// Login (PAM, session cookie), the VMs with live state and power controls
// as the user's role allows, a VM's summary, question, serial console
// (xterm.js over velad's WebSocket) and performance chart, recent tasks
// with progress and cancel, and the live event feed (Server-Sent Events).
import { Terminal } from '@xterm/xterm';
import uPlot from 'uplot';
import RFB from '@novnc/novnc';

const API = '/api/v1';
const ROLES = ['none', 'readonly', 'operator', 'admin'];
const state = { me: null, host: null, vms: [], selected: null, detail: null, tab: 'summary', events: null,
                term: null, sock: null, rfb: null, chart: null, chartTimer: null, tasks: [], refreshTimer: null };
const TABS = { summary: 'Summary', console: 'Console', screen: 'Screen', performance: 'Performance' };

// ---------------------------------------------------------------- helpers

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, err) {
    super(err ? err.message : 'HTTP ' + status);
    this.status = status;
    this.name = err ? err.name : 'HTTP';
  }
}

async function api(method, path, body) {
  const opt = { method, headers: {}, credentials: 'same-origin' };
  if (body !== undefined) {
    opt.headers['Content-Type'] = 'application/json';
    opt.body = JSON.stringify(body);
  }
  const r = await fetch(API + path, opt);
  let j = null;
  try { j = await r.json(); } catch (e) { /* not JSON */ }
  if (r.status === 401 && path !== '/session') {
    showLogin('Your session has ended. Log in again.');
    throw new ApiError(401, j && j.error);
  }
  if (!j || !j.ok) throw new ApiError(r.status, j && j.error);
  return j;
}

const roleAtLeast = (role, want) => ROLES.indexOf(role) >= ROLES.indexOf(want);
const mib = (b) => Math.round((b || 0) / 1048576);
function when(ms) { return new Date(ms).toLocaleTimeString(); }
function flash(msg, bad) {
  const el = document.getElementById('flash');
  if (!el) return;
  el.textContent = msg;
  el.className = bad ? 'error' : 'muted';
}

// ------------------------------------------------------------------ login

function showLogin(msg) {
  closeLive();
  const app = document.getElementById('app');
  const err = h('p', { class: 'error', id: 'login-error' }, msg || '');
  const user = h('input', { name: 'user', autocomplete: 'username', required: true, autofocus: true });
  const pass = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const form = h('form', {
    onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        await api('POST', '/session', { user: user.value, password: pass.value });
        start();
      } catch (e) {
        err.textContent = e.status === 429 ? 'Too many failed logins; wait a few minutes.' : 'Login failed: ' + e.message;
      }
    },
  }, h('label', {}, 'User', user), h('label', {}, 'Password', pass), h('button', { class: 'primary', type: 'submit' }, 'Log in'), err);
  app.replaceChildren(h('section', { class: 'login' }, h('h2', {}, 'Vela — log in'), form));
}

async function logout() {
  try { await api('DELETE', '/session'); } catch (e) { /* gone already */ }
  showLogin('Logged out.');
}

// ------------------------------------------------------------------ layout

async function start() {
  let s;
  try {
    s = await api('GET', '/session');
  } catch (e) {
    showLogin(e.status === 401 ? '' : e.message);
    return;
  }
  state.me = s.session;
  try { state.host = (await api('GET', '/host')).host; } catch (e) { state.host = { name: '' }; }
  const app = document.getElementById('app');
  app.replaceChildren(
    h('header', {},
      h('span', { class: 'brand' }, 'Vela'),
      h('span', {}, state.host.name || ''),
      h('span', { class: 'muted', id: 'host-summary' }),
      h('span', { class: 'spacer' }),
      h('span', { id: 'who' }, state.me.user + ' (' + state.me.host_role + ' on the host)'),
      h('button', { onclick: logout, id: 'logout' }, 'Log out')),
    h('main', {},
      h('div', {},
        h('section', {}, h('h2', {}, 'Virtual machines'), h('p', { id: 'flash', class: 'muted' }),
          h('table', { id: 'vms' }, h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'State'), h('th', {}, 'Folder'))), h('tbody', {}))),
        h('section', {}, h('h2', {}, 'Recent tasks'), h('table', { id: 'tasks' }, h('tbody', {}))),
        h('section', {}, h('h2', {}, 'Events'), h('div', { class: 'feed', id: 'events' }))),
      h('section', { id: 'detail' }, h('p', { class: 'muted' }, 'Select a virtual machine.'))));
  await Promise.all([loadVMs(), loadTasks()]);
  openLive();
}

// --------------------------------------------------------------- the VMs

async function loadVMs() {
  const j = await api('GET', '/vms');
  state.vms = j.vms;
  const body = document.querySelector('#vms tbody');
  if (!body) return;
  body.replaceChildren(...state.vms.map((vm) => h('tr', {
    class: 'vm' + (vm.id === state.selected ? ' selected' : ''), 'data-vm': vm.id,
    onclick: () => select(vm.id),
  }, h('td', { class: 'name' }, vm.name), h('td', {}, h('span', { class: 'state ' + vm.state }, vm.state)), h('td', { class: 'muted' }, vm.folder))));
  const running = state.vms.filter((v) => v.state !== 'off').length;
  const sum = document.getElementById('host-summary');
  if (sum) sum.textContent = state.vms.length + ' VMs, ' + running + ' running';
  if (!state.vms.length) flash('No virtual machines you may see.');
}

async function select(id) {
  if (state.selected !== id) {
    closeConsole();
    state.tab = 'summary';
  }
  state.selected = id;
  document.querySelectorAll('tr.vm').forEach((tr) => tr.classList.toggle('selected', Number(tr.dataset.vm) === id));
  await loadDetail();
}

async function power(op, mode) {
  const id = state.selected;
  try {
    const body = mode ? { op, mode } : { op };
    const j = await api('POST', '/vms/' + id + '/power?wait=0', body);
    flash(op + (mode ? ' (' + mode + ')' : '') + ' requested: task ' + j.task.id);
    loadTasks();
  } catch (e) {
    flash(op + ': ' + e.message, true);
  }
}

async function answer(choice) {
  try {
    await api('POST', '/vms/' + state.selected + '/answer', { choice });
    flash('Answered ' + choice + '.');
  } catch (e) {
    flash('Answer: ' + e.message, true);
  }
  loadDetail();
}

function controls(vm) {
  const s = vm.state;
  const b = (label, test, fn, id) => h('button', { onclick: fn, disabled: !test, 'data-action': id }, label);
  return h('div', { class: 'controls', id: 'power-controls' },
    b('Power on', s === 'off', () => power('start'), 'start'),
    b('Shut down', s === 'on', () => power('stop', 'soft'), 'shutdown'),
    b('Power off', s !== 'off', () => power('stop', 'hard'), 'poweroff'),
    b('Reset', s === 'on', () => power('reset', 'hard'), 'reset'),
    b('Pause', s === 'on', () => power('pause'), 'pause'),
    b('Resume', s === 'paused', () => power('unpause'), 'resume'));
}

async function loadDetail() {
  const id = state.selected;
  if (!id) return;
  let vm;
  try {
    vm = (await api('GET', '/vms/' + id)).vm;
  } catch (e) {
    document.getElementById('detail').replaceChildren(h('p', { class: 'error' }, e.message));
    return;
  }
  if (state.selected !== id) return;
  const listed = state.vms.find((v) => v.id === id) || {};
  const role = listed.role || (state.me.superuser ? 'admin' : 'readonly');
  state.detail = vm;
  const st = vm.status || {};
  const set = vm.settings || {};
  const operator = roleAtLeast(role, 'operator');
  const pending = st.pending_changes || [];
  const q = st.question;
  const tabs = h('div', { class: 'tabs' },
    ...Object.keys(TABS).filter((t) => (t !== 'console' && t !== 'screen') || operator).map((t) =>
      h('button', { class: state.tab === t ? 'active' : '', 'data-tab': t, onclick: () => { state.tab = t; loadDetail(); } },
        TABS[t])));
  const body = h('div', { id: 'tab-body' });
  document.getElementById('detail').replaceChildren(...[
    h('h2', {}, vm.name + ' ', h('span', { class: 'state ' + vm.state, id: 'detail-state' }, vm.state)),
    h('p', { class: 'muted' }, 'Your role: ' + role),
    operator ? controls(vm) : h('p', { class: 'muted', id: 'no-controls' }, 'Read-only: no power controls.'),
    q ? h('div', { class: 'question', id: 'question' }, h('p', {}, q.text),
      operator ? h('div', { class: 'controls' }, ...q.choices.map((c) => h('button', { onclick: () => answer(c), 'data-choice': c }, c))) : null) : null,
    tabs, body].filter((x) => x));
  if (state.tab === 'summary') {
    body.append(h('dl', {},
      h('dt', {}, 'Guest OS'), h('dd', {}, set.guestOS || '-'),
      h('dt', {}, 'Memory'), h('dd', {}, (set.memsize || '-') + ' MiB'),
      h('dt', {}, 'vCPUs'), h('dd', {}, set.vcpus || '-'),
      h('dt', {}, 'Disks'), h('dd', {}, (set.disks || []).map((d) => d.addr + ' ' + d.file).join(', ') || 'none'),
      h('dt', {}, 'Accelerator'), h('dd', {}, st.accel || '-'),
      h('dt', {}, 'Uptime'), h('dd', {}, st.uptime_s !== undefined ? st.uptime_s + ' s' : '-'),
      h('dt', {}, 'Annotation'), h('dd', {}, set.annotation || '')),
    pending.length ? h('p', { class: 'pending', id: 'pending' }, 'Pending until the next power cycle: ' + pending.map((p) => p.key).join(', ')) : null);
    closeConsole();
  } else if (state.tab === 'console') {
    openConsole(body, vm);
  } else if (state.tab === 'screen') {
    openScreen(body, vm);
  } else {
    closeConsole();
    showChart(body, id);
  }
}

// ---------------------------------------------------------- serial console

function closeConsole() {
  if (state.sock) { state.sock.onclose = null; state.sock.close(); state.sock = null; }
  if (state.term) { state.term.dispose(); state.term = null; }
  if (state.rfb) { const r = state.rfb; state.rfb = null; try { r.disconnect(); } catch (e) { /* closed */ } }
}

// --------------------------------------------------------- graphical console

function openScreen(body, vm) {
  closeConsole();
  if (vm.state === 'off') {
    body.append(h('p', { class: 'muted' }, 'The VM is off: no screen.'));
    return;
  }
  const note = h('span', { class: 'muted', id: 'screen-note' }, 'Connecting…');
  const box = h('div', { class: 'screen-box', id: 'screen' });
  const connect = () => {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const rfb = new RFB(box, proto + '//' + location.host + API + '/vms/' + vm.id + '/console/vnc', { wsProtocols: ['binary'] });
    rfb.scaleViewport = true;   // fit to the window
    rfb.addEventListener('connect', () => { note.textContent = 'Connected'; });
    rfb.addEventListener('disconnect', (e) => {
      if (state.rfb !== rfb) return;
      state.rfb = null;
      note.textContent = e.detail.clean ? 'Disconnected' : 'Connection lost';
    });
    state.rfb = rfb;
  };
  body.append(h('div', { class: 'controls' }, note,
    h('button', { onclick: () => state.rfb && state.rfb.sendCtrlAltDel(), id: 'cad' }, 'Ctrl-Alt-Del'),
    h('button', { onclick: () => { closeConsole(); box.replaceChildren(); connect(); }, id: 'reconnect' }, 'Reconnect')), box);
  connect();
}

function openConsole(body, vm) {
  if (vm.state === 'off') {
    closeConsole();
    body.append(h('p', { class: 'muted' }, 'The VM is off: no console.'));
    return;
  }
  const box = h('div', { class: 'terminal-box', id: 'serial' });
  const note = h('p', { class: 'muted', id: 'console-note' }, 'Serial console');
  body.append(note, box);
  closeConsole();
  const term = new Terminal({ convertEol: false, scrollback: 5000, fontSize: 13 });
  term.open(box);
  state.term = term;
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const sock = new WebSocket(proto + '//' + location.host + API + '/vms/' + vm.id + '/console/serial');
  sock.binaryType = 'arraybuffer';
  state.sock = sock;
  const enc = new TextEncoder();
  sock.onopen = () => { note.textContent = 'Serial console: connected'; term.focus(); };
  sock.onmessage = (e) => term.write(new Uint8Array(e.data));
  sock.onclose = (e) => { note.textContent = 'Serial console: closed (' + e.code + ')'; };
  term.onData((d) => { if (sock.readyState === 1) sock.send(enc.encode(d)); });
  window.velaTerminal = term;   // for tests and the curious: the buffer is readable
}

// ------------------------------------------------------------ performance

async function showChart(body, id) {
  const box = h('div', { id: 'chart' });
  const note = h('p', { class: 'muted', id: 'chart-note' }, 'CPU (host cores) and memory (MiB) while the VM ran, last hour.');
  body.append(note, box);
  let j;
  try { j = (await api('GET', '/vms/' + id + '/stats')).stats; } catch (e) { note.textContent = e.message; return; }
  const s = j.samples;
  if (state.chart) { state.chart.destroy(); state.chart = null; }
  if (!s.length) { note.textContent = 'No samples yet: they come every ' + j.interval_ms / 1000 + ' s while the VM runs.'; return; }
  const data = [s.map((p) => p.time / 1000), s.map((p) => p.cpu), s.map((p) => mib(p.mem))];
  state.chart = new uPlot({
    width: Math.max(360, box.clientWidth || 600), height: 260,
    series: [{}, { label: 'CPU (cores)', stroke: '#1f6feb', scale: 'cpu' }, { label: 'Memory (MiB)', stroke: '#1a7f37', scale: 'mib' }],
    axes: [{}, { scale: 'cpu' }, { scale: 'mib', side: 1, grid: { show: false } }],
  }, data, box);
  box.dataset.points = String(s.length);
  clearTimeout(state.chartTimer);
  state.chartTimer = setTimeout(() => { if (state.tab === 'performance' && state.selected === id) loadDetail(); }, Math.max(j.interval_ms, 5000));
}

// ------------------------------------------------------------------ tasks

async function loadTasks() {
  let j;
  try { j = await api('GET', '/tasks?limit=8'); } catch (e) { return; }
  state.tasks = j.tasks.reverse();
  const body = document.querySelector('#tasks tbody');
  if (!body) return;
  body.replaceChildren(...state.tasks.map((t) => h('tr', { 'data-task': t.id },
    h('td', {}, t.type), h('td', { class: 'muted' }, t.target || (t.vm ? 'VM ' + t.vm : '')),
    h('td', {}, t.state === 'running' ? h('span', { class: 'progress' }, h('span', { style: 'width:' + t.progress + '%' })) : t.state),
    h('td', {}, t.state === 'running' && t.cancelable ? h('button', { onclick: () => cancelTask(t.id) }, 'Cancel') : (t.error ? h('span', { class: 'error' }, t.error.message) : '')))));
  if (state.tasks.some((t) => t.state === 'running')) setTimeout(loadTasks, 1000);
}

async function cancelTask(id) {
  try { await api('POST', '/tasks/' + id + '/cancel'); } catch (e) { flash('Cancel: ' + e.message, true); }
  loadTasks();
}

// --------------------------------------------------------------- live feed

function closeLive() {
  if (state.events) { state.events.close(); state.events = null; }
  closeConsole();
}

function openLive() {
  if (state.events) state.events.close();
  const es = new EventSource(API + '/events/stream');
  state.events = es;
  es.onmessage = (m) => {
    let e;
    try { e = JSON.parse(m.data); } catch (x) { return; }
    const feed = document.getElementById('events');
    if (feed) {
      feed.prepend(h('div', { class: e.severity === 'error' ? 'error' : '' },
        when(e.time) + ' ' + e.type + (e.vm ? ' (VM ' + e.vm + ')' : '') + ' ' + (e.user || '') + ': ' + e.message));
      while (feed.childElementCount > 200) feed.lastChild.remove();
    }
    // A change of a VM: refresh what shows it (at most every 300 ms).
    clearTimeout(state.refreshTimer);
    state.refreshTimer = setTimeout(() => {
      loadVMs().catch(() => {});
      loadTasks();
      if (state.selected && (!e.vm || e.vm === state.selected) && state.tab !== 'console' && state.tab !== 'screen') loadDetail();
      else if (state.selected && e.vm === state.selected) refreshDetailState();
    }, 300);
  };
  es.onerror = () => {
    // The browser reconnects by itself; a logged-out session gets 401 there.
    api('GET', '/session').catch(() => {});
  };
}

// On the console tab the terminal stays; only the state badge and controls follow.
async function refreshDetailState() {
  try {
    const vm = (await api('GET', '/vms/' + state.selected)).vm;
    const badge = document.getElementById('detail-state');
    if (badge) { badge.textContent = vm.state; badge.className = 'state ' + vm.state; }
    const old = document.getElementById('power-controls');
    if (old) old.replaceWith(controls(vm));
  } catch (e) { /* shown elsewhere */ }
}

start();
