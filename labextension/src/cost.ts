// Types only: the unit tests run this module alone (labextension/test/).
import type { TranslationBundle } from '@jupyterlab/translation';

import { duration, hours, money, price } from './format';
import { IBudget, ITier } from './types';

/*
 * The numbers the switch dialog shows before a switch or a request: what is
 * left of the budget, how long it lasts on a tier, whether a switch would
 * use it up within the hour; and the duration field of *Request access…*.
 * The magic words the same numbers (jupyter_ds_compute/magics.py); both
 * format through format.ts / formatting.py.
 */

/**
 * What is left of a limited budget (dollars, at least 0), or null when it is
 * unlimited or not known.
 */
export function budgetLeft(budget: IBudget | null | undefined): number | null {
  if (
    !budget ||
    budget.state === 'unlimited' ||
    typeof budget.budget !== 'number' ||
    !isFinite(budget.budget)
  ) {
    return null;
  }
  const spent =
    typeof budget.spent === 'number' && isFinite(budget.spent)
      ? budget.spent
      : 0;
  return Math.max(0, budget.budget - spent);
}

/** The price of a tier when it has a positive one, else null. */
function cost(tier: ITier): number | null {
  const x = tier.hourly_cost;
  return typeof x === 'number' && isFinite(x) && x > 0 ? x : null;
}

/**
 * Hours the rest of the budget buys on `tier`; null when the budget is
 * unlimited or unknown, or the tier costs nothing.
 */
export function hoursOnBudget(
  budget: IBudget | null | undefined,
  tier: ITier
): number | null {
  const left = budgetLeft(budget);
  const perHour = cost(tier);
  return left === null || perHour === null ? null : left / perHour;
}

/** Whether an hour on `tier` costs more than what is left of the budget. */
export function exceedsWithinHour(
  budget: IBudget | null | undefined,
  tier: ITier
): boolean {
  const left = budgetLeft(budget);
  const perHour = cost(tier);
  return left !== null && perHour !== null && left < perHour;
}

/** `this month`, `this period`. */
function periodText(
  budget: IBudget | null | undefined,
  trans: TranslationBundle
): string {
  return budget?.period
    ? trans.__('this %1', budget.period)
    : trans.__('this period');
}

/**
 * The cost lines of the confirm step (and, without the price its header
 * shows already, of a tier's card): the price per hour; what is left of
 * the budget and how many hours it buys on the tier; the idle-downshift time.
 */
export function costLines(
  tier: ITier,
  budget: IBudget | null | undefined,
  trans: TranslationBundle,
  withPrice = true
): string[] {
  const lines: string[] = [];
  if (withPrice) {
    lines.push(
      tier.hourly_cost === null || tier.hourly_cost === undefined
        ? trans.__('Price: %1', trans.__('no price'))
        : trans.__('Price: %1', price(tier.hourly_cost))
    );
  }
  const left = budgetLeft(budget);
  if (left !== null) {
    const buys = hoursOnBudget(budget, tier);
    lines.push(
      buys === null
        ? trans.__(
            'Budget: %1 left %2 (this tier costs nothing)',
            money(left),
            periodText(budget, trans)
          )
        : trans.__(
            'Budget: %1 left %2, %3 on this tier',
            money(left),
            periodText(budget, trans),
            hours(buys)
          )
    );
  } else if (budget?.state === 'unlimited') {
    lines.push(trans.__('Budget: no limit'));
  }
  const idle = tier.idle_downshift_after;
  lines.push(
    typeof idle === 'number' && idle > 0
      ? trans.__('Idle: moved to your default tier after %1', duration(idle))
      : trans.__('Idle: never moved down')
  );
  return lines;
}

/**
 * The warning of the confirm step when an hour on `tier` costs more than is
 * left of the budget; empty otherwise (and when the budget is unlimited).
 */
export function budgetWarning(
  tier: ITier,
  budget: IBudget | null | undefined,
  trans: TranslationBundle
): string {
  if (!exceedsWithinHour(budget, tier)) {
    return '';
  }
  const buys = hoursOnBudget(budget, tier) ?? 0;
  return trans.__(
    '⚠ This switch would use up your budget within the hour: %1 left %2 lasts about %3 on %4 (%5). Then only your default tier is available.',
    money(budgetLeft(budget)),
    periodText(budget, trans),
    duration(Math.floor(buys * 3600)),
    tier.display_name || tier.slug,
    price(tier.hourly_cost)
  );
}

const DURATION_RE = /^\s*([0-9]{1,9}(?:\.[0-9]{1,6})?)\s*([smhdw]?)\s*$/;
const DURATION_UNITS: { [unit: string]: number } = {
  s: 1,
  m: 60,
  h: 3600,
  d: 86400,
  w: 7 * 86400
};

/**
 * Seconds of `7d`, `12h`, `30m`, `45s`, `90` (as the service's
 * `policy.parse_duration` reads them), or null when not a duration > 0.
 */
export function parseDuration(text: string): number | null {
  const m = DURATION_RE.exec(text);
  if (!m) {
    return null;
  }
  const seconds = Number(m[1]) * DURATION_UNITS[m[2] || 's'];
  return isFinite(seconds) && seconds > 0 ? seconds : null;
}

/** `7d`, `12h`, `90m`, `45s`: the largest unit that says `seconds` exactly. */
export function durationText(seconds: number): string {
  const s = Math.max(1, Math.round(seconds));
  for (const unit of ['d', 'h', 'm']) {
    if (s % DURATION_UNITS[unit] === 0) {
      return `${s / DURATION_UNITS[unit]}${unit}`;
    }
  }
  return `${s}s`;
}

/**
 * What is wrong with the duration field of a request for a tier granted at
 * most `maxGrant` seconds; empty when nothing is.
 */
export function durationProblem(
  text: string,
  maxGrant: number | null | undefined,
  trans: TranslationBundle
): string {
  const seconds = parseDuration(text);
  if (seconds === null) {
    return trans.__('Give a duration like 7d, 12h or 30m.');
  }
  if (typeof maxGrant === 'number' && seconds > maxGrant) {
    return trans.__(
      'At most %1 (%2) for this tier.',
      duration(maxGrant),
      durationText(maxGrant)
    );
  }
  return '';
}

/** `Granted until <local date and time>` of an ISO time (as given when it does not parse). */
export function grantedUntil(
  expires: string,
  trans: TranslationBundle
): string {
  const when = new Date(expires);
  return trans.__(
    'Granted until %1',
    isNaN(when.getTime())
      ? expires
      : when.toLocaleString(undefined, {
          dateStyle: 'medium',
          timeStyle: 'short'
        })
  );
}

/** `Request pending (7 d asked)`. */
export function requestPending(
  request: { duration?: number | null } | null | undefined,
  trans: TranslationBundle
): string {
  const asked = duration(request?.duration);
  return asked
    ? trans.__('Request pending (%1 asked)', asked)
    : trans.__('Request pending');
}
