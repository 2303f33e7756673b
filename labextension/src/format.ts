import { IBudget, ITierInfo } from './types';

const GiB = 1024 ** 3;

/** `2 GiB`, `0.5 GiB`, `15.6 GiB`. */
export function formatMemory(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !isFinite(bytes)) {
    return '';
  }
  if (bytes < GiB / 10 && bytes > 0) {
    return `${Math.round(bytes / 1024 ** 2)} MiB`;
  }
  const gib = bytes / GiB;
  const rounded = Math.round(gib * 10) / 10;
  return `${rounded} GiB`;
}

/** `1 CPU`, `0.5 CPU`, `4 CPUs`. */
export function formatCPU(cpu: number | null | undefined): string {
  if (cpu === null || cpu === undefined || !isFinite(cpu)) {
    return '';
  }
  const rounded = Math.round(cpu * 100) / 100;
  return `${rounded} CPU${rounded > 1 ? 's' : ''}`;
}

/** `1 GPU`, `2 GPUs`, `no GPU`. */
export function formatGPU(gpu: number | null | undefined): string {
  const n = gpu ?? 0;
  if (n <= 0) {
    return 'no GPU';
  }
  return `${n} GPU${n > 1 ? 's' : ''}`;
}

/** `$0.05`, `$12.00`, `$0.004`. */
export function formatDollars(value: number | null | undefined): string {
  if (value === null || value === undefined || !isFinite(value)) {
    return '';
  }
  if (value > 0 && value < 0.01) {
    return `$${value.toPrecision(1)}`;
  }
  return `$${value.toFixed(2)}`;
}

/** `$0.05/h` (empty when the tier has no price). */
export function formatHourly(value: number | null | undefined): string {
  const dollars = formatDollars(value);
  return dollars ? `${dollars}/h` : '';
}

/** `1 h 5 min`, `12 min`, `40 s`. */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) {
    return '';
  }
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) {
    return `${s} s`;
  }
  const minutes = Math.floor(s / 60);
  if (minutes < 60) {
    return `${minutes} min`;
  }
  const hours = Math.floor(minutes / 60);
  const rest = minutes % 60;
  return rest ? `${hours} h ${rest} min` : `${hours} h`;
}

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

/** `85%` (empty for a missing fraction). */
export function formatPercent(fraction: number | null | undefined): string {
  if (fraction === null || fraction === undefined || !isFinite(fraction)) {
    return '';
  }
  return `${Math.floor(Math.max(0, fraction) * 100)}%`;
}

/**
 * The status-bar text of a budget that needs attention: `⚠ budget 85% used`,
 * `⚠ budget spent`; empty while there is nothing to say (`ok`, `unlimited`).
 */
export function budgetLabel(budget: IBudget | null | undefined): string {
  if (!budget) {
    return '';
  }
  if (budget.state === 'spent') {
    return '⚠ budget spent';
  }
  if (budget.state === 'warn') {
    const percent = formatPercent(budget.fraction);
    return percent ? `⚠ budget ${percent} used` : '⚠ budget almost spent';
  }
  return '';
}

/** Tooltip lines about a budget (none when unlimited or unknown). */
export function budgetDetails(budget: IBudget | null | undefined): string[] {
  if (!budget || budget.state === 'unlimited' || budget.budget === null) {
    return [];
  }
  const period = budget.period ? `this ${budget.period}` : 'this period';
  const whose =
    budget.kind === 'group' && budget.name
      ? `Budget of group ${budget.name}`
      : 'Budget';
  const percent = formatPercent(budget.fraction);
  const lines = [
    `${whose}: ${formatDollars(budget.spent)} of ${formatDollars(
      budget.budget
    )} spent ${period}${percent ? ` (${percent})` : ''}`
  ];
  if (
    budget.kind === 'group' &&
    budget.user_spent !== undefined &&
    budget.user_spent !== null
  ) {
    lines.push(`You spent ${formatDollars(budget.user_spent)} of it.`);
  }
  if (budget.period_start) {
    const start = new Date(budget.period_start);
    if (!isNaN(start.getTime())) {
      lines.push(`Period started ${start.toLocaleDateString()}.`);
    }
  }
  if (budget.state === 'spent') {
    lines.push(
      '⚠ The budget is spent: tiers above your default one are not available until the next period. ' +
        'This server keeps running.'
    );
  } else if (budget.state === 'warn') {
    const threshold = formatPercent(budget.warn_fraction);
    lines.push(
      `⚠ ${threshold ? `Over ${threshold} of` : 'Most of'} the budget is used; ` +
        'when it is spent, only your default tier is available.'
    );
  }
  return lines;
}
