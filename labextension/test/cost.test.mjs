// cost.ts: the numbers the switch dialog shows before a switch or a request.
// Run: npm run test:ts (node --test, no dependencies).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const out = mkdtempSync(join(tmpdir(), 'ds-compute-cost-'));
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

const cost = createRequire(import.meta.url)(join(out, 'cost.js'));

// What nullTranslator's bundle does: no translation, %1… replaced in order.
const trans = {
  __: (msgid, ...args) =>
    msgid.replace(/%(\d+)/g, (m, n) => String(args[Number(n) - 1] ?? m))
};

const GPU = {
  slug: 'gpu',
  display_name: 'GPU',
  hourly_cost: 4,
  allowed: true,
  idle_downshift_after: 1800
};
const FREE = { slug: 'small', display_name: 'Small', hourly_cost: 0 };
const month = (spent, budget = 100) => ({
  state: 'ok',
  spent,
  budget,
  fraction: spent / budget,
  period: 'month'
});
const UNLIMITED = { state: 'unlimited', spent: 12, budget: null };

test('what is left of a budget: never negative; null when unlimited or unknown', () => {
  assert.equal(cost.budgetLeft(month(40)), 60);
  assert.equal(cost.budgetLeft(month(140)), 0);
  assert.equal(cost.budgetLeft(UNLIMITED), null);
  assert.equal(cost.budgetLeft(null), null);
  assert.equal(cost.budgetLeft(undefined), null);
});

test('hours the rest buys on a tier; none for a free tier or no budget', () => {
  assert.equal(cost.hoursOnBudget(month(40), GPU), 15);
  assert.equal(cost.hoursOnBudget(month(40), FREE), null);
  assert.equal(
    cost.hoursOnBudget(month(40), { slug: 'x', hourly_cost: null }),
    null
  );
  assert.equal(cost.hoursOnBudget(UNLIMITED, GPU), null);
});

test('a switch uses the budget up within the hour when an hour costs more than is left', () => {
  assert.equal(cost.exceedsWithinHour(month(97), GPU), true);
  assert.equal(cost.exceedsWithinHour(month(96), GPU), false); // exactly one hour left
  assert.equal(cost.exceedsWithinHour(month(100), GPU), true);
  assert.equal(cost.exceedsWithinHour(month(100), FREE), false);
  assert.equal(cost.exceedsWithinHour(UNLIMITED, GPU), false);
  assert.equal(cost.exceedsWithinHour(null, GPU), false);
});

test('the cost lines of a card: price, budget left and what it buys, idle time', () => {
  assert.deepEqual(cost.costLines(GPU, month(40), trans), [
    'Price: $4.00/h',
    'Budget: $60.00 left this month, 15 h on this tier',
    'Idle: moved to your default tier after 30 min'
  ]);
  assert.deepEqual(cost.costLines(FREE, month(99.5), trans), [
    'Price: $0.00/h',
    'Budget: $0.50 left this month (this tier costs nothing)',
    'Idle: never moved down'
  ]);
  assert.deepEqual(
    cost.costLines({ slug: 'x', hourly_cost: null }, UNLIMITED, trans),
    ['Price: no price', 'Budget: no limit', 'Idle: never moved down']
  );
  // a card shows its price in its header already
  assert.deepEqual(cost.costLines(GPU, month(40), trans, false), [
    'Budget: $60.00 left this month, 15 h on this tier',
    'Idle: moved to your default tier after 30 min'
  ]);
  // no budget known (the service did not answer): no budget line
  assert.equal(cost.costLines(GPU, null, trans).length, 2);
  assert.match(
    cost.costLines(GPU, { ...month(99), period: undefined }, trans)[1],
    /left this period, 0.2 h on this tier/
  );
});

test('the confirm step warns only when the hour would use the budget up', () => {
  assert.equal(
    cost.budgetWarning(GPU, month(98), trans),
    '⚠ This switch would use up your budget within the hour: $2.00 left this month lasts about 30 min on GPU ($4.00/h). Then only your default tier is available.'
  );
  assert.equal(cost.budgetWarning(GPU, month(40), trans), '');
  assert.equal(cost.budgetWarning(GPU, UNLIMITED, trans), '');
  assert.equal(cost.budgetWarning(FREE, month(100), trans), '');
});

test('durations read as the service reads them', () => {
  assert.equal(cost.parseDuration('7d'), 7 * 86400);
  assert.equal(cost.parseDuration(' 12h '), 12 * 3600);
  assert.equal(cost.parseDuration('1.5h'), 5400);
  assert.equal(cost.parseDuration('30m'), 1800);
  assert.equal(cost.parseDuration('90'), 90);
  assert.equal(cost.parseDuration('2w'), 14 * 86400);
  for (const bad of ['', '0', '0h', 'soon', '-1h', '7 days', '1e3']) {
    assert.equal(cost.parseDuration(bad), null, bad);
  }
});

test('the default duration is the longest grant, in its largest exact unit', () => {
  assert.equal(cost.durationText(7 * 86400), '7d');
  assert.equal(cost.durationText(3600), '1h');
  assert.equal(cost.durationText(5400), '90m');
  assert.equal(cost.durationText(45), '45s');
  for (const s of [7 * 86400, 3600, 5400, 45]) {
    assert.equal(cost.parseDuration(cost.durationText(s)), s);
  }
});

test('the duration field is bounded by the tier’s max_grant', () => {
  assert.equal(cost.durationProblem('1h', 3600, trans), '');
  assert.equal(
    cost.durationProblem('2h', 3600, trans),
    'At most 1 h (1h) for this tier.'
  );
  assert.equal(
    cost.durationProblem('soon', 3600, trans),
    'Give a duration like 7d, 12h or 30m.'
  );
  assert.equal(cost.durationProblem('8d', null, trans), '');
});

test('a grant shows its end in local time; a pending request what it asked', () => {
  const iso = '2030-05-02T10:00:00+00:00';
  assert.equal(
    cost.grantedUntil(iso, trans),
    `Granted until ${new Date(iso).toLocaleString(undefined, {
      dateStyle: 'medium',
      timeStyle: 'short'
    })}`
  );
  assert.equal(cost.grantedUntil('later', trans), 'Granted until later');
  assert.equal(
    cost.requestPending({ duration: 7 * 86400 }, trans),
    'Request pending (7 d asked)'
  );
  assert.equal(cost.requestPending(null, trans), 'Request pending');
});
