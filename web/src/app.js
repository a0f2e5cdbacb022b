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
                term: null, sock: null, rfb: null, chart: null, chartTimer: null, tasks: [], refreshTimer: null,
                detailGen: 0, thumb: null, ioChart: null };
const TABS = { summary: 'Summary', console: 'Console', screen: 'Screen', performance: 'Performance', snapshots: 'Snapshots',
               backups: 'Backups', events: 'Events', log: 'Log' };

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
    // Once: later answers of requests that were under way change nothing.
    if (state.me) showLogin('Your session has ended. Log in again.');
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
  state.me = null;
  state.selected = null;
  clearTimeout(state.refreshTimer);
  clearTimeout(state.chartTimer);
  clearTimeout(state.usageTimer);
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
      h('span', { class: 'muted', id: 'host-usage' }),
      h('button', { id: 'nav-new', onclick: showWizard }, 'New VM'),
      h('button', { id: 'nav-ds', onclick: () => showDatastores() }, 'Datastores'),
      h('button', { id: 'nav-host', onclick: showHost }, 'Host'),
      h('span', { class: 'spacer' }),
      h('span', { id: 'who' }, state.me.user + ' (' + state.me.host_role + ' on the host)'),
      h('button', { onclick: logout, id: 'logout' }, 'Log out')),
    h('main', {},
      h('div', {},
        h('section', {}, h('h2', {}, 'Virtual machines'), h('p', { id: 'flash', class: 'muted' }),
          h('table', { id: 'vms' }, h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'State'),
          h('th', {}, 'Heartbeat'), h('th', {}, 'Guest OS'), h('th', {}, 'Uptime'), h('th', {}, 'CPU'),
          h('th', {}, 'Memory'), h('th', {}, 'Folder'))), h('tbody', {}))),
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
  }, h('td', { class: 'name' }, vm.name), h('td', {}, h('span', { class: 'state ' + vm.state }, vm.state)),
    h('td', { class: 'heartbeat' }, h('span', { class: 'hb ' + (vm.heartbeat || 'none'), title: 'guest agent heartbeat' },
      { ok: 'ok', lost: 'lost', none: '-' }[vm.heartbeat || 'none'] || '-')),
    h('td', { class: 'guest-os muted' }, vm.guest_os || ''),
    h('td', { class: 'uptime muted', 'data-since': vm.on_since || '' }, vm.on_since ? uptime(vm.on_since) : ''),
    h('td', { class: 'cpu muted' }, ''), h('td', { class: 'mem muted' }, ''), h('td', { class: 'muted' }, vm.folder))));
  const running = state.vms.filter((v) => v.state !== 'off').length;
  const sum = document.getElementById('host-summary');
  if (sum) sum.textContent = state.vms.length + ' VMs, ' + running + ' running';
  if (!state.vms.length) flash('No virtual machines you may see.');
  loadUsage();
}

// "3 d 4 h", "5 h 12 min", "42 s" since a time in ms.
function uptime(since) {
  let s = Math.max(0, Math.floor((Date.now() - since) / 1000));
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return d + ' d ' + hh + ' h';
  if (hh) return hh + ' h ' + m + ' min';
  if (m) return m + ' min';
  return s + ' s';
}
setInterval(() => document.querySelectorAll('td.uptime[data-since]').forEach((td) => {
  if (td.dataset.since) td.textContent = uptime(Number(td.dataset.since));
}), 10000);

// The newest sample of each running VM (and of the host) into the list.
async function loadUsage() {
  const since = Date.now() - 120000;
  // What the refresher learns about the guests (heartbeat, OS, since when
  // they run) comes without an event: refresh those cells with the usage.
  try {
    for (const vm of (await api('GET', '/vms')).vms) {
      const tr = document.querySelector('tr.vm[data-vm="' + vm.id + '"]');
      if (!tr) continue;
      const hb = vm.heartbeat || 'none';
      tr.querySelector('td.heartbeat').replaceChildren(h('span', { class: 'hb ' + hb, title: 'guest agent heartbeat' },
        { ok: 'ok', lost: 'lost', none: '-' }[hb] || '-'));
      tr.querySelector('td.guest-os').textContent = vm.guest_os || '';
      const up = tr.querySelector('td.uptime');
      up.dataset.since = vm.on_since || '';
      up.textContent = vm.on_since ? uptime(vm.on_since) : '';
    }
  } catch (e) { /* the next round */ }
  for (const vm of state.vms.filter((v) => v.state !== 'off').slice(0, 50)) {
    let st;
    try { st = (await api('GET', '/vms/' + vm.id + '/stats?since=' + since)).stats; } catch (e) { continue; }
    const last = st.samples[st.samples.length - 1];
    const tr = document.querySelector('tr.vm[data-vm="' + vm.id + '"]');
    if (!last || !tr) continue;
    tr.querySelector('td.cpu').textContent = last.cpu.toFixed(2) + ' cores';
    tr.querySelector('td.mem').textContent = mib(last.mem) + ' MiB';
  }
  try {
    const hs = (await api('GET', '/host/stats?since=' + since)).stats.samples;
    const last = hs[hs.length - 1];
    const el = document.getElementById('host-usage');
    if (last && el) el.textContent = 'host: ' + last.cpu.toFixed(2) + ' cores busy, ' + mib(last.mem) + ' of ' + mib(last.mem_total) + ' MiB in use';
  } catch (e) { /* no grant on the host */ }
  clearTimeout(state.usageTimer);
  state.usageTimer = setTimeout(() => { if (state.me) loadUsage(); }, 20000);
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
    b('Power on', s === 'off' || s === 'suspended', () => power('start'), 'start'),
    b('Shut down', s === 'on', () => power('stop', 'soft'), 'shutdown'),
    b('Power off', s !== 'off', () => power('stop', 'hard'), 'poweroff'),
    b('Reset', s === 'on', () => power('reset', 'hard'), 'reset'),
    b('Pause', s === 'on', () => power('pause'), 'pause'),
    b('Unpause', s === 'paused', () => power('unpause'), 'unpause'),
    b('Suspend', s === 'on' || s === 'paused', () => power('suspend'), 'suspend'),
    b('Resume', s === 'suspended', () => power('resume'), 'resume'));
}

