// ui.mjs - the web UI end to end in real Chromium (playwright-core driving
// Debian's /usr/bin/chromium) against a real velad with a real guest.
// Prints "PASS: ..." / "FAIL: ..." lines for tests/run-all.sh; run by
// tests/integ/test-web-ui.sh, which sets up velad, users and the VM:
//   URL, ADMIN, READONLY, PASSWORD, VM_NAME, SHOTS (screenshot folder)
import { createRequire } from 'node:module';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const require = createRequire(import.meta.url);
const { chromium } = require(join(process.cwd(), 'web', 'node_modules', 'playwright-core'));
const env = process.env;
const shots = env.SHOTS;
mkdirSync(shots, { recursive: true });
let failures = 0;
let page = null;   // for a screenshot of what a failed check saw
const pass = (what) => console.log('PASS: ' + what);
const fail = (what) => { console.log('FAIL: ' + what); failures++; };
async function check(what, fn) {
  try {
    await fn();
    pass(what);
  } catch (e) {
    // What the page itself said, for a failure seen only in a CI log.
    let said = '';
    if (page) said = await page.evaluate(() => ['flash', 'settings-msg', 'login-error']
      .map((i) => document.getElementById(i)).filter((el) => el && el.textContent)
      .map((el) => el.id + ': ' + el.textContent).join('; ')).catch(() => '');
    fail(what + ': ' + String(e.message || e).split('\n')[0] + (said ? ' [page: ' + said + ']' : ''));
    if (page) await page.screenshot({ path: join(shots, 'failed-' + failures + '.png') }).catch(() => {});
  }
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
try {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1400, height: 900 } });
  page = await ctx.newPage();
  page.setDefaultTimeout(15000);
  page.on('pageerror', (e) => console.log('page error: ' + e.message));
  const row = () => page.locator('tr.vm', { hasText: env.VM_NAME });
  const row2 = () => page.locator('tr.vm', { hasText: env.COPY_NAME });

  await check('the login page loads from velad (no CDN)', async () => {
    const offsite = [];
    page.on('request', (r) => { if (!r.url().startsWith(env.URL)) offsite.push(r.url()); });
    await page.goto(env.URL + '/');
    await page.locator('input[name=user]').waitFor({ timeout: 15000 });
    if (offsite.length) throw new Error('requests elsewhere: ' + offsite.join(' '));
  });
  await page.screenshot({ path: join(shots, 'login.png') });
  await check('a wrong password is refused on the page', async () => {
    await page.fill('input[name=user]', env.ADMIN);
    await page.fill('input[name=password]', 'wrong-' + env.PASSWORD);
    await page.click('button[type=submit]');
    await page.locator('#login-error', { hasText: 'Login failed' }).waitFor({ timeout: 15000 });
  });
  await check('the administrator logs in and sees the VM, off', async () => {
    await page.fill('input[name=password]', env.PASSWORD);
    await page.click('button[type=submit]');
    await row().waitFor({ timeout: 15000 });
    await row().locator('.state', { hasText: 'off' }).waitFor({ timeout: 5000 });
  });
  await check('power on from the page; the list turns "on" live', async () => {
    await row().click();
    await page.locator('button[data-action=start]').click();
    await row().locator('.state', { hasText: /^on$/ }).waitFor({ timeout: 60000 });
    await page.locator('#detail-state', { hasText: /^on$/ }).waitFor({ timeout: 15000 });
  });
  await page.screenshot({ path: join(shots, 'overview.png') });
  await check("the list shows the running VM's CPU and memory, the header the host's", async () => {
    // The list reloads the newest samples every 20 s and at every change.
    await row().locator('td.mem', { hasText: 'MiB' }).waitFor({ timeout: 30000 });
    await page.locator('#host-usage', { hasText: 'cores busy' }).waitFor({ timeout: 30000 });
  });
  await check('the VM page shows a thumbnail of its screen', async () => {
    await page.locator('button[data-tab=summary]').click();
    await page.locator('#thumb').waitFor();
    // The first picture can fail while the display comes up; the page
    // tries again every 3 s.
    for (let i = 0; i < 150 && !(await page.locator('#thumb').evaluate((img) => img.complete && img.naturalWidth > 0)); i++)
      await page.waitForTimeout(200);
    const w = await page.locator('#thumb').evaluate((img) => img.naturalWidth);
    if (!(w >= 320)) throw new Error('natural width ' + w);
  });
  await check('the tasks panel shows the power-on, ended', async () => {
    await page.locator('#tasks tr', { hasText: 'vm.power.start' }).first().locator('td', { hasText: 'success' }).waitFor({ timeout: 15000 });
  });
  await check('the serial console shows the guest and runs a command in it', async () => {
    await page.locator('button[data-tab=console]').click();
    await page.locator('#console-note', { hasText: 'connected' }).waitFor({ timeout: 15000 });
    const text = () => page.evaluate(() => {
      const b = window.velaTerminal.buffer.active;
      let s = '';
      for (let i = 0; i < b.length; i++) s += b.getLine(i).translateToString(true) + '\n';
      return s;
    });
    for (let i = 0; i < 150 && !(await text()).includes('vela-guest#'); i++) await page.waitForTimeout(200);
    if (!(await text()).includes('vela-guest#')) throw new Error('no guest prompt: ' + (await text()).slice(-200));
    await page.locator('#serial').click();
    await page.keyboard.type('echo UI-$((6*7))-OK');
    await page.keyboard.press('Enter');
    for (let i = 0; i < 100 && !(await text()).includes('UI-42-OK'); i++) await page.waitForTimeout(200);
    if (!(await text()).includes('UI-42-OK')) throw new Error('the command did not run: ' + (await text()).slice(-200));
  });
  await page.screenshot({ path: join(shots, 'console.png') });
  await check('the graphical console (noVNC through velad) shows the screen, not a blank canvas', async () => {
    await page.locator('button[data-tab=screen]').click();
    await page.locator('#screen-note', { hasText: 'Connected' }).waitFor({ timeout: 20000 });
    let lit = 0;
    for (let i = 0; i < 50 && lit < 200; i++) {
      await page.waitForTimeout(200);
      lit = await page.evaluate(() => {
        const c = document.querySelector('#screen canvas');
        if (!c || !c.width || !c.height) return 0;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 60) n++;
        return n;
      });
    }
    if (lit < 200) throw new Error('only ' + lit + ' lit pixels');
  });
  await page.locator('#screen').screenshot({ path: join(shots, 'screen.png') });
  await check('the performance tab charts samples of the running VM', async () => {
    await page.waitForTimeout(3500);   // a few samples (velad samples every second in this test)
    await page.locator('button[data-tab=performance]').click();
    await page.locator('#chart canvas').first().waitFor({ timeout: 15000 });
    const points = Number(await page.locator('#chart').getAttribute('data-points'));
    if (!(points >= 2)) throw new Error(points + ' points');
    await page.locator('#io-chart canvas').first().waitFor({ timeout: 5000 });   // disk and network rates
    if (Number(await page.locator('#io-chart').getAttribute('data-points')) !== points) throw new Error('the rate chart has other samples');
  });
  await page.screenshot({ path: join(shots, 'performance.png') });
  await check('the VM page shows the guest agent: heartbeat ok, the running OS', async () => {
    for (let i = 0; i < 30; i++) {
      await page.locator('button[data-tab=summary]').click();
      await page.locator('#guest-agent').waitFor();
      if ((await page.locator('#guest-agent').textContent()).includes('heartbeat ok')) break;
      await page.waitForTimeout(1000);
    }
    await page.locator('#guest-agent', { hasText: 'heartbeat ok' }).waitFor({ timeout: 1000 });
    await page.locator('#guest-os', { hasText: 'kernel' }).waitFor({ timeout: 1000 });
  });
  await check('suspend from the page: the state turns "suspended" live; resume brings it back "on"', async () => {
    await page.locator('button[data-action=suspend]').click();
    await row().locator('.state', { hasText: /^suspended$/ }).waitFor({ timeout: 60000 });
    await page.locator('#detail-state', { hasText: /^suspended$/ }).waitFor({ timeout: 15000 });
    await page.screenshot({ path: join(shots, 'suspended.png') });
    await page.locator('button[data-action=resume]').click();
    await row().locator('.state', { hasText: /^on$/ }).waitFor({ timeout: 60000 });
  });
  await check('the list shows the guest OS and uptime of the running VM', async () => {
    await row().locator('td.uptime', { hasText: /\d/ }).waitFor({ timeout: 30000 });
    await row().locator('td.heartbeat').waitFor();
  });
  await check('a settings form being typed in survives the redraws that events cause', async () => {
    await page.locator('button[data-tab=summary]').click();
    await page.locator('#settings input[name=memsize]').fill('320');
    // An event about this VM (a guestinfo value set through the API) redraws its page.
    const before = await page.locator('#events div', { hasText: 'vm.guestinfo' }).count();
    const vmId = await page.locator('#settings').getAttribute('data-vm');
    await page.evaluate(async (id) => {
      const r = await fetch('/api/v1/vms/' + id + '/guestinfo', { method: 'PUT', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ key: 'guestinfo.ui-redraw', value: 'yes' }) });
      if (!r.ok) throw new Error('guestinfo PUT: ' + r.status);
    }, vmId);
    for (let i = 0; i < 50 && (await page.locator('#events div', { hasText: 'vm.guestinfo' }).count()) === before; i++)
      await page.waitForTimeout(200);
    await page.waitForTimeout(1500);   // the redraw follows the event within 300 ms
    const v = await page.locator('#settings input[name=memsize]').inputValue();
    if (v !== '320') throw new Error('the typed value became ' + v);
  });
  await check('the settings editor changes a running VM: the change shows as pending', async () => {
    await page.locator('#save-settings').click();
    await page.locator('#pending', { hasText: 'memsize' }).waitFor({ timeout: 15000 });
    // Saved: the form is drawn from the new settings again.
    const v = await page.locator('#settings input[name=memsize]').inputValue();
    if (v !== '320') throw new Error('after the save the form shows ' + v);
  });
  await check('the VM\'s events and log tabs show its history', async () => {
    await page.locator('button[data-tab=events]').click();
    await page.locator('#vm-events div', { hasText: 'vm.power' }).first().waitFor();
    await page.locator('button[data-tab=log]').click();
    await page.locator('#vm-log', { hasText: /qemu/i }).waitFor();
  });
  await check('shut down (soft) from the page; the guest powers off, the state turns "off" live', async () => {
    await page.locator('button[data-tab=summary]').click();
    await page.locator('button[data-action=shutdown]').click();
    await row().locator('.state', { hasText: /^off$/ }).waitFor({ timeout: 60000 });
  });
  await check('the event feed shows the power operations as they happened', async () => {
    await page.locator('#events div', { hasText: 'vm.power' }).first().waitFor({ timeout: 10000 });
  });
  await check('backups tab: back up now (a task), the backup is listed; a schedule is set and removed', async () => {
    await row().click();
    await page.locator('button[data-tab=backups]').click();
    await page.locator('#backup-list-note', { hasText: 'No backups' }).waitFor({ timeout: 15000 });
    await page.locator('#backup-form input[name=backup-folder]').fill('ui-backups');
    await page.locator('#backup-now').click();
    await page.locator('#backup-list tr[data-backup]').first().waitFor({ timeout: 60000 });
    await page.locator('#backup-list td', { hasText: 'full' }).first().waitFor({ timeout: 1000 });
    await page.locator('#tasks tr', { hasText: 'vm.backup' }).first().locator('td', { hasText: 'success' }).waitFor({ timeout: 15000 });
    await page.locator('#backup-form input[name=backup-every]').fill('12');
    await page.locator('#backup-form input[name=backup-keep]').fill('3');
    await page.locator('#backup-schedule-save').click();
    await page.locator('#backup-schedule', { hasText: 'keeping the newest 3' }).waitFor({ timeout: 15000 });
    await page.locator('#backup-schedule', { hasText: 'every 12 h into [local] ui-backups' }).waitFor({ timeout: 1000 });
    // Drawn again from the saved schedule: the boxes left unticked stay so.
    if (await page.locator('#backup-form input[name=backup-quiesce]').isChecked()) throw new Error('quiesce shows ticked');
    await page.screenshot({ path: join(shots, 'backups.png') });
    await page.locator('#backup-schedule-remove').click();
    await page.locator('#backup-schedule', { hasText: 'No scheduled backups' }).waitFor({ timeout: 15000 });
  });
  await check('datastore browser: an ISO uploads with progress and is listed', async () => {
    await page.locator('#nav-ds').click();
    await page.locator('#upload-file').setInputFiles(env.ISO);
    await page.locator('#upload-start').click();
    await page.locator('#upload-msg', { hasText: 'Uploaded' }).waitFor({ timeout: 30000 });
    const w = await page.locator('#upload-progress > span').getAttribute('style');
    if (!/100%/.test(w)) throw new Error('progress ' + w);
    await page.locator('#ds-entries tr[data-entry="' + env.ISO.split('/').pop() + '"]').waitFor({ timeout: 10000 });
  });
  await page.screenshot({ path: join(shots, 'datastores.png') });
  await check('the new-VM wizard creates a VM with a disk and the ISO attached', async () => {
    await page.locator('#nav-new').click();
    await page.locator('#wizard input[name=name]').fill('wizvm');
    await page.locator('#wizard select[name=guestOS]').selectOption('other-64');
    await page.locator('#wizard input[name=disk]').fill('64m');
    await page.locator('#wizard select[name=cdrom]').selectOption({ label: '[local] ' + env.ISO.split('/').pop() });
    await page.screenshot({ path: join(shots, 'wizard.png') });
    await page.locator('#create-vm').click();
    await page.locator('tr.vm.selected', { hasText: 'wizvm' }).waitFor({ timeout: 30000 });
    const vm = await page.evaluate(async () => {
      const l = await (await fetch('/api/v1/vms')).json();
      const id = l.vms.find((v) => v.name === 'wizvm').id;
      return (await (await fetch('/api/v1/vms/' + id)).json()).vm;
    });
    if (!vm.settings.disks.length || !vm.settings.cdroms.length || !vm.settings.cdroms[0].file.endsWith('.iso'))
      throw new Error(JSON.stringify(vm.settings));
  });
  await check('snapshots: take one, see it in the tree, delete it', async () => {
    await page.locator('button[data-tab=snapshots]').click();
    await page.locator('#snapshots input[name=snapshot-name]').fill('clean install');
    await page.locator('#take-snapshot').click();
    await page.locator('#snapshots tr[data-snapshot="clean install"]', { hasText: 'current' }).waitFor();
    await page.screenshot({ path: join(shots, 'snapshots.png') });
    await page.locator('#snapshots tr[data-snapshot="clean install"] button[data-op=delete]').click();
    await page.locator('#snapshots', { hasText: 'No snapshots.' }).waitFor();
    await page.locator('button[data-tab=summary]').click();
  });
  await check('the hardware editor adds a disk and a network card, and removes them', async () => {
    await page.locator('#hardware input[name=disk-size]').fill('16m');
    await page.locator('#add-disk').click();
    await page.locator('#hw-disks tr[data-disk="scsi0:1"]').waitFor();
    await page.locator('#add-nic').click();
    await page.locator('#hw-disks tr[data-nic="ethernet1"]').waitFor();
    await page.screenshot({ path: join(shots, 'hardware.png') });
    await page.locator('#hw-disks tr[data-nic="ethernet1"] button').click();
    await page.locator('#hw-disks tr[data-nic="ethernet1"]').waitFor({ state: 'detached' });
  });
  await check('the hardware editor adds a serial port (a client pipe) and removes it', async () => {
    await page.locator('#hardware select[name=serial-type]').selectOption('pipe');
    await page.locator('#hardware input[name=serial-file]').fill('com1.sock');
    await page.locator('#hardware select[name=serial-endpoint]').selectOption('client');
    await page.locator('#add-serial').click();
    await page.locator('#hw-serials tr[data-serial="serial0"]', { hasText: 'pipe' }).waitFor();
    await page.locator('#hw-serials tr[data-serial="serial0"]', { hasText: '(client)' }).waitFor({ timeout: 1000 });
    await page.locator('#hardware select[name=serial-type]').selectOption('file');
    await page.locator('#hardware input[name=serial-file]').fill('../escape.log');
    await page.locator('#add-serial').click();
    await page.locator('#flash', { hasText: 'file name in the VM\'s folder' }).waitFor();
    await page.locator('#hw-serials tr[data-serial="serial0"] button').click();
    await page.locator('#hw-serials tr[data-serial="serial0"]').waitFor({ state: 'detached' });
  });
  await check('an undoable disk asks at power-off, answered in place (discard)', async () => {
    await page.locator('#hw-disks tr[data-disk="scsi0:0"] select[name=mode]').selectOption('undoable');
    await page.locator('#flash', { hasText: 'scsi0:0 mode' }).waitFor();
    await page.locator('button[data-action=start]').click();
    await page.locator('#detail-state', { hasText: /^on$/ }).waitFor({ timeout: 60000 });
    await page.locator('button[data-action=poweroff]').click();
    await page.locator('#question', { hasText: /undoable|redo|changes/i }).waitFor({ timeout: 60000 });
    for (const c of ['commit', 'discard', 'keep']) await page.locator('#question button[data-choice=' + c + ']').waitFor({ timeout: 1000 });
    await page.screenshot({ path: join(shots, 'undoable-question.png') });
    // Stuck on the question, nothing runs: the list shows no uptime for it.
    const up = await page.locator('tr.vm', { hasText: 'wizvm' }).locator('td.uptime').textContent();
    if (/\d/.test(up)) throw new Error('a stuck VM shows an uptime: ' + up);
    await page.locator('#question button[data-choice=discard]').click();
    await page.locator('#detail-state', { hasText: /^off$/ }).waitFor({ timeout: 30000 });
    await page.locator('#question').waitFor({ state: 'detached', timeout: 15000 });
  });
  await check('a question blocking a VM is answered in place', async () => {
    await row2().click();
    await page.locator('button[data-action=start]').click();
    await page.locator('#question button[data-choice=create]').waitFor({ timeout: 60000 });
    await page.screenshot({ path: join(shots, 'question.png') });
    await page.locator('#question button[data-choice=create]').click();
    await row2().locator('.state', { hasText: /^on$/ }).waitFor({ timeout: 60000 });
    await page.locator('button[data-action=poweroff]').click();
    await row2().locator('.state', { hasText: /^off$/ }).waitFor({ timeout: 60000 });
  });
  await check('the host page charts the host\'s CPU and memory', async () => {
    await page.locator('#nav-host').click();
    await page.locator('#host-chart canvas').first().waitFor({ timeout: 15000 });
    const n = Number(await page.locator('#host-chart').getAttribute('data-points'));
    if (!(n >= 2)) throw new Error(n + ' points');
  });
  await page.screenshot({ path: join(shots, 'host.png') });
  await check('log out ends the session', async () => {
    await page.locator('#logout').click();
    await page.locator('input[name=user]').waitFor({ timeout: 10000 });
    const r = await page.evaluate(async () => (await fetch('/api/v1/vms')).status);
    if (r !== 401) throw new Error('after logout /vms answered ' + r);
  });

  // A readonly user: sees the VM, has no power controls, and the API refuses
  // a power operation sent anyway.
  await check('readonly logs in and sees the VM without power controls', async () => {
    await page.fill('input[name=user]', env.READONLY);
    await page.fill('input[name=password]', env.PASSWORD);
    await page.click('button[type=submit]');
    await row().click();
    await page.locator('#no-controls').waitFor({ timeout: 15000 });
    if (await page.locator('button[data-action=start]').count()) throw new Error('a power button is shown');
    if (await page.locator('button[data-tab=console]').count()) throw new Error('a console tab is shown');
  });
  await page.screenshot({ path: join(shots, 'readonly.png') });
  await check('readonly: the API refuses a power-on sent from the page anyway (403)', async () => {
    const id = await row().getAttribute('data-vm');
    const r = await page.evaluate(async (id) => (await fetch('/api/v1/vms/' + id + '/power', {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"op":"start"}' })).status, id);
    if (r !== 403) throw new Error('answered ' + r);
  });
  await check('a console WebSocket without a session is refused', async () => {
    const ctx2 = await browser.newContext({ ignoreHTTPSErrors: true });
    const p2 = await ctx2.newPage();
    await p2.goto(env.URL + '/index.html');
    const id = await row().getAttribute('data-vm');
    const how = await p2.evaluate((id) => new Promise((resolve) => {
      const ws = new WebSocket('wss://' + location.host + '/api/v1/vms/' + id + '/console/serial');
      ws.onopen = () => resolve('open');
      ws.onerror = () => resolve('refused');
    }), id);
    await ctx2.close();
    if (how !== 'refused') throw new Error(how);
  });
} finally {
  await browser.close();
}
console.log(failures ? failures + ' browser checks failed' : 'all browser checks passed');
process.exit(failures ? 1 : 0);
