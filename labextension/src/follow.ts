/**
 * Following a make-before-break switch from Lab (no JupyterLab imports, so
 * that `npm run test:ts` can run it under node).
 *
 * While the record's `phase` is `preparing` the new machine is readied and
 * this server keeps serving: Lab stays, polls `GET switches/<id>` and says
 * how long it usually takes. Once the phase is anything else the cut-over
 * began, and Lab goes to the progress page.
 */
import { duration } from './format';
import { ISwitchRecord } from './types';

/** How often Lab asks for the record while the new machine is prepared (ms). */
export const FOLLOW_INTERVAL = 500;

/** Failed polls in a row (the service answering 5xx) before Lab gives up and goes. */
export const FOLLOW_MAX_ERRORS = 6;

/** What Lab does next, given the switch's record. */
export type FollowAction =
  { kind: 'wait' } | { kind: 'go' } | { kind: 'failed'; error: string };

/** The few strings a translation bundle offers (`TranslationBundle.__`). */
export interface ITrans {
  __(msgid: string, ...args: any[]): string;
}

/**
 * `wait` while the new machine is prepared; `failed` when the switch ended
 * before the cut-over began (this server was never stopped: stay in Lab);
 * `go` otherwise — the cut-over began, the switch succeeded, the cut-over
 * failed (the progress page says why), or an older service sent no `phase`.
 */
export function followAction(record: ISwitchRecord | null): FollowAction {
  if (!record || typeof record !== 'object') {
    return { kind: 'go' };
  }
  const state = record.state;
  if (state === 'failed' || state === 'rolled_back') {
    const steps = Array.isArray(record.steps) ? record.steps : [];
    const stop = steps.find(s => s && s.name === 'stop');
    const cutOverBegan =
      !!stop && stop.status !== 'pending' && stop.status !== 'skipped';
    return cutOverBegan
      ? { kind: 'go' }
      : {
          kind: 'failed',
          error: typeof record.error === 'string' ? record.error : ''
        };
  }
  return record.phase === 'preparing' ? { kind: 'wait' } : { kind: 'go' };
}

/**
 * Seconds the prepare phase probably still takes (the record's estimate less
 * the time the step has run, by the service's clock `now` when it sent one),
 * or null without an estimate.
 */
export function prepareLeft(
  record: ISwitchRecord,
  nowMs: number = Date.now()
): number | null {
  const typical = record.estimate?.prepare;
  if (typeof typical !== 'number' || !isFinite(typical)) {
    return null;
  }
  const step = (record.steps ?? []).find(s => s && s.name === 'prepare');
  const started = step?.started ? Date.parse(step.started) : NaN;
  const now = record.now ? Date.parse(record.now) : nowMs;
  if (isNaN(started) || isNaN(now)) {
    return typical;
  }
  return Math.max(0, typical - (now - started) / 1000);
}

/** The notification's text while the new machine is prepared. */
export function preparingMessage(
  tierLabel: string,
  record: ISwitchRecord,
  trans: ITrans,
  nowMs: number = Date.now()
): string {
  const left = prepareLeft(record, nowMs);
  if (left === null) {
    return trans.__(
      'Preparing the %1 machine… Keep working; you will be moved when it is ready.',
      tierLabel
    );
  }
  if (left < 0.5) {
    return trans.__(
      'Preparing the %1 machine… almost ready. Keep working; you will be moved when it is ready.',
      tierLabel
    );
  }
  return trans.__(
    'Preparing the %1 machine… about %2. Keep working; you will be moved when it is ready.',
    tierLabel,
    duration(left)
  );
}

/** The error notification's text when the switch failed while preparing. */
export function preparingFailedMessage(
  tierLabel: string,
  error: string,
  trans: ITrans
): string {
  return error
    ? trans.__('Could not switch to %1: %2', tierLabel, error)
    : trans.__(
        'Could not switch to %1. Your server was not touched.',
        tierLabel
      );
}
