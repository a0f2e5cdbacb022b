// build.mjs - bundle the UI into one folder velad serves (no CDN: every
// byte comes from here and node_modules, at build time).
//   node build.mjs OUTDIR
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] || join(here, '..', 'build', 'web');
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(here, 'src', 'app.js'), join(here, 'src', 'app.css')],
  bundle: true,
  format: 'esm',
  target: ['chrome110', 'firefox110'],
  minify: true,
  sourcemap: true,
  outdir: out,
  logLevel: 'warning',
});
copyFileSync(join(here, 'src', 'index.html'), join(out, 'index.html'));
console.log('web UI built into ' + out);
