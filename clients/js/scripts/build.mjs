// Builds dist/: type declarations and per-module JS (tsc, also a strict type check), then
// the two bundles (esbuild): dist/starling.mjs (ESM) and dist/starling.iife.js (global
// `Starling`, self-contained, served by the server to pages as it is).
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
rmSync(join(root, 'dist'), { recursive: true, force: true });
execFileSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', root], { stdio: 'inherit' });

const common = {
  entryPoints: [join(root, 'src/index.ts')],
  bundle: true,
  minify: true,
  target: 'es2022',
  legalComments: 'none',
  logLevel: 'warning',
};
await build({ ...common, format: 'esm', outfile: join(root, 'dist/starling.mjs') });
await build({ ...common, format: 'iife', globalName: 'Starling', outfile: join(root, 'dist/starling.iife.js') });
