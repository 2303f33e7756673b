// Types only: the unit tests run this module alone (labextension/test/).
import type { TranslationBundle } from '@jupyterlab/translation';

import { IBudget, ITierInfo } from './types';

/*
 * How prices, money, sizes, durations and resources read: the mirror of
 * jupyter_ds_compute/formatting.py (see its docstring for the rules), tested
 * against the same cases (tests/format_cases.json, labextension/test/).
 * Missing values give '' (price: 'no price').
 */

/** What a tier without a price (`hourly_cost` null) shows instead of one. */
export const NO_PRICE = 'no price';

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

function num(value: unknown): number | null {
  return typeof value === 'number' && isFinite(value) ? value : null;
}

/** Python's round(x, digits) for the values we show (not at exact ties). */
function roundTo(x: number, digits: number): number {
  return Number(x.toFixed(digits));
}

function thousands(whole: string): string {
  return whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

/** `x` with `least` to `most` decimals (trailing zeros beyond `least` dropped). */
function decimals(x: number, least: number, most: number): string {
  const [whole, frac = ''] = x.toFixed(most).split('.');
  let f = frac;
  if (most > least) {
    f = f.replace(/0+$/, '').padEnd(least, '0');
  }
  return f ? `${thousands(whole)}.${f}` : thousands(whole);
}

function dollars(x: number, most: number): string {
  const sign = x < 0 && roundTo(x, most) !== 0 ? '-' : '';
  return `${sign}$${decimals(Math.abs(x), 2, most)}`;
}

/** `$12.00`, `$1,234.50`, `$0.004` (below a cent: up to 4 decimals). */
export function money(amount: unknown): string {
  const x = num(amount);
  if (x === null) {
    return '';
  }
  return dollars(x, x === 0 || Math.abs(x) >= 0.01 ? 2 : 4);
}

/** `$0.05/h`, `$1.20/h`, `$0.004/h`; `no price` for null. */
export function price(perHour: unknown): string {
  if (perHour === null || perHour === undefined) {
    return NO_PRICE;
  }
  const x = num(perHour);
  return x === null ? '' : `${dollars(x, 6)}/h`;
}

/** `512 B`, `1.5 KiB`, `512 MiB`, `2 GiB` (one decimal at most). */
export function size(bytes: unknown): string {
  let x = num(bytes);
  if (x === null) {
    return '';
  }
  const sign = x < 0 ? '-' : '';
  x = Math.abs(x);
  let unit = 0;
  while (unit < UNITS.length - 1 && roundTo(x / 1024 ** unit, 1) >= 1024) {
    unit += 1;
  }
  if (unit === 0) {
    return `${sign}${Math.round(x)} B`;
  }
  const value = roundTo(x / 1024 ** unit, 1);
  const text = Number.isInteger(value) ? value.toFixed(0) : value.toFixed(1);
  return `${sign}${text} ${UNITS[unit]}`;
}

/** `45 s`, `5 min`, `1 h 05 min`, `2 h`, `2 d 3 h` (negative: `0 s`). */
export function duration(seconds: unknown): string {
  const x = num(seconds);
  if (x === null) {
    return '';
  }
  const s = Math.floor(Math.max(0, x) + 0.5);
  if (s < 60) {
    return `${s} s`;
  }
  let minutes = Math.floor(s / 60);
  if (minutes < 60) {
    return `${minutes} min`;
  }
  let hours = Math.floor(minutes / 60);
  minutes %= 60;
  if (hours < 24) {
    return minutes
      ? `${hours} h ${String(minutes).padStart(2, '0')} min`
      : `${hours} h`;
  }
  const days = Math.floor(hours / 24);
  hours %= 24;
  return hours ? `${days} d ${hours} h` : `${days} d`;
}

/**
 * `0 h`, `< 0.1 h`, `2.5 h`, `24 h`, `1,234 h`: rounded down (what a budget
 * buys is never overstated); one decimal below 10 h.
 */
export function hours(n: unknown): string {
  const x = num(n);
  if (x === null) {
    return '';
  }
  if (x <= 0) {
    return '0 h';
  }
  if (x < 0.1) {
    return '< 0.1 h';
  }
  if (x < 10) {
    const text = (Math.floor(x * 10 + 1e-9) / 10).toFixed(1);
    return `${text.endsWith('.0') ? text.slice(0, -2) : text} h`;
  }
  return `${thousands(Math.floor(x + 1e-9).toFixed(0))} h`;
}

/** `1 CPU`, `0.5 CPU`, `4 CPUs` (up to two decimals). */
export function cores(n: unknown): string {
  const x = num(n);
  if (x === null) {
    return '';
  }
  const rounded = roundTo(x, 2);
  return `${decimals(rounded, 0, 2)} CPU${rounded > 1 ? 's' : ''}`;
}

/** `no GPU`, `1 GPU`, `2 GPUs`. */
export function gpus(n: unknown): string {
  const x = num(n) ?? 0;
  if (x <= 0) {
    return 'no GPU';
  }
  return `${x} GPU${x > 1 ? 's' : ''}`;
}

/** `85%` of a fraction (rounded down: 99.9% used is not "100%"). */
export function percent(fraction: unknown): string {
  const x = num(fraction);
  if (x === null) {
    return '';
  }
  return `${Math.floor(Math.max(0, x) * 100 + 1e-9)}%`;
}

// The names the rest of the extension uses.

/** {@link size}. */
export const formatMemory = (bytes: number | null | undefined): string =>
  size(bytes);

/** {@link cores}. */
export const formatCPU = (cpu: number | null | undefined): string => cores(cpu);

/** {@link gpus}. */
export const formatGPU = (gpu: number | null | undefined): string => gpus(gpu);

/** {@link money}. */
export const formatDollars = (value: number | null | undefined): string =>
  money(value);

/** {@link price}, but empty when the tier has no price (status bar, cards). */
export function formatHourly(value: number | null | undefined): string {
  return value === null || value === undefined ? '' : price(value);
}

/** {@link duration}. */
export const formatDuration = (seconds: number | null | undefined): string =>
  duration(seconds);

/** `1 CPU, 2 GiB, $0.05/h` (GPUs only when the tier has some). */
export function tierSummary(tier: ITierInfo): string {
  const parts = [formatCPU(tier.cpu), formatMemory(tier.mem)];
  if ((tier.gpu ?? 0) > 0) {
    parts.push(formatGPU(tier.gpu));
  }
  parts.push(formatHourly(tier.hourly_cost));
  return parts.filter(part => part !== '').join(', ');
}

/** The name to show for a tier. */
export function tierName(tier: ITierInfo): string {
  return tier.display_name || tier.slug;
}

/** {@link percent}. */
export const formatPercent = (fraction: number | null | undefined): string =>
  percent(fraction);

/**
 * The status-bar text of a budget that needs attention: `⚠ budget 85% used`,
 * `⚠ budget spent`; empty while there is nothing to say (`ok`, `unlimited`).
 */
export function budgetLabel(
  budget: IBudget | null | undefined,
  trans: TranslationBundle
): string {
  if (!budget) {
    return '';
  }
  if (budget.state === 'spent') {
    return trans.__('⚠ budget spent');
  }
  if (budget.state === 'warn') {
    const percent = formatPercent(budget.fraction);
    return percent
      ? trans.__('⚠ budget %1 used', percent)
      : trans.__('⚠ budget almost spent');
  }
  return '';
}

/** Tooltip lines about a budget (none when unlimited or unknown). */
export function budgetDetails(
  budget: IBudget | null | undefined,
  trans: TranslationBundle
): string[] {
  if (!budget || budget.state === 'unlimited' || budget.budget === null) {
    return [];
  }
  const spent = formatDollars(budget.spent);
  const total = formatDollars(budget.budget);
  const period = budget.period
    ? trans.__('this %1', budget.period)
    : trans.__('this period');
  const percent = formatPercent(budget.fraction);
  let line =
    budget.kind === 'group' && budget.name
      ? trans.__(
          'Budget of group %1: %2 of %3 spent %4',
          budget.name,
          spent,
          total,
          period
        )
      : trans.__('Budget: %1 of %2 spent %3', spent, total, period);
  if (percent) {
    line = trans.__('%1 (%2)', line, percent);
  }
  const lines = [line];
  if (
    budget.kind === 'group' &&
    budget.user_spent !== undefined &&
    budget.user_spent !== null
  ) {
    lines.push(
      trans.__('You spent %1 of it.', formatDollars(budget.user_spent))
    );
  }
  if (budget.period_start) {
    const start = new Date(budget.period_start);
    if (!isNaN(start.getTime())) {
      lines.push(trans.__('Period started %1.', start.toLocaleDateString()));
    }
  }
  if (budget.state === 'spent') {
    lines.push(
      trans.__(
        '⚠ The budget is spent: tiers above your default one are not available until the next period. This server keeps running.'
      )
    );
  } else if (budget.state === 'warn') {
    const threshold = formatPercent(budget.warn_fraction);
    lines.push(
      threshold
        ? trans.__(
            '⚠ Over %1 of the budget is used; when it is spent, only your default tier is available.',
            threshold
          )
        : trans.__(
            '⚠ Most of the budget is used; when it is spent, only your default tier is available.'
          )
    );
  }
  return lines;
}