// A form the user is typing in survives the redraws that events cause; it is
// drawn afresh once saved (markClean) or when another VM is shown.
function keepDirty(old, id, fresh) {
  fresh.dataset.vm = String(id);
  fresh.addEventListener('input', () => { fresh.dataset.dirty = '1'; });
  return old && old.dataset.dirty === '1' && old.dataset.vm === String(id) ? old : fresh;
}

function markClean(name) {
  const el = document.getElementById(name);
  if (el) delete el.dataset.dirty;
}

// The screen thumbnail on a VM's summary: one picture every 10 s however
// often the page is redrawn, the old one shown until the new one has
// arrived, and a failed one (the screen not up yet) tried again in 3 s.
// It refreshes itself while shown.
function thumbnail(id) {
  const t = state.thumb;
  if (t && t.id === id && Date.now() - t.at < 10000) return t.shown;
  const img = h('img', { id: 'thumb', class: 'thumb', alt: 'screen', title: 'Open the screen',
                         onclick: () => { state.tab = 'screen'; loadDetail(); } });
  const shown = t && t.id === id && t.shown.complete && t.shown.naturalWidth > 0 ? t.shown : img;
  const cur = { id, at: Date.now(), shown };
  state.thumb = cur;
  let tries = 0;
  img.addEventListener('load', () => {
    if (state.thumb !== cur) return;
    if (cur.shown !== img) {
      cur.shown.replaceWith(img);
      cur.shown = img;
    }
    // Live while it is on the page.
    setTimeout(() => { if (state.thumb === cur && img.isConnected) thumbnail(id); }, 10000);
  });
  img.addEventListener('error', () => {
    if (state.thumb !== cur || ++tries > 20) return;
    setTimeout(() => { if (state.thumb === cur && cur.shown.isConnected) img.src = API + '/vms/' + id + '/screenshot?t=' + Date.now(); }, 3000);
  });
  img.src = API + '/vms/' + id + '/screenshot?t=' + Date.now();
  return shown;
}

async function loadDetail() {
  if (!state.selected) return;
  const id = state.selected;
  if (!id) return;
  // Events, timers and clicks all redraw; only the newest call may draw, or
  // an older answer arriving late would show a stale VM.
  const gen = ++state.detailGen;
  let vm;
  try {
    vm = (await api('GET', '/vms/' + id)).vm;
  } catch (e) {
    document.getElementById('detail').replaceChildren(h('p', { class: 'error' }, e.message));
    return;
  }
  if (state.selected !== id || gen !== state.detailGen) return;
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
  // The summary's settings form needs the datastores' ISO list: fetched
  // before anything is replaced, so a newer redraw can still win.
  const editor = state.tab === 'summary' && roleAtLeast(role, 'admin') ? await settingsEditor(vm) : null;
  if (state.selected !== id || gen !== state.detailGen) return;
  const typedIn = Object.fromEntries(['settings', 'hardware', 'backup-form'].map((i) => [i, document.getElementById(i)]));
  document.getElementById('detail').replaceChildren(...[
    h('h2', {}, vm.name + ' ', h('span', { class: 'state ' + vm.state, id: 'detail-state' }, vm.state)),
    h('p', { class: 'muted' }, 'Your role: ' + role),
    operator ? controls(vm) : h('p', { class: 'muted', id: 'no-controls' }, 'Read-only: no power controls.'),
    q ? h('div', { class: 'question', id: 'question' }, h('p', {}, q.text),
      operator ? h('div', { class: 'controls' }, ...q.choices.map((c) => h('button', { onclick: () => answer(c), 'data-choice': c }, c))) : null) : null,
    tabs, body].filter((x) => x));
  if (state.tab === 'summary') {
    body.append(...[h('dl', {},
      h('dt', {}, 'Guest OS'), h('dd', {}, set.guestOS || '-'),
      h('dt', {}, 'Memory'), h('dd', {}, (set.memsize || '-') + ' MiB'),
      h('dt', {}, 'vCPUs'), h('dd', {}, set.vcpus || '-'),
      h('dt', {}, 'Disks'), h('dd', {}, (set.disks || []).map((d) => d.addr + ' ' + d.file).join(', ') || 'none'),
      h('dt', {}, 'Accelerator'), h('dd', {}, st.accel || '-'),
      h('dt', {}, 'Uptime'), h('dd', {}, st.uptime_s !== undefined ? uptime(Date.now() - st.uptime_s * 1000) : '-'),
      h('dt', {}, 'Guest agent'), h('dd', { id: 'guest-agent' }, st.guest
        ? st.guest.agent + ', heartbeat ' + st.guest.heartbeat + (st.guest.info ? ' (' + st.guest.info.agent + ')' : '') : '-'),
      h('dt', {}, 'Running OS'), h('dd', { id: 'guest-os' }, st.guest && st.guest.info
        ? (st.guest.info.os || '?') + ', kernel ' + (st.guest.info.kernel || '?') : '-'),
      h('dt', {}, 'Addresses'), h('dd', { id: 'guest-addresses' }, st.guest && st.guest.info && st.guest.info.addresses
        ? st.guest.info.addresses.map((a) => a.address + ' (' + a.interface + ')').join(', ') || 'none' : '-'),
      h('dt', {}, 'Annotation'), h('dd', {}, set.annotation || '')),
    pending.length ? h('p', { class: 'pending', id: 'pending' }, 'Pending until the next power cycle: ' + pending.map((p) => p.key).join(', ')) : null,
    operator && (vm.state === 'on' || vm.state === 'paused') ? thumbnail(id) : null,
    editor ? keepDirty(typedIn.settings, id, editor) : null,
    roleAtLeast(role, 'admin') ? keepDirty(typedIn.hardware, id, hardwareEditor(vm)) : null].filter((x) => x));
    closeConsole();
  } else if (state.tab === 'console') {
    openConsole(body, vm);
  } else if (state.tab === 'screen') {
    openScreen(body, vm);
  } else if (state.tab === 'snapshots') {
    closeConsole();
    body.append(await snapshotsView(vm, role));
  } else if (state.tab === 'backups') {
    closeConsole();
    body.append(await backupsView(vm, role, typedIn['backup-form']));
  } else if (state.tab === 'events') {
    closeConsole();
    const ev = (await api('GET', '/events?vm=' + id + '&limit=200')).events.reverse();
    body.append(h('div', { class: 'feed', id: 'vm-events' }, ...ev.map((e) => h('div', { class: e.severity === 'error' ? 'error' : '' },
      new Date(e.time).toLocaleString() + ' ' + e.severity + ' ' + e.type + ' ' + (e.user || '') + ': ' + e.message))));
  } else if (state.tab === 'log') {
    closeConsole();
    const log = (await api('GET', '/vms/' + id + '/log')).log;
    body.append(h('p', { class: 'muted' }, log.truncated ? 'The end of the log (' + log.size + ' bytes in all):' : 'The VM\'s log:'),
      h('pre', { class: 'log', id: 'vm-log' }, log.text || '(empty: the VM never ran)'));
  } else {
    closeConsole();
    showChart(body, id);
  }
}

