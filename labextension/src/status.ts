import { TranslationBundle } from '@jupyterlab/translation';
import { Widget } from '@lumino/widgets';

import {
  budgetDetails,
  budgetLabel,
  formatDollars,
  formatDuration,
  formatHourly,
  formatMemory,
  tierName,
  tierSummary
} from './format';
import { IDSComputeModel, notUnderHub } from './model';
import { IVolume } from './types';

/**
 * `Volume alice (local) at /data/alice: 1.0 GiB of 10.0 GiB used`, leaving
 * out what the server does not know (null); empty without id and path.
 */
export function volumeLine(
  volume: IVolume | null | undefined,
  trans: TranslationBundle
): string {
  if (!volume || !(volume.id || volume.path)) {
    return '';
  }
  // "Volume alice", "Volume alice (local)", "Volume at /data/alice", ...
  let what = volume.id ?? '';
  if (volume.driver) {
    what = what
      ? trans.__('%1 (%2)', what, volume.driver)
      : trans.__('(%1)', volume.driver);
  }
  let line = volume.path
    ? what
      ? trans.__('Volume %1 at %2', what, volume.path)
      : trans.__('Volume at %1', volume.path)
    : trans.__('Volume %1', what);
  if (volume.used_bytes && volume.size_bytes) {
    line = trans.__(
      '%1: %2 of %3 used',
      line,
      formatMemory(volume.used_bytes),
      formatMemory(volume.size_bytes)
    );
  }
  return line;
}

/**
 * Status-bar item: `⚙ Small · $0.05/h · vol alice`, followed by
 * `⚠ budget 85% used` / `⚠ budget spent` (`data-testid="ds-compute-budget"`)
 * when the user's budget needs attention.
 *
 * Clicking it runs `onClick` (the switch dialog). It carries
 * `jp-DSCompute-statusItem-warning` while the volume has a warning,
 * `jp-DSCompute-statusItem-budgetWarn` / `jp-DSCompute-statusItem-budgetSpent`
 * for the budget states `warn` / `spent`, and
 * `jp-DSCompute-statusItem-unavailable` while the server extension does not
 * answer.
 *
 * Outside JupyterHub (`model.underHub === false`) it is empty and the status
 * bar does not show it (`isActive` in index.ts): there is nothing to switch.
 */
export class ComputeStatusItem extends Widget {
  constructor(
    private _model: IDSComputeModel,
    onClick: () => void,
    private _trans: TranslationBundle
  ) {
    super({ node: document.createElement('div') });
    this.addClass('jp-DSCompute-statusItem');
    this.node.dataset.testid = 'ds-compute-status';
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    this._label = document.createElement('span');
    this._label.className = 'jp-DSCompute-statusLabel';
    this._budget = document.createElement('span');
    this._budget.className = 'jp-DSCompute-statusBudget';
    this._budget.dataset.testid = 'ds-compute-budget';
    this._budget.hidden = true;
    this.node.append(this._label, this._budget);
    this.node.addEventListener('click', onClick);
    this.node.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        onClick();
      }
    });
    _model.changed.connect(this._update, this);
    this._update();
  }

  dispose(): void {
    this._model.changed.disconnect(this._update, this);
    super.dispose();
  }

  private _update(): void {
    const trans = this._trans;
    const model = this._model;
    const status = model.status;
    const warning = status?.volume?.warning ?? '';
    const budget = status?.budget ?? null;
    const budgetText = model.switching ? '' : budgetLabel(budget, trans);
    this._budget.textContent = budgetText;
    this._budget.hidden = !budgetText;
    this._budget.dataset.state = budget?.state ?? '';
    this.toggleClass('jp-DSCompute-statusItem-warning', !!warning);
    this.toggleClass(
      'jp-DSCompute-statusItem-budgetWarn',
      !!budgetText && budget?.state === 'warn'
    );
    this.toggleClass(
      'jp-DSCompute-statusItem-budgetSpent',
      !!budgetText && budget?.state === 'spent'
    );
    this.toggleClass('jp-DSCompute-statusItem-switching', model.switching);
    this.toggleClass(
      'jp-DSCompute-statusItem-unavailable',
      model.available === false
    );
    this.toggleClass('jp-DSCompute-statusItem-noHub', model.underHub === false);

    if (model.underHub === false) {
      this._label.textContent = '';
      this._budget.textContent = '';
      this._budget.hidden = true;
      this.toggleClass('jp-DSCompute-statusItem-warning', false);
      this.node.title = notUnderHub(trans);
      return;
    }

    if (model.switching) {
      this._label.textContent = trans.__('⚙ switching machine…');
      this.node.title = trans.__('A switch of this server is in progress.');
      return;
    }
    if (model.available === null) {
      this._label.textContent = trans.__('⚙ ds-compute: …');
      this.node.title = trans.__('Loading the compute tier…');
      return;
    }
    if (!status) {
      this._label.textContent = trans.__('ds-compute: not available');
      this.node.title = model.error
        ? trans.__(
            'The ds-compute server extension does not answer: %1.',
            model.error
          )
        : trans.__('The ds-compute server extension does not answer.');
      return;
    }

    const parts: string[] = [];
    parts.push(
      status.tier
        ? trans.__('⚙ %1', tierName(status.tier))
        : trans.__('⚙ no tier')
    );
    if (status.tier) {
      const hourly = formatHourly(status.tier.hourly_cost);
      if (hourly) {
        parts.push(hourly);
      }
    }
    if (status.volume?.id) {
      parts.push(trans.__('vol %1', status.volume.id));
    }
    this._label.textContent = parts.join(' · ') + (warning ? ' ⚠' : '');

    const lines: string[] = [];
    if (status.tier) {
      lines.push(
        trans.__(
          'Tier: %1 — %2',
          tierName(status.tier),
          tierSummary(status.tier)
        )
      );
      if (status.tier.description) {
        lines.push(status.tier.description);
      }
    }
    if (
      status.seconds_on_tier !== null &&
      status.seconds_on_tier !== undefined
    ) {
      const onTier = formatDuration(status.seconds_on_tier);
      lines.push(
        status.cost_so_far !== null && status.cost_so_far !== undefined
          ? trans.__(
              'On this tier for %1, %2 so far',
              onTier,
              formatDollars(status.cost_so_far)
            )
          : trans.__('On this tier for %1', onTier)
      );
    }
    const volumeText = volumeLine(status.volume, trans);
    if (volumeText) {
      lines.push(volumeText);
    }
    if (warning) {
      lines.push(trans.__('⚠ %1', warning));
    }
    lines.push(...budgetDetails(budget, trans));
    lines.push(trans.__('Click to switch machine.'));
    this.node.title = lines.join('\n');
  }

  private _label: HTMLElement;
  private _budget: HTMLElement;
}
