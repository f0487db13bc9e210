// Runs a wasm32-wasip1 command module under Node's V8 with its arguments (no file system).
// `make bench` uses it to time the filter's request path in the engine Envoy embeds:
//   node --no-warnings bench/wasi-run.mjs <module.wasm> [args...]
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';

const [module, ...args] = process.argv.slice(2);
if (!module) {
  console.error('usage: node --no-warnings bench/wasi-run.mjs <module.wasm> [args...]');
  process.exit(2);
}
const wasi = new WASI({ version: 'preview1', args: [module, ...args], env: {}, returnOnExit: true });
const compiled = await WebAssembly.compile(await readFile(module));
const instance = await WebAssembly.instantiate(compiled, wasi.getImportObject());
process.exitCode = wasi.start(instance);