// ------------------------------------------------------- settings editor

// ISO images of every datastore: its top folder and an "iso" folder.
async function isoFiles() {
  const out = [];
  let ds = [];
  try { ds = (await api('GET', '/datastores')).datastores; } catch (e) { return out; }
  for (const d of ds) {
    for (const dir of ['', 'iso']) {
      try {
        const es = (await api('GET', '/datastores/' + encodeURIComponent(d.name) + '/browse?path=' + encodeURIComponent(dir))).entries;
        for (const e of es) {
          if (e.type === 'file' && /\.iso$/i.test(e.name)) {
            const rel = dir ? dir + '/' + e.name : e.name;
            out.push({ label: '[' + d.name + '] ' + rel, path: d.path + '/' + rel });
          }
        }
      } catch (e) { /* no such folder */ }
    }
  }
  return out;
}

async function settingsEditor(vm) {
  const set = vm.settings || {};
  const isos = await isoFiles();
  const current = (set.cdroms || [])[0];
  const mem = h('input', { type: 'number', name: 'memsize', min: 16, value: set.memsize });
  const cpus = h('input', { type: 'number', name: 'vcpus', min: 1, max: 64, value: set.vcpus });
  const note = h('input', { name: 'annotation', value: set.annotation || '', size: 40 });
  const cd = h('select', { name: 'cdrom' }, h('option', { value: '' }, 'none'),
    ...isos.map((i) => h('option', { value: i.path, selected: current && current.file === i.path }, i.label)));
  const msg = h('span', { class: 'muted', id: 'settings-msg' });
  return h('form', { id: 'settings', onsubmit: async (ev) => {
    ev.preventDefault();
    const change = {};
    if (Number(mem.value) !== set.memsize) change.memsize = Number(mem.value);
    if (Number(cpus.value) !== set.vcpus) change.vcpus = Number(cpus.value);
    if (note.value !== (set.annotation || '')) change.annotation = note.value;
    if (cd.value !== (current ? current.file : '')) change.cdrom = cd.value;
    if (!Object.keys(change).length) { msg.textContent = 'Nothing changed.'; return; }
    try {
      const j = await api('PATCH', '/vms/' + vm.id, change);
      const pend = (j.vm.status && j.vm.status.pending_changes) || [];
      flash(pend.length ? 'Saved; pending until the next power cycle.' : 'Saved.');
      markClean('settings');
      loadDetail();
    } catch (e) { msg.textContent = e.message; msg.className = 'error'; }
  } }, h('h2', {}, 'Settings'),
  h('div', { class: 'form-grid' }, h('label', {}, 'Memory (MiB)'), mem, h('label', {}, 'vCPUs'), cpus,
    h('label', {}, 'CD-ROM'), cd, h('label', {}, 'Annotation'), note),
  h('div', { class: 'controls' }, h('button', { class: 'primary', type: 'submit', id: 'save-settings' }, 'Save'), msg));
}

// Hardware: disks (mode, remove), network cards, new ones, boot order.
const DISK_MODES = ['persistent', 'nonpersistent', 'undoable', 'append', 'independent-persistent', 'independent-nonpersistent'];

