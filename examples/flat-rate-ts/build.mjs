// Builds this rule into a cashbackd plugin component:
//   1. TypeScript to JavaScript (tsc, with the types of src/cashback.d.ts);
//   2. JavaScript to a WebAssembly component of the `merchant-rules` world
//      (componentize-js, which embeds the StarlingMonkey JavaScript engine);
//   3. the manifest, the fixtures and the contract version embedded as custom sections,
//      as the Rust SDK's export macro does, so that one .wasm file carries everything
//      `cashbackd plugin inspect|test|upload` need.
// package.json pins @bytecodealliance/preview2-shim beside componentize-js: componentize-js
// imports it without declaring it, so `npm ci` from a lock file would leave it out.
// The component gets no WASI at all (no clocks, randomness, stdio or network): a rule is a
// pure function of the order, its context and its configuration.
import { componentize } from '@bytecodealliance/componentize-js';
import { execFileSync } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';

const pkg = JSON.parse(await readFile('package.json', 'utf8'));
const { wit, version } = pkg.cashback;

const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
execFileSync(process.execPath, [tsc, '-p', '.'], { stdio: 'inherit' });

const { component } = await componentize(await readFile('dist/rule.js', 'utf8'), {
  witPath: wit,
  worldName: 'merchant-rules',
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});

function leb128(n) {
  const out = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n) byte |= 0x80;
    out.push(byte);
  } while (n);
  return Buffer.from(out);
}
function customSection(name, data) {
  const body = Buffer.concat([leb128(Buffer.byteLength(name)), Buffer.from(name), data]);
  return Buffer.concat([Buffer.from([0]), leb128(body.length), body]);
}

const out = `dist/${pkg.name}.wasm`;
await mkdir('dist', { recursive: true });
await writeFile(
  out,
  Buffer.concat([
    Buffer.from(component),
    customSection('cashback:api-version', Buffer.from(version)),
    customSection('cashback:manifest', await readFile('cashback-plugin.toml')),
    customSection('cashback:fixtures', await readFile('fixtures.json')),
  ]),
);
console.log(`built ${out}`);
