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

// What nullTranslator's bundle does: no translation, %1… replaced in order.
const trans = {
  __: (msgid, ...args) =>
    msgid.replace(/%(\d+)/g, (m, n) => String(args[Number(n) - 1] ?? m))
};

test('budgetLabel words the states through the translation bundle', () => {
  assert.equal(format.budgetLabel({ state: 'spent' }, trans), '⚠ budget spent');
  assert.equal(
    format.budgetLabel({ state: 'warn', fraction: 0.859 }, trans),
    '⚠ budget 85% used'
  );
  assert.equal(format.budgetLabel({ state: 'ok' }, trans), '');
  assert.equal(format.budgetLabel(null, trans), '');
});

test('budgetDetails names the group, the money and the period', () => {
  const lines = format.budgetDetails(
    {
      state: 'warn',
      spent: 85,
      budget: 100,
      fraction: 0.85,
      kind: 'group',
      name: 'physics',
      period: 'month',
      user_spent: 12.5,
      warn_fraction: 0.8
    },
    trans
  );
  assert.deepEqual(lines, [
    'Budget of group physics: $85.00 of $100.00 spent this month (85%)',
    'You spent $12.50 of it.',
    '⚠ Over 80% of the budget is used; when it is spent, only your default tier is available.'
  ]);
  assert.equal(
    format.budgetDetails(
      { state: 'ok', spent: 3, budget: 100, fraction: 0.03 },
      trans
    )[0],
    'Budget: $3.00 of $100.00 spent this period (3%)'
  );
  assert.deepEqual(
    format.budgetDetails({ state: 'unlimited', spent: 3, budget: null }, trans),
    []
  );
});