async function changeHardware(vm, change, what) {
  try {
    const j = await api('PATCH', '/vms/' + vm.id, change);
    const pend = (j.vm.status && j.vm.status.pending_changes) || [];
    flash(what + (pend.length ? ': pending until the next power cycle.' : ': done.'));
  } catch (e) {
    flash(what + ': ' + e.message, true);
  }
  markClean('hardware');
  loadDetail();
}

function hardwareEditor(vm) {
  const set = vm.settings || {};
  const size = h('input', { name: 'disk-size', value: '8g', size: 6 });
  const type = h('select', { name: 'disk-type' }, ...['monolithicSparse', 'qcow2', 'vhd-dynamic', 'raw'].map((t) => h('option', { value: t }, t)));
  const bus = h('select', { name: 'disk-bus' }, ...['scsi', 'virtio', 'sata', 'ide'].map((t) => h('option', { value: t }, t)));
  const conn = h('select', { name: 'nic-connection' }, ...['nat', 'bridged', 'hostonly'].map((t) => h('option', { value: t }, t)));
  const boot = h('input', { name: 'boot-order', value: set.boot_order || '', placeholder: 'cdrom,disk', size: 16 });
  // A serial port writes to a file or a named pipe in the VM's folder, or is the console.
  const serialFile = h('input', { name: 'serial-file', placeholder: 'file name in the VM folder', size: 18 });
  const serialEnd = h('select', { name: 'serial-endpoint' }, h('option', { value: 'server' }, 'server'), h('option', { value: 'client' }, 'client'));
  const serialType = h('select', { name: 'serial-type', onchange: () => {
    serialFile.disabled = serialType.value === 'console';
    serialEnd.disabled = serialType.value !== 'pipe';
  } }, ...['file', 'pipe', 'console'].map((t) => h('option', { value: t }, t)));
  serialEnd.disabled = true;
  return h('div', { id: 'hardware' }, h('h2', {}, 'Hardware'),
    h('table', { id: 'hw-disks' }, h('tbody', {}, ...(set.disks || []).map((d) => h('tr', { 'data-disk': d.addr },
      h('td', {}, d.addr), h('td', { class: 'muted' }, d.file),
      h('td', {}, h('select', { name: 'mode', onchange: (e) => changeHardware(vm, { disk_modes: { [d.addr]: e.target.value } }, d.addr + ' mode') },
        ...DISK_MODES.map((m) => h('option', { value: m, selected: m === d.mode }, m)))),
      h('td', {}, h('button', { onclick: () => changeHardware(vm, { remove_devices: [d.addr] }, 'Remove ' + d.addr) }, 'Remove')))),
    ...(set.nics || []).map((n) => h('tr', { 'data-nic': n.name }, h('td', {}, n.name),
      h('td', { class: 'muted' }, n.connection + (n.network ? ' ' + n.network : '') + ' ' + n.device + ' ' + (n.mac || '')), h('td', {}),
      h('td', {}, h('button', { onclick: () => changeHardware(vm, { remove_devices: [n.name] }, 'Remove ' + n.name) }, 'Remove')))))),
    h('div', { class: 'controls' }, 'New disk', size, type, 'on', bus,
      h('button', { id: 'add-disk', onclick: () => changeHardware(vm, { add_disks: [{ size: size.value, type: type.value, bus: bus.value }] }, 'Add disk') }, 'Add disk')),
    h('div', { class: 'controls' }, 'New network card', conn,
      h('button', { id: 'add-nic', onclick: () => changeHardware(vm, { add_nics: [{ connection: conn.value }] }, 'Add network card') }, 'Add')),
    h('table', { id: 'hw-serials' }, h('tbody', {}, ...(set.serials || []).map((p) => h('tr', { 'data-serial': p.name },
      h('td', {}, p.name), h('td', { class: 'muted' }, p.type + (p.file ? ' ' + p.file : '') + (p.endpoint ? ' (' + p.endpoint + ')' : '')),
      h('td', {}), h('td', {}, h('button', { onclick: () => changeHardware(vm, { remove_devices: [p.name] }, 'Remove ' + p.name) }, 'Remove')))))),
    h('div', { class: 'controls' }, 'New serial port', serialType, serialFile, serialEnd,
      h('button', { id: 'add-serial', onclick: () => {
        const port = { type: serialType.value };
        if (serialType.value !== 'console') port.file = serialFile.value;
        if (serialType.value === 'pipe') port.endpoint = serialEnd.value;
        changeHardware(vm, { add_serials: [port] }, 'Add serial port');
      } }, 'Add')),
    h('div', { class: 'controls' }, 'Boot order', boot,
      h('button', { id: 'set-boot', onclick: () => changeHardware(vm, { boot_order: boot.value }, 'Boot order') }, 'Set')));
}

// -------------------------------------------------------------- snapshots

async function snapshotOp(vm, path, body, what) {
  try {
    await api('POST', '/vms/' + vm.id + '/snapshots' + path, body);
    flash(what + ': done.');
  } catch (e) {
    flash(what + ': ' + e.message, true);
  }
  loadDetail();
}

