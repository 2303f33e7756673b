// follow.ts: what Lab does while a switch prepares the new machine, and what
// its notification says. Run: npm run test:ts (node --test, no dependencies).
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
const out = mkdtempSync(join(tmpdir(), 'ds-compute-follow-'));
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

const follow = createRequire(import.meta.url)(join(out, 'follow.js'));

// What nullTranslator's bundle does: no translation, %1… replaced in order.
const trans = {
  __: (msgid, ...args) =>
    msgid.replace(/%(\d+)/g, (m, n) => String(args[Number(n) - 1] ?? m))
};

const T0 = '2024-05-02T10:00:00.000Z';
const at = seconds => new Date(Date.parse(T0) + seconds * 1000).toISOString();

function record(extra = {}) {
  return {
    id: '0123456789ab',
    state: 'running',
    phase: 'preparing',
    error: null,
    estimate: { prepare: 4.2, cutover: 3.0, samples: 5 },
    steps: [
      { name: 'validate', status: 'done', started: T0, finished: T0 },
      { name: 'prepare', status: 'running', started: T0, finished: null },
      { name: 'stop', status: 'pending', started: null, finished: null }
    ],
    now: at(1),
    ...extra
  };
}

test('Lab waits while the new machine is prepared', () => {
  assert.deepEqual(follow.followAction(record()), { kind: 'wait' });
  assert.deepEqual(follow.followAction(record({ state: 'pending' })), {
    kind: 'wait'
  });
});

test('Lab goes to the progress page once the cut-over began', () => {
  for (const phase of ['cutting-over', 'starting', 'rolling-back', 'done']) {
    assert.deepEqual(follow.followAction(record({ phase })), { kind: 'go' });
  }
  assert.deepEqual(
    follow.followAction(record({ state: 'succeeded', phase: 'done' })),
    { kind: 'go' }
  );
});

test('ready (a held cut-over waits): save, then go', () => {
  const ready = record({
    phase: 'ready',
    cutover: { held: true, waiting: true, timeout: 15 }
  });
  assert.deepEqual(follow.followAction(ready), { kind: 'save' });
  // once Lab said go (or the hold ended) the phase moves on: go
  assert.deepEqual(
    follow.followAction(
      record({
        phase: 'cutting-over',
        cutover: { held: true, waiting: false, timeout: 15 }
      })
    ),
    { kind: 'go' }
  );
  // failed while held: nothing was stopped, stay
  assert.equal(
    follow.followAction({
      ...ready,
      state: 'failed',
      error: 'boom',
      steps: [{ name: 'stop', status: 'skipped' }]
    }).kind,
    'failed'
  );
});

test('the save gets the hold less a margin for the go', () => {
  const held = timeout =>
    record({ phase: 'ready', cutover: { held: true, waiting: true, timeout } });
  assert.equal(follow.saveBudget(held(15)), 12_000);
  assert.equal(follow.saveBudget(held(30)), 27_000);
  // a short hold still leaves a second to save
  assert.equal(follow.saveBudget(held(2)), 1000);
  // no word (an older service, a bad value): the service's default
  for (const cutover of [undefined, null]) {
    assert.equal(follow.saveBudget(record({ cutover })), 12_000);
  }
  for (const timeout of [0, -1, NaN, Infinity, '15']) {
    assert.equal(follow.saveBudget(held(timeout)), 12_000);
  }
  assert.equal(follow.saveBudget(null), 12_000);
});

test('a save that failed is said, and the switch goes on', () => {
  assert.equal(follow.saveProblem({}, trans), null);
  assert.equal(
    follow.saveProblem(
      { error: null, timedOut: false, dirtyAfter: false },
      trans
    ),
    null
  );
  assert.equal(follow.saveProblem({ error: 'disk full' }, trans), 'disk full');
  assert.equal(
    follow.saveProblem({ timedOut: true, dirtyAfter: true }, trans),
    'saving took too long'
  );
  assert.equal(
    follow.saveProblem({ dirtyAfter: true }, trans),
    'some documents still have unsaved changes'
  );
  assert.equal(
    follow.savingMessage('GPU', trans),
    'Saving your work; moving to the GPU machine…'
  );
  assert.equal(
    follow.saveFailedMessage('GPU', 'disk full', trans),
    'Could not save all your work (disk full); moving to the GPU machine anyway — unsaved changes will be lost.'
  );
});

test('an older service (no phase) or no record: go at once', () => {
  const old = record();
  delete old.phase;
  delete old.estimate;
  assert.deepEqual(follow.followAction(old), { kind: 'go' });
  assert.deepEqual(follow.followAction(null), { kind: 'go' });
});

test('a switch that failed while preparing: stay, with its error', () => {
  const failed = record({
    state: 'failed',
    phase: 'done',
    error: 'Preparing the gpu machine failed: no capacity.',
    steps: [
      { name: 'validate', status: 'done' },
      { name: 'prepare', status: 'failed' },
      { name: 'stop', status: 'skipped' }
    ]
  });
  assert.deepEqual(follow.followAction(failed), {
    kind: 'failed',
    error: 'Preparing the gpu machine failed: no capacity.'
  });
  // no stop step at all (or no steps): nothing was stopped either
  assert.equal(
    follow.followAction({ ...failed, steps: undefined }).kind,
    'failed'
  );
  // failed after the cut-over began: the progress page says why
  const late = record({
    state: 'rolled_back',
    phase: 'done',
    error: 'step start failed',
    steps: [
      { name: 'prepare', status: 'done' },
      { name: 'stop', status: 'done' }
    ]
  });
  assert.deepEqual(follow.followAction(late), { kind: 'go' });
});

test('the notification says about how long is left', () => {
  assert.equal(
    follow.preparingMessage('GPU', record(), trans),
    'Preparing the GPU machine… about 3 s. Keep working; you will be moved when it is ready.'
  );
  assert.equal(
    follow.preparingMessage('GPU', record({ now: at(10) }), trans),
    'Preparing the GPU machine… almost ready. Keep working; you will be moved when it is ready.'
  );
  // not started yet: the whole estimate
  const pending = record({
    steps: [{ name: 'prepare', status: 'pending', started: null }]
  });
  assert.equal(follow.prepareLeft(pending), 4.2);
  // without the service's clock, the browser's
  const noNow = record({ now: undefined });
  assert.equal(follow.prepareLeft(noNow, Date.parse(T0) + 2000), 2.2);
});

test('no estimate (no switch of these tiers yet, or an older service)', () => {
  const expected =
    'Preparing the GPU machine… Keep working; you will be moved when it is ready.';
  for (const estimate of [
    undefined,
    null,
    { prepare: null, cutover: null, samples: 0 }
  ]) {
    assert.equal(
      follow.preparingMessage('GPU', record({ estimate }), trans),
      expected
    );
  }
});

test('the failure notification carries the error', () => {
  assert.equal(
    follow.preparingFailedMessage('GPU', 'no capacity', trans),
    'Could not switch to GPU: no capacity'
  );
  assert.match(follow.preparingFailedMessage('GPU', '', trans), /not touched/);
});
