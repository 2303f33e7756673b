// format.ts against the cases jupyter_ds_compute/formatting.py is tested with
// (tests/format_cases.json). Run: npm run test:ts (node --test, no dependencies).
// The test compiles format.ts with the project's tsc into a temporary directory.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const out = mkdtempSync(join(tmpdir(), 'ds-compute-format-'));
after(() => rmSync(out, { recursive: true, force: true }));

const tsc = spawnSync(
  process.execPath,
  [
    join(root, 'node_modules', 'typescript', 'bin', 'tsc'),
    '-p',
    join(here, 'tsconfig.json'),
    '--outDir',
    out
  ],
  { encoding: 'utf8' }
);
assert.equal(tsc.status, 0, `tsc failed:\n${tsc.stdout}${tsc.stderr}`);

const format = createRequire(import.meta.url)(join(out, 'format.js'));
const cases = JSON.parse(
  readFileSync(join(root, 'tests', 'format_cases.json'), 'utf8')
);
const functions = Object.keys(cases).filter(name => !name.startsWith('_'));

for (const name of functions) {
  describe(name, () => {
    for (const [value, expected] of cases[name]) {
      test(`${name}(${JSON.stringify(value)}) is ${JSON.stringify(expected)}`, () => {
        assert.equal(format[name](value), expected);
      });
    }
  });
}

test('the old names give the same text', () => {
  assert.equal(format.formatMemory(2 * 1024 ** 3), format.size(2 * 1024 ** 3));
  assert.equal(format.formatHourly(0.004), '$0.004/h');
  assert.equal(format.formatHourly(null), '');
  assert.equal(format.formatDuration(3900), '1 h 05 min');
});
