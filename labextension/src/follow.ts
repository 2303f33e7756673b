/**
 * Following a make-before-break switch from Lab (no JupyterLab imports, so
 * that `npm run test:ts` can run it under node).
 *
 * While the record's `phase` is `preparing` the new machine is readied and
 * this server keeps serving: Lab stays, polls `GET switches/<id>` and says
 * how long it usually takes. Lab asks the service to hold the cut-over
 * (`hold_cutover`): once the record says `ready` the new machine is up and
 * the old server still serves, so Lab saves every open document, says `go`
 * and goes to the progress page. Once the phase is anything else the
 * cut-over began, and Lab goes there at once.
 */
import { duration } from './format';
import { ISwitchRecord } from './types';

/** How often Lab asks for the record while the new machine is prepared (ms). */
export const FOLLOW_INTERVAL = 500;

/** Failed polls in a row (the service answering 5xx) before Lab gives up and goes. */
export const FOLLOW_MAX_ERRORS = 6;

/** What Lab does next, given the switch's record. */
export type FollowAction =
  | { kind: 'wait' }
  | { kind: 'save' }
  | { kind: 'go' }
  | { kind: 'failed'; error: string };

/** What the service waits for a go when the record does not say (its default, s). */
export const HOLD_TIMEOUT = 15;

/** Seconds of the hold left for the go itself to reach the service. */
export const HOLD_MARGIN = 3;

/** How long a failed save stays readable in Lab before the progress page (ms). */
export const SAVE_FAILED_PAUSE = 2000;

/** The few strings a translation bundle offers (`TranslationBundle.__`). */
export interface ITrans {
  __(msgid: string, ...args: any[]): string;
}

/**
 * `wait` while the new machine is prepared; `save` once it is ready and the
 * held cut-over waits (save the open documents, then say go); `failed` when
 * the switch ended before the cut-over began (this server was never
 * stopped: stay in Lab); `go` otherwise — the cut-over began, the switch
 * succeeded, the cut-over failed (the progress page says why), or an older
 * service sent no `phase`.
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
  switch (record.phase) {
    case 'preparing':
      return { kind: 'wait' };
    case 'ready':
      return { kind: 'save' };
    default:
      return { kind: 'go' };
  }
}

/**
 * Milliseconds Lab may spend saving before it says go anyway: the hold the
 * service grants (`cutover.timeout`) less HOLD_MARGIN, at least 1 s. The
 * service cuts over when the hold ends whatever Lab does, so a save that
 * hangs (a conflict dialog, a slow disk) must not keep the go back longer.
 */
export function saveBudget(record: ISwitchRecord | null): number {
  const timeout = record?.cutover?.timeout;
  const seconds =
    typeof timeout === 'number' && isFinite(timeout) && timeout > 0
      ? timeout
      : HOLD_TIMEOUT;
  return Math.max(1, seconds - HOLD_MARGIN) * 1000;
}

/** How saving the open documents went. */
export interface ISaveOutcome {
  /** The save command's error (its message), if it threw. */
  error?: string | null;
  /** The save did not finish within `saveBudget`. */
  timedOut?: boolean;
  /** Documents still had unsaved changes afterwards (a save that failed quietly). */
  dirtyAfter?: boolean;
}

/** What went wrong saving, in words for the notification; null when all was saved. */
export function saveProblem(
  outcome: ISaveOutcome,
  trans: ITrans
): string | null {
  if (outcome.error) {
    return outcome.error;
  }
  if (outcome.timedOut) {
    return trans.__('saving took too long');
  }
  if (outcome.dirtyAfter) {
    return trans.__('some documents still have unsaved changes');
  }
  return null;
}

/** The notification's text while Lab saves, just before the cut-over. */
export function savingMessage(tierLabel: string, trans: ITrans): string {
  return trans.__('Saving your work; moving to the %1 machine…', tierLabel);
}

/** The notification's text when the save failed: the switch goes on anyway. */
export function saveFailedMessage(
  tierLabel: string,
  problem: string,
  trans: ITrans
): string {
  return trans.__(
    'Could not save all your work (%1); moving to the %2 machine anyway — unsaved changes will be lost.',
    problem,
    tierLabel
  );
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