async function snapshotsView(vm, role) {
  const snaps = (await api('GET', '/vms/' + vm.id + '/snapshots')).snapshots;
  const admin = roleAtLeast(role, 'admin');
  const rows = [];
  const walk = (parent, depth) => {
    for (const s of snaps.filter((x) => x.parent === parent)) {
      rows.push(h('tr', { 'data-snapshot': s.name },
        h('td', { style: 'padding-left:' + (6 + depth * 18) + 'px' }, s.name + (s.current ? ' (current)' : '') +
          (s.memory ? ' [memory]' : '')),
        h('td', { class: 'muted' }, s.created), h('td', { class: 'muted' }, s.description),
        h('td', {}, admin ? h('button', { 'data-op': 'revert', disabled: vm.state !== 'off' && !s.memory,
          onclick: () => snapshotOp(vm, '/revert', { name: s.name }, 'Revert to ' + s.name) }, 'Revert') : null,
        admin ? h('button', { 'data-op': 'delete', onclick: () => snapshotOp(vm, '/delete', { name: s.name }, 'Delete ' + s.name) }, 'Delete') : null)));
      walk(s.uid, depth + 1);
    }
  };
  walk(0, 0);
  const name = h('input', { name: 'snapshot-name', placeholder: 'name' });
  const desc = h('input', { name: 'snapshot-description', placeholder: 'description', size: 30 });
  const running = vm.state === 'on' || vm.state === 'paused';
  const memory = h('input', { type: 'checkbox', name: 'snapshot-memory', disabled: !running });
  const quiesce = h('input', { type: 'checkbox', name: 'snapshot-quiesce', disabled: !running });
  const snapBody = () => Object.assign({ name: name.value }, desc.value ? { description: desc.value } : {},
    memory.checked ? { memory: true } : {}, quiesce.checked && !memory.checked ? { quiesce: true } : {});
  return h('div', { id: 'snapshots' },
    snaps.length ? h('table', {}, h('tbody', {}, ...rows)) : h('p', { class: 'muted' }, 'No snapshots.'),
    roleAtLeast(role, 'operator') ? h('div', { class: 'controls' }, name, desc,
      h('label', {}, memory, ' with memory'), h('label', {}, quiesce, ' quiesce'),
      h('button', { id: 'take-snapshot', onclick: () => snapshotOp(vm, '', snapBody(), 'Snapshot ' + name.value) }, 'Take snapshot')) : null,
    h('p', { class: 'muted' }, 'A snapshot with memory brings the VM back running at that instant; a disk-only one ' +
      'needs the VM off to revert. Quiesce asks the guest agent to freeze the file systems. Independent disks are not included.'));
}

// ---------------------------------------------------------------- backups

const enc = encodeURIComponent;
const interval = (s) => s % 86400 === 0 ? (s / 86400) + (s === 86400 ? ' day' : ' days')
  : s % 3600 === 0 ? (s / 3600) + ' h' : Math.round(s / 60) + ' min';
const sizeText = (b) => b >= 1073741824 ? (b / 1073741824).toFixed(1) + ' GiB' : mib(b) + ' MiB';

