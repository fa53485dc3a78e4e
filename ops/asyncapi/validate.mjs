// Validate an AsyncAPI document with the AsyncAPI project's own parser (@asyncapi/parser, pinned by
// package-lock.json). Usage: node validate.mjs <file or http(s) URL>
// Prints one JSON object: {"source", "errors", "warnings", "asyncapi", "diagnostics": [...]}; exits 1 when
// the parser reports an error (or produces no document), 2 on a usage error.
import { realpathSync } from 'node:fs';
import parserModule from '@asyncapi/parser';

const { Parser, fromFile, fromURL } = parserModule;
const SEVERITY = ['error', 'warning', 'info', 'hint'];

const source = process.argv[2];
if (!source || process.argv.length > 3) {
  console.error('usage: node validate.mjs <asyncapi.yaml path or URL>');
  process.exit(2);
}
const remote = /^https?:\/\//.test(source);
// A symlink (docs/asyncapi.yaml) is read where it points, so relative $refs resolve beside the real file.
const from = remote ? fromURL(new Parser(), source) : fromFile(new Parser(), realpathSync(source));
const { document, diagnostics } = await from.parse();
const out = diagnostics.map((d) => ({
  severity: SEVERITY[d.severity] ?? String(d.severity),
  code: d.code,
  message: d.message,
  path: d.path.join('/'),
}));
const errors = out.filter((d) => d.severity === 'error').length;
console.log(JSON.stringify({
  source,
  errors,
  warnings: out.filter((d) => d.severity === 'warning').length,
  asyncapi: document ? document.version() : null,
  diagnostics: out,
}, null, 1));
process.exit(errors === 0 && document ? 0 : 1);
