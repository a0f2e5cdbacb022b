// wsconsole.js - a WebSocket client for the console tests (Node's "ws", the
// library browsers' tests commonly use), independent of velad's own code.
//   node wsconsole.js URL [--token T] [--origin O] [--protocol P]
//        [--send TEXT] [--expect TEXT] [--timeout S] [--close]
// URL: wss://host:port/api/v1/vms/ID/console/serial, or
// ws+unix:/path/velad.sock:/api/v1/... for velad's local socket.
// Waits until the received bytes contain --expect (sending --send once the
// connection is open), then closes.  Exit 0: seen; 1: not seen in time or the
// connection ended first; 3: the handshake was refused (prints "HTTP <status>").
'use strict';
const WebSocket = require('ws');

const args = process.argv.slice(2);
const url = args.shift();
const opt = {};
for (let i = 0; i < args.length; i++) {
  const k = args[i].replace(/^--/, '');
  opt[k] = k === 'close' ? true : args[++i];
}
const headers = {};
if (opt.token) headers.Authorization = 'Bearer ' + opt.token;
if (opt.origin) headers.Origin = opt.origin;
const ws = new WebSocket(url, opt.protocol ? [opt.protocol] : [], { headers, rejectUnauthorized: false });
let got = Buffer.alloc(0);
let done = false;
const finish = (code, msg) => {
  if (done) return;
  done = true;
  if (msg) console.log(msg);
  try { ws.close(1000); } catch (e) { /* already closed */ }
  setTimeout(() => process.exit(code), 100);
};
setTimeout(() => finish(1, 'timeout; received: ' + JSON.stringify(got.toString('latin1').slice(-300))),
           1000 * Number(opt.timeout || 20));
ws.on('unexpected-response', (req, res) => finish(3, 'HTTP ' + res.statusCode));
ws.on('open', () => {
  if (opt.protocol && ws.protocol !== opt.protocol) finish(1, 'protocol not agreed: ' + ws.protocol);
  if (opt.send) ws.send(Buffer.from(opt.send.replace(/\\n/g, '\n')));
  if (!opt.expect) finish(0, 'open');
});
ws.on('message', (data) => {
  got = Buffer.concat([got, Buffer.from(data)]);
  if (opt.expect && got.toString('latin1').includes(opt.expect)) finish(0, 'seen: ' + opt.expect);
});
ws.on('close', (code) => finish(1, 'closed (' + code + ') before the expected text; received: ' +
                                   JSON.stringify(got.toString('latin1').slice(-300))));
ws.on('error', (e) => finish(1, 'error: ' + e.message));