// The VM's backups in one datastore folder (the schedule's, or the one the
// form names), a backup now (a task), and the schedule with retention.
async function backupsView(vm, role, typed) {
  const admin = roleAtLeast(role, 'admin');
  let dss = [];
  try { dss = (await api('GET', '/datastores')).datastores; } catch (e) { /* no grant: the list says so below */ }
  const sched = (await api('GET', '/vms/' + vm.id + '/backup-schedule')).schedules[0];
  const where = state.backupWhere && state.backupWhere.vm === vm.id ? state.backupWhere
    : { vm: vm.id, datastore: sched ? sched.datastore : (dss[0] && dss[0].name), folder: sched ? sched.folder : 'backups' };
  let list = [];
  let listNote = '';
  if (!where.datastore) listNote = 'No datastore to keep backups in.';
  else {
    try {
      list = (await api('GET', '/vms/' + vm.id + '/backups?datastore=' + enc(where.datastore) + '&folder=' + enc(where.folder || 'backups'))).backups;
    } catch (e) { listNote = e.message; }
  }
  const byFolder = Object.fromEntries(list.map((b) => [b.folder, b]));
  const table = list.length ? h('table', { id: 'backup-list' }, h('thead', {}, h('tr', {},
    ...['Backup', 'Taken', 'Kind', 'Consistency', 'Size'].map((t) => h('th', {}, t)))),
  h('tbody', {}, ...list.map((b) => h('tr', { 'data-backup': b.folder },
    h('td', {}, b.folder), h('td', { class: 'muted' }, new Date(b.created).toLocaleString()),
    h('td', {}, b.incremental ? 'incremental' + (b.builds_on && byFolder[b.builds_on] ? ' on ' + b.builds_on : '') : 'full'),
    h('td', {}, b.quiesced ? 'application (quiesced)' : b.live ? 'crash-consistent (live)' : 'VM off'),
    h('td', { class: 'num' }, sizeText(b.bytes)))))) : h('p', { class: 'muted', id: 'backup-list-note' },
    listNote || 'No backups of this VM in [' + where.datastore + '] ' + (where.folder || 'backups') + '.');
  const info = h('p', { id: 'backup-schedule' }, sched
    ? 'Scheduled: every ' + interval(sched.every_s) + ' into [' + sched.datastore + '] ' + sched.folder +
      ', keeping the newest ' + sched.keep + (sched.incremental ? ', incremental' : '') + (sched.quiesce ? ', quiesced' : '') +
      (sched.compress ? ', compressed' : '') + '; next ' + new Date(sched.next_run).toLocaleString() + '.'
    : 'No scheduled backups.');
  if (!admin) return h('div', { id: 'backups' }, info, table);

  const ds = h('select', { name: 'backup-datastore' }, ...dss.map((d) => h('option', { value: d.name, selected: d.name === where.datastore }, d.name)));
  const folder = h('input', { name: 'backup-folder', value: where.folder || 'backups', size: 14 });
  const box = (name, on) => h('input', { type: 'checkbox', name, checked: !!on });   // the API's flags are 0/1
  const quiesce = box('backup-quiesce', sched ? sched.quiesce : false);
  const compress = box('backup-compress', sched ? sched.compress : false);
  const incremental = box('backup-incremental', sched ? sched.incremental : false);
  const keep = h('input', { type: 'number', name: 'backup-keep', min: 1, max: 1000, value: sched ? sched.keep : 7, size: 4 });
  const every = h('input', { type: 'number', name: 'backup-every', min: 1, value: sched ? Math.max(1, Math.round(sched.every_s / 3600)) : 24, size: 4 });
  const spec = () => Object.assign({ datastore: ds.value, folder: folder.value || 'backups', keep: Number(keep.value) },
    quiesce.checked ? { quiesce: true } : {}, compress.checked ? { compress: true } : {}, incremental.checked ? { incremental: true } : {});
  const act = async (what, fn) => {
    try { await fn(); flash(what); } catch (e) { flash(what + ': ' + e.message, true); }
    markClean('backup-form');
    state.backupWhere = { vm: vm.id, datastore: ds.value, folder: folder.value || 'backups' };
    loadTasks();
    loadDetail();
  };
  const fresh = h('form', { id: 'backup-form', onsubmit: (ev) => ev.preventDefault() },
    h('div', { class: 'form-grid' },
      h('label', {}, 'Datastore'), ds, h('label', {}, 'Folder'), folder,
      h('label', {}, 'Keep the newest'), keep, h('label', {}, 'Every (hours)'), every),
    h('div', { class: 'controls' }, h('label', {}, quiesce, ' quiesce (guest agent)'), h('label', {}, compress, ' compress'),
      h('label', {}, incremental, ' incremental (changed blocks; ctkEnabled)')),
    h('div', { class: 'controls' },
      h('button', { class: 'primary', id: 'backup-now', type: 'button', onclick: () => act('Backup started', async () => {
        const j = await api('POST', '/vms/' + vm.id + '/backup?wait=0', spec());
        flash('Backup started: task ' + j.task.id);
      }) }, 'Back up now'),
      h('button', { id: 'backup-schedule-save', type: 'button', onclick: () => act('Schedule saved', () =>
        api('PUT', '/vms/' + vm.id + '/backup-schedule', Object.assign(spec(), { every: Number(every.value) * 3600 }))) }, 'Save schedule'),
      sched ? h('button', { id: 'backup-schedule-remove', type: 'button', onclick: () => act('Schedule removed', () =>
        api('DELETE', '/vms/' + vm.id + '/backup-schedule')) }, 'Remove schedule') : null,
      h('button', { id: 'backup-list-show', type: 'button', onclick: () => act('Listed', async () => {}) }, 'List this folder')));
  return h('div', { id: 'backups' }, info, keepDirty(typed, vm.id, fresh), table,
    h('p', { class: 'muted' }, 'A backup keeps the VM running: its disks get redo logs at one instant, the images under them ' +
      'are copied, and the logs are merged back. To take single files out of a backup: vela backup mount BACKUP DIR on the host.'));
}

// ------------------------------------------------------------ new VM wizard

const PRESETS = {
  'debian12-64': { label: 'Debian 12 (64-bit)', memsize: 1024, vcpus: 1, disk: '16g' },
  'ubuntu-64': { label: 'Ubuntu (64-bit)', memsize: 2048, vcpus: 2, disk: '20g' },
  'windows2019srv-64': { label: 'Windows Server 2019', memsize: 4096, vcpus: 2, disk: '40g' },
  'other-64': { label: 'Other (64-bit)', memsize: 512, vcpus: 1, disk: '8g' },
};

async function showWizard() {
  closeConsole();
  state.selected = null;
  document.querySelectorAll('tr.vm').forEach((tr) => tr.classList.remove('selected'));
  const isos = await isoFiles();
  const f = {
    name: h('input', { name: 'name', required: true, placeholder: 'web01' }),
    folder: h('input', { name: 'folder', value: '/' }),
    os: h('select', { name: 'guestOS' }, ...Object.entries(PRESETS).map(([k, p]) => h('option', { value: k }, p.label))),
    memsize: h('input', { type: 'number', name: 'memsize', min: 16 }),
    vcpus: h('input', { type: 'number', name: 'vcpus', min: 1, max: 64 }),
    disk: h('input', { name: 'disk', size: 8 }),
    type: h('select', { name: 'type' }, ...['monolithicSparse', 'qcow2', 'vhd-dynamic', 'monolithicFlat', 'raw'].map((t) => h('option', { value: t }, t))),
    bus: h('select', { name: 'bus' }, ...['scsi', 'virtio', 'sata', 'ide'].map((t) => h('option', { value: t }, t))),
    nic: h('input', { type: 'checkbox', name: 'nic', checked: true }),
    iso: h('select', { name: 'cdrom' }, h('option', { value: '' }, 'none'), ...isos.map((i) => h('option', { value: i.path }, i.label))),
  };
  const preset = () => { const p = PRESETS[f.os.value]; f.memsize.value = p.memsize; f.vcpus.value = p.vcpus; f.disk.value = p.disk; };
  f.os.addEventListener('change', preset);
  preset();
  const msg = h('p', { id: 'wizard-msg', class: 'muted' });
  const form = h('form', { id: 'wizard', onsubmit: async (ev) => {
    ev.preventDefault();
    const spec = { name: f.name.value, folder: f.folder.value || '/', guestOS: f.os.value, memsize: Number(f.memsize.value),
                   vcpus: Number(f.vcpus.value), nic: f.nic.checked, disks: f.disk.value ? [{ size: f.disk.value, type: f.type.value, bus: f.bus.value }] : [] };
    if (f.iso.value) spec.cdrom = f.iso.value;
    msg.textContent = 'Creating…';
    try {
      const t = (await api('POST', '/vms/create?wait=0', spec)).task;
      const done = (await api('GET', '/tasks/' + t.id + '?wait=120')).task;
      if (done.state !== 'success') throw new Error(done.error ? done.error.message : done.state);
      await loadVMs();
      select(done.result.id);
    } catch (e) { msg.textContent = 'Not created: ' + e.message; msg.className = 'error'; }
  } },
  h('h2', {}, 'New virtual machine'),
  h('div', { class: 'form-grid' },
    h('label', {}, 'Name'), f.name, h('label', {}, 'Folder'), f.folder, h('label', {}, 'Guest OS'), f.os,
    h('label', {}, 'Memory (MiB)'), f.memsize, h('label', {}, 'vCPUs'), f.vcpus,
    h('label', {}, 'Disk size'), h('span', {}, f.disk, ' ', f.type, ' on ', f.bus),
    h('label', {}, 'Network (NAT)'), f.nic, h('label', {}, 'CD-ROM'), f.iso),
  h('div', { class: 'controls' }, h('button', { class: 'primary', type: 'submit', id: 'create-vm' }, 'Create')), msg);
  document.getElementById('detail').replaceChildren(form);
}

