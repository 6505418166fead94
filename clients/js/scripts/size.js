// Prints the client's size as shipped: the source, minified (esbuild), and
// minified and gzipped.
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { transformSync } from 'esbuild';

const src = readFileSync(new URL('../hubcluster.js', import.meta.url), 'utf8');
const min = transformSync(src, { minify: true, format: 'esm', target: 'es2020' }).code;
const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;
console.log(
  `hubcluster.js: ${kib(Buffer.byteLength(src))} source, ${kib(Buffer.byteLength(min))} minified, ` +
    `${kib(gzipSync(min, { level: 9 }).length)} minified and gzipped`,
);