// --------------------------------------------------------------- datastores

async function showDatastores(dsName, path) {
  closeConsole();
  state.selected = null;
  const view = document.getElementById('detail');
  let ds;
  try { ds = (await api('GET', '/datastores')).datastores; } catch (e) { view.replaceChildren(h('p', { class: 'error' }, e.message)); return; }
  const cur = ds.find((d) => d.name === dsName) || ds[0];
  path = path || '';
  const entries = (await api('GET', '/datastores/' + encodeURIComponent(cur.name) + '/browse?path=' + encodeURIComponent(path))).entries;
  entries.sort((a, b) => (a.type === b.type ? a.name.localeCompare(b.name) : a.type === 'folder' ? -1 : 1));
  const up = path.includes('/') ? path.slice(0, path.lastIndexOf('/')) : '';
  const fileUrl = (name) => API + '/datastores/' + encodeURIComponent(cur.name) + '/files/' + (path ? path.split('/').map(encodeURIComponent).join('/') + '/' : '') + encodeURIComponent(name);
  const input = h('input', { type: 'file', id: 'upload-file' });
  // The last upload's outcome stays shown when the listing is redrawn.
  const last = state.upload || { pct: 0, text: '' };
  const bar = h('span', { class: 'progress', id: 'upload-progress' }, h('span', { style: 'width:' + last.pct + '%' }));
  const msg = h('span', { class: 'muted', id: 'upload-msg' }, last.text);
  const upload = () => {
    const file = input.files[0];
    if (!file) return;
    const xhr = new XMLHttpRequest();
    xhr.open('PUT', fileUrl(file.name));
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.firstChild.style.width = Math.round(100 * e.loaded / e.total) + '%'; };
    xhr.onload = () => {
      let j = null;
      try { j = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      if (j && j.ok) {
        state.upload = { pct: 100, text: 'Uploaded ' + j.file.path + ' (' + j.file.size + ' bytes)' };
        showDatastores(cur.name, path);
      }
      else msg.textContent = 'Upload failed: ' + (j && j.error ? j.error.message : 'HTTP ' + xhr.status);
    };
    xhr.onerror = () => { msg.textContent = 'Upload failed (connection closed)'; };
    msg.textContent = 'Uploading ' + file.name + '…';
    xhr.send(file);
  };
  view.replaceChildren(h('h2', {}, 'Datastores'),
    h('div', { class: 'controls' }, ...ds.map((d) => h('button', { class: d.name === cur.name ? 'active' : '', onclick: () => showDatastores(d.name, '') },
      d.name + ' — ' + mib(d.free) + ' of ' + mib(d.capacity) + ' MiB free' + (d.low_space ? ' (low)' : '')))),
    h('p', { class: 'muted', id: 'ds-path' }, '[' + cur.name + '] /' + path),
    h('table', { id: 'ds-entries' }, h('tbody', {},
      path ? h('tr', {}, h('td', {}, h('a', { href: '#', onclick: (e) => { e.preventDefault(); showDatastores(cur.name, up); } }, '..')), h('td', {}), h('td', {})) : null,
      ...entries.map((e) => h('tr', { 'data-entry': e.name },
        h('td', {}, e.type === 'folder' ? h('a', { href: '#', onclick: (ev) => { ev.preventDefault(); showDatastores(cur.name, path ? path + '/' + e.name : e.name); } }, e.name + '/')
          : h('a', { href: fileUrl(e.name), download: e.name }, e.name)),
        h('td', { class: 'muted' }, e.type === 'file' ? e.size + ' bytes' : e.type),
        h('td', { class: 'muted' }, new Date(e.mtime).toLocaleString()))))),
    h('h2', {}, 'Upload a file here'),
    h('div', { class: 'controls' }, input, h('button', { onclick: upload, id: 'upload-start' }, 'Upload'), bar, msg));
}

// ------------------------------------------------------------------ host

async function showHost() {
  closeConsole();
  state.selected = null;
  const view = document.getElementById('detail');
  const info = (await api('GET', '/host')).host;
  const box = h('div', { id: 'host-chart' });
  view.replaceChildren(h('h2', {}, 'Host ' + info.name),
    h('dl', {}, h('dt', {}, 'Version'), h('dd', {}, info.version), h('dt', {}, 'VMs'), h('dd', {}, info.vms + ' (' + info.running + ' running)'),
      h('dt', {}, 'Datastores'), h('dd', {}, info.datastores.map((d) => d.name + ': ' + mib(d.free) + ' MiB free').join(', '))),
    h('h2', {}, 'CPU and memory, last hour'), box);
  let j;
  try { j = (await api('GET', '/host/stats')).stats; } catch (e) { box.textContent = e.message; return; }
  if (!j.samples.length) { box.textContent = 'No samples yet.'; return; }
  const s = j.samples;
  if (state.chart) state.chart.destroy();
  state.chart = new uPlot({ width: Math.max(360, box.clientWidth || 600), height: 240,
    series: [{}, { label: 'CPU (cores busy)', stroke: '#1f6feb', scale: 'cpu' }, { label: 'Memory used (MiB)', stroke: '#1a7f37', scale: 'mib' }],
    axes: [{}, { scale: 'cpu' }, { scale: 'mib', side: 1, grid: { show: false } }] },
  [s.map((p) => p.time / 1000), s.map((p) => p.cpu), s.map((p) => mib(p.mem))], box);
  box.dataset.points = String(s.length);
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
  const ioBox = h('div', { id: 'io-chart' });
  const note = h('p', { class: 'muted', id: 'chart-note' }, 'CPU (host cores) and memory (MiB) while the VM ran, last hour.');
  const ioNote = h('p', { class: 'muted' }, 'Disk and network, KiB/s (network as the guest agent counts it).');
  body.append(note, box, ioNote, ioBox);
  let j;
  try { j = (await api('GET', '/vms/' + id + '/stats')).stats; } catch (e) { note.textContent = e.message; return; }
  const s = j.samples;
  if (state.chart) { state.chart.destroy(); state.chart = null; }
  if (state.ioChart) { state.ioChart.destroy(); state.ioChart = null; }
  if (!s.length) { note.textContent = 'No samples yet: they come every ' + j.interval_ms / 1000 + ' s while the VM runs.'; return; }
  const data = [s.map((p) => p.time / 1000), s.map((p) => p.cpu), s.map((p) => mib(p.mem))];
  state.chart = new uPlot({
    width: Math.max(360, box.clientWidth || 600), height: 260,
    series: [{}, { label: 'CPU (cores)', stroke: '#1f6feb', scale: 'cpu' }, { label: 'Memory (MiB)', stroke: '#1a7f37', scale: 'mib' }],
    axes: [{}, { scale: 'cpu' }, { scale: 'mib', side: 1, grid: { show: false } }],
  }, data, box);
  box.dataset.points = String(s.length);
  const kib = (k) => s.map((p) => Math.round((p[k] || 0) / 1024));
  if (state.ioChart) state.ioChart.destroy();
  state.ioChart = new uPlot({
    width: Math.max(360, ioBox.clientWidth || 600), height: 200,
    series: [{}, { label: 'Disk read', stroke: '#1f6feb' }, { label: 'Disk write', stroke: '#cf222e' },
      { label: 'Net received', stroke: '#1a7f37' }, { label: 'Net sent', stroke: '#9a6700' }],
  }, [data[0], kib('disk_rd'), kib('disk_wr'), kib('net_rx'), kib('net_tx')], ioBox);
  ioBox.dataset.points = String(s.length);
  ioBox.dataset.netMax = String(Math.max(0, ...s.map((p) => (p.net_rx || 0) + (p.net_tx || 0))));
  clearTimeout(state.chartTimer);
  state.chartTimer = setTimeout(() => { if (state.tab === 'performance' && state.selected === id) loadDetail(); }, Math.max(j.interval_ms, 5000));
}

// ------------------------------------------------------------------ tasks

async function loadTasks() {
  if (!state.me) return;
  let j;
  try { j = await api('GET', '/tasks?limit=8'); } catch (e) { return; }
  state.tasks = j.tasks.reverse();
  const body = document.querySelector('#tasks tbody');
  if (!body) return;
  body.replaceChildren(...state.tasks.map((t) => h('tr', { 'data-task': t.id },
    h('td', {}, t.type), h('td', { class: 'muted' }, t.target || (t.vm ? 'VM ' + t.vm : '')),
    h('td', {}, t.state === 'running' ? h('span', { class: 'progress' }, h('span', { style: 'width:' + t.progress + '%' })) : t.state),
    h('td', {}, t.state === 'running' && t.cancelable ? h('button', { onclick: () => cancelTask(t.id) }, 'Cancel') : (t.error ? h('span', { class: 'error' }, t.error.message) : '')))));
  if (state.me && state.tasks.some((t) => t.state === 'running')) setTimeout(loadTasks, 1000);
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
      if (!state.me) return;
      loadVMs().catch(() => {});
      loadTasks();
      if (state.selected && (!e.vm || e.vm === state.selected) && state.tab !== 'console' && state.tab !== 'screen') loadDetail();
      else if (state.selected && e.vm === state.selected) refreshDetailState();
    }, 300);
  };
  es.onerror = () => {
    // The browser reconnects by itself; an ended session shows the login.
    if (state.me) api('GET', '/session').catch((e) => { if (e.status === 401 && state.me) showLogin('Your session has ended. Log in again.'); });
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
