import { JupyterFrontEnd } from '@jupyterlab/application';
import {
  Dialog,
  Notification,
  showDialog,
  showErrorMessage
} from '@jupyterlab/apputils';
import { TranslationBundle } from '@jupyterlab/translation';
import { Widget } from '@lumino/widgets';

import {
  formatCPU,
  formatDuration,
  formatGPU,
  formatMemory,
  price,
  tierName,
  tierSummary
} from './format';
import {
  budgetWarning,
  costLines,
  durationProblem,
  durationText,
  grantedUntil,
  requestPending
} from './cost';
import {
  FOLLOW_INTERVAL,
  FOLLOW_MAX_ERRORS,
  ISaveOutcome,
  SAVE_FAILED_PAUSE,
  followAction,
  preparingFailedMessage,
  preparingMessage,
  saveBudget,
  saveFailedMessage,
  saveProblem,
  savingMessage
} from './follow';
import { IDSComputeModel, notUnderHub } from './model';
import { DSComputeError, requestAPI } from './request';
import {
  IAccessRequest,
  IBudget,
  ISwitchRecord,
  ISwitchReply,
  ITier,
  ITiersReply
} from './types';

/** `data-testid` of each dialog button, by the button's class name. */
const BUTTON_TEST_IDS: { [className: string]: string } = {
  'jp-DSCompute-cancelButton': 'ds-compute-cancel',
  'jp-DSCompute-closeButton': 'ds-compute-close',
  'jp-DSCompute-nextButton': 'ds-compute-next',
  'jp-DSCompute-switchButton': 'ds-compute-switch',
  'jp-DSCompute-saveAndSwitchButton': 'ds-compute-save-and-switch',
  'jp-DSCompute-sendRequestButton': 'ds-compute-send-request'
};

/**
 * The default dialog renderer, plus a stable `data-testid` on our buttons.
 */
class Renderer extends Dialog.Renderer {
  createButtonNode(button: Dialog.IButton): HTMLButtonElement {
    const node = super.createButtonNode(button);
    for (const className of button.className.split(/\s+/)) {
      const testId = BUTTON_TEST_IDS[className];
      if (testId) {
        node.dataset.testid = testId;
      }
    }
    return node;
  }
}

const renderer = new Renderer();

/**
 * The dialog body: one card per tier, loaded from `GET tiers`.
 *
 * The current tier is marked and cannot be chosen; tiers the policy refuses
 * are greyed and show the reason, and *Request access…* when they can be
 * requested (`onRequest`). Every card shows what the tier costs against the
 * budget (cost.ts). `getValue()` is the chosen tier or null.
 */
export class TierPicker extends Widget {
  constructor(
    trans: TranslationBundle,
    onRequest: ((tier: ITier) => void) | null = null
  ) {
    super();
    this._trans = trans;
    this._onRequest = onRequest;
    this.addClass('jp-DSCompute-picker');
    this.node.dataset.testid = 'ds-compute-picker';
    this._message = document.createElement('p');
    this._message.className = 'jp-DSCompute-pickerMessage';
    this._message.textContent = trans.__('Loading tiers…');
    this._list = document.createElement('div');
    this._list.className = 'jp-DSCompute-tierList';
    this._list.setAttribute('role', 'radiogroup');
    this._list.setAttribute('aria-label', trans.__('Compute tiers'));
    this.node.append(this._message, this._list);
    this._ready = this._load();
  }

  /** The chosen tier, or null. */
  getValue(): ITier | null {
    return this._selected;
  }

  /** The user's budget from `GET tiers` (null until loaded or unknown). */
  get budget(): IBudget | null {
    return this._budget;
  }

  /** Resolves once the tiers are shown (or the error is). */
  get ready(): Promise<void> {
    return this._ready;
  }

  protected onAfterAttach(): void {
    this._updateNextButton();
  }

  private async _load(): Promise<void> {
    const trans = this._trans;
    let reply: ITiersReply;
    try {
      reply = await requestAPI<ITiersReply>('tiers');
    } catch (error) {
      this._message.textContent = trans.__(
        'Compute tiers are not available: %1',
        (error as Error).message
      );
      this._message.classList.add('jp-DSCompute-error');
      this._message.dataset.testid = 'ds-compute-error';
      return;
    }
    this._budget = reply?.budget ?? null;
    const tiers = reply?.tiers ?? [];
    if (tiers.length === 0) {
      this._message.textContent = trans.__('No compute tiers are configured.');
      return;
    }
    this._message.textContent = trans.__(
      'Choose the machine to run this server on. Your files and environments stay with you.'
    );
    for (const tier of tiers) {
      this._list.appendChild(
        this._createCard(tier, tier.slug === reply.current)
      );
      const ask = this._requestButton(tier);
      if (ask) {
        this._list.appendChild(ask);
      }
    }
    this._updateNextButton();
  }

  private _createCard(tier: ITier, current: boolean): HTMLElement {
    const trans = this._trans;
    const card = document.createElement('div');
    card.className = 'jp-DSCompute-tierCard';
    card.dataset.slug = tier.slug;
    card.dataset.testid = `ds-compute-tier-${tier.slug}`;
    card.setAttribute('role', 'radio');
    card.setAttribute('aria-checked', 'false');
    const selectable = tier.allowed && !current;
    if (current) {
      card.classList.add('jp-mod-current');
    }
    if (!tier.allowed) {
      card.classList.add('jp-mod-refused');
      if (tier.policy) {
        card.dataset.policy = tier.policy;
      }
    }
    if (selectable) {
      card.tabIndex = 0;
    } else {
      card.setAttribute('aria-disabled', 'true');
    }

    const header = document.createElement('div');
    header.className = 'jp-DSCompute-tierHeader';
    const name = document.createElement('span');
    name.className = 'jp-DSCompute-tierName';
    name.textContent = tierName(tier);
    header.appendChild(name);
    if (current) {
      header.appendChild(
        badge(trans.__('current'), 'jp-DSCompute-badge-current')
      );
    } else if (!tier.allowed) {
      header.appendChild(
        badge(refusedBadge(tier.policy, trans), 'jp-DSCompute-badge-refused')
      );
    }
    const priceNode = document.createElement('span');
    priceNode.className = 'jp-DSCompute-tierPrice';
    priceNode.textContent = hourlyPrice(tier, trans);
    header.appendChild(priceNode);
    card.appendChild(header);

    if (tier.description) {
      const description = document.createElement('div');
      description.className = 'jp-DSCompute-tierDescription';
      description.textContent = tier.description;
      card.appendChild(description);
    }

    const specs = document.createElement('div');
    specs.className = 'jp-DSCompute-tierSpecs';
    for (const spec of [
      formatCPU(tier.cpu),
      formatMemory(tier.mem),
      formatGPU(tier.gpu)
    ]) {
      if (spec) {
        const item = document.createElement('span');
        item.className = 'jp-DSCompute-tierSpec';
        item.textContent = spec;
        specs.appendChild(item);
      }
    }
    card.appendChild(specs);

    const costs = document.createElement('div');
    costs.className = 'jp-DSCompute-tierCost';
    costs.dataset.testid = `ds-compute-tier-cost-${tier.slug}`;
    // the price is in the header already
    for (const line of costLines(tier, this._budget, trans, false)) {
      const item = document.createElement('div');
      item.textContent = line;
      costs.appendChild(item);
    }
    card.appendChild(costs);

    if (!tier.allowed && tier.reason) {
      const reason = document.createElement('div');
      reason.className = 'jp-DSCompute-tierReason';
      reason.dataset.testid = `ds-compute-tier-reason-${tier.slug}`;
      reason.textContent = tier.reason;
      card.appendChild(reason);
    }
    if (tier.grant?.expires) {
      const grant = document.createElement('div');
      grant.className = 'jp-DSCompute-tierAccess';
      grant.dataset.testid = `ds-compute-tier-grant-${tier.slug}`;
      grant.textContent = grantedUntil(tier.grant.expires, trans);
      card.appendChild(grant);
    }
    if (tier.request) {
      const pending = document.createElement('div');
      pending.className = 'jp-DSCompute-tierAccess';
      pending.dataset.testid = `ds-compute-tier-pending-${tier.slug}`;
      pending.textContent = requestPending(tier.request, trans);
      card.appendChild(pending);
    }

    if (selectable) {
      card.addEventListener('click', () => this._select(tier, card));
      card.addEventListener('keydown', event => {
        if (event.key === ' ' || event.key === 'Enter') {
          event.preventDefault();
          event.stopPropagation();
          this._select(tier, card);
        }
      });
    }
    return card;
  }

  /**
   * *Request access…* for a tier that can be requested: under its card, not
   * in it (the refused card is an aria-disabled radio, and so would be
   * everything in it).
   */
  private _requestButton(tier: ITier): HTMLElement | null {
    const onRequest = this._onRequest;
    if (tier.allowed || !tier.requestable || tier.request || !onRequest) {
      return null;
    }
    const row = document.createElement('div');
    row.className = 'jp-DSCompute-tierActions';
    const ask = document.createElement('button');
    ask.type = 'button';
    ask.className = 'jp-mod-styled jp-mod-reject jp-DSCompute-requestButton';
    ask.dataset.testid = `ds-compute-request-${tier.slug}`;
    ask.textContent = this._trans.__('Request access…');
    ask.setAttribute(
      'aria-label',
      this._trans.__('Request access to %1…', tierName(tier))
    );
    ask.addEventListener('click', event => {
      event.stopPropagation();
      onRequest(tier);
    });
    row.appendChild(ask);
    return row;
  }

  private _select(tier: ITier, card: HTMLElement): void {
    this._selected = tier;
    for (const other of Array.from(
      this._list.querySelectorAll('.jp-DSCompute-tierCard')
    )) {
      other.classList.remove('jp-mod-selected');
      other.setAttribute('aria-checked', 'false');
    }
    card.classList.add('jp-mod-selected');
    card.setAttribute('aria-checked', 'true');
    this._updateNextButton();
  }

  /** The *Switch…* button of the dialog only works with a choice made. */
  private _updateNextButton(): void {
    const dialog = this.node.closest('.jp-Dialog-content');
    const button = dialog?.querySelector<HTMLButtonElement>(
      '[data-testid="ds-compute-next"]'
    );
    if (button) {
      button.disabled = this._selected === null;
    }
  }

  private _trans: TranslationBundle;
  private _onRequest: ((tier: ITier) => void) | null;
  private _message: HTMLElement;
  private _list: HTMLElement;
  private _selected: ITier | null = null;
  private _budget: IBudget | null = null;
  private _ready: Promise<void>;
}

/** The badge of a refused tier, by the rule that refuses it. */
function refusedBadge(
  policy: string | null | undefined,
  trans: TranslationBundle
): string {
  switch (policy) {
    case 'cap':
      return trans.__('full');
    case 'budget':
      return trans.__('over budget');
    default:
      return trans.__('not available');
  }
}

/** `$0.05/h`, or `no price` for a tier without one (as formatting.py says). */
function hourlyPrice(tier: ITier, trans: TranslationBundle): string {
  return tier.hourly_cost === null || tier.hourly_cost === undefined
    ? trans.__('no price')
    : price(tier.hourly_cost);
}

function badge(text: string, className: string): HTMLElement {
  const node = document.createElement('span');
  node.className = `jp-DSCompute-badge ${className}`;
  node.textContent = text;
  return node;
}

/** The longest reason the service accepts (`policy.MAX_REASON_LENGTH`). */
const MAX_REASON_LENGTH = 1000;

/** What the user typed into the request form. */
interface IRequestValues {
  duration: string;
  reason: string;
}

/**
 * The *Request access…* form: a duration (bounded by the tier's
 * `max_grant`, the max by default) and a reason; a problem shows next to
 * the field it names (`errors`, keyed `duration`, `reason` or `form`).
 */
class RequestForm extends Widget {
  constructor(
    tier: ITier,
    values: IRequestValues,
    errors: { [field: string]: string },
    trans: TranslationBundle
  ) {
    super();
    this.addClass('jp-DSCompute-requestForm');
    this.node.dataset.testid = 'ds-compute-request-form';
    const intro = document.createElement('p');
    intro.textContent = trans.__(
      'An admin or approver decides. You are told here when they have; access ends by itself after the time you ask for.'
    );
    this.node.appendChild(intro);
    if (errors.form) {
      this.node.appendChild(fieldError('form', errors.form));
    }

    const maxGrant = tier.max_grant ?? null;
    this._duration = document.createElement('input');
    this._duration.type = 'text';
    this._duration.name = 'duration';
    this._duration.dataset.testid = 'ds-compute-request-duration';
    this._duration.value = values.duration;
    this._duration.placeholder = maxGrant
      ? durationText(maxGrant)
      : trans.__('7d');
    this.node.appendChild(
      field(
        trans.__('For how long'),
        this._duration,
        maxGrant
          ? trans.__(
              'At most %1. Write it like 7d, 12h or 30m.',
              formatDuration(maxGrant)
            )
          : trans.__('e.g. 7d, 12h, 30m.'),
        errors.duration ? fieldError('duration', errors.duration) : null
      )
    );

    this._reason = document.createElement('textarea');
    this._reason.name = 'reason';
    this._reason.rows = 3;
    this._reason.maxLength = MAX_REASON_LENGTH;
    this._reason.dataset.testid = 'ds-compute-request-reason';
    this._reason.value = values.reason;
    this._reason.placeholder = trans.__('e.g. train the activity model');
    this.node.appendChild(
      field(
        trans.__('Why'),
        this._reason,
        trans.__('What you need the tier for (the deciders read it).'),
        errors.reason ? fieldError('reason', errors.reason) : null
      )
    );
  }

  getValue(): IRequestValues {
    return { duration: this._duration.value, reason: this._reason.value };
  }

  private _duration: HTMLInputElement;
  private _reason: HTMLTextAreaElement;
}

/** A labelled form field with its hint and, when there is one, its error. */
function field(
  label: string,
  input: HTMLElement,
  hint: string,
  error: HTMLElement | null
): HTMLElement {
  const node = document.createElement('label');
  node.className = 'jp-DSCompute-field';
  const title = document.createElement('span');
  title.className = 'jp-DSCompute-fieldLabel';
  title.textContent = label;
  const help = document.createElement('span');
  help.className = 'jp-DSCompute-fieldHint';
  help.textContent = hint;
  node.append(title, input, help);
  if (error) {
    node.appendChild(error);
  }
  return node;
}

function fieldError(name: string, message: string): HTMLElement {
  const node = document.createElement('div');
  node.className = 'jp-DSCompute-fieldError';
  node.dataset.testid = `ds-compute-request-error-${name}`;
  node.textContent = message;
  return node;
}

/**
 * Ask for access to `tier` (`POST requests {profile, duration, reason}`);
 * the form comes back with the problem next to its field until the service
 * takes the request or the user cancels. Resolves whether it was taken.
 */
export async function requestAccess(
  tier: ITier,
  trans: TranslationBundle
): Promise<boolean> {
  let values: IRequestValues = {
    duration: tier.max_grant ? durationText(tier.max_grant) : '',
    reason: ''
  };
  let errors: { [field: string]: string } = {};
  for (;;) {
    const result = await showDialog<IRequestValues>({
      title: trans.__('Request access to %1', tierName(tier)),
      body: new RequestForm(tier, values, errors, trans),
      renderer,
      buttons: [
        Dialog.cancelButton({
          label: trans.__('Cancel'),
          className: 'jp-DSCompute-cancelButton'
        }),
        Dialog.okButton({
          label: trans.__('Send request'),
          className: 'jp-DSCompute-sendRequestButton'
        })
      ]
    });
    if (!result.button.accept || !result.value) {
      return false;
    }
    values = result.value;
    errors = {};
    const problem = durationProblem(values.duration, tier.max_grant, trans);
    if (problem) {
      errors.duration = problem;
    }
    if (!values.reason.trim()) {
      errors.reason = trans.__('Say what you need the tier for.');
    }
    if (Object.keys(errors).length) {
      continue;
    }
    try {
      const reply = await requestAPI<IAccessRequest>('requests', {
        method: 'POST',
        body: JSON.stringify({
          profile: tier.slug,
          duration: values.duration.trim(),
          reason: values.reason.trim()
        })
      });
      Notification.success(
        trans.__(
          'You asked for %1 for %2. You are told here when an admin or approver has decided.',
          tierName(tier),
          formatDuration(reply?.duration)
        ),
        { autoClose: 8000 }
      );
      return true;
    } catch (error) {
      const message = (error as Error).message || String(error);
      const named =
        error instanceof DSComputeError && error.status === 400
          ? error.body?.field
          : null;
      errors[named === 'duration' || named === 'reason' ? named : 'form'] =
        message;
    }
  }
}

/**
 * A plain JupyterLab (no JupyterHub): say so, offer nothing to switch to.
 * The command is disabled then, but it can still be run programmatically.
 */
async function showNotUnderHub(trans: TranslationBundle): Promise<void> {
  const body = document.createElement('p');
  body.className = 'jp-DSCompute-pickerMessage';
  body.dataset.testid = 'ds-compute-no-hub';
  body.textContent = notUnderHub(trans);
  await showDialog({
    title: trans.__('Switch machine'),
    body: new Widget({ node: body }),
    renderer,
    buttons: [
      Dialog.okButton({
        label: trans.__('Close'),
        className: 'jp-DSCompute-closeButton'
      })
    ]
  });
}

/** How the user confirmed a switch. */
type Confirmation = 'cancel' | 'switch' | 'save-and-switch';

/** The user's answer: how, and whether the kernels' variables come along. */
interface IConfirmed {
  how: Confirmation;
  keepState: boolean;
}

async function confirmSwitch(
  tier: ITier,
  hasUnsaved: boolean,
  trans: TranslationBundle,
  keepStateDefault = false,
  budget: IBudget | null = null
): Promise<IConfirmed> {
  const body = document.createElement('div');
  body.className = 'jp-DSCompute-confirm';
  body.dataset.testid = 'ds-compute-confirm';
  const lines = [
    trans.__(
      'Your server will stop and start again on %1 (%2).',
      tierName(tier),
      tierSummary(tier)
    ),
    trans.__(
      'Running kernels will be shut down and their variables lost; they restart on the new machine. Your files and environments move with you.'
    ),
    trans.__('This page reloads when the new machine is ready.')
  ];
  for (const line of lines) {
    const p = document.createElement('p');
    p.textContent = line;
    body.appendChild(p);
  }
  // what it costs, before the user confirms (cost.ts)
  const costs = document.createElement('div');
  costs.className = 'jp-DSCompute-tierCost';
  costs.dataset.testid = 'ds-compute-confirm-cost';
  for (const line of costLines(tier, budget, trans)) {
    const item = document.createElement('div');
    item.textContent = line;
    costs.appendChild(item);
  }
  body.appendChild(costs);
  const overBudget = budgetWarning(tier, budget, trans);
  if (overBudget) {
    const warning = document.createElement('p');
    warning.className = 'jp-DSCompute-warning';
    warning.dataset.testid = 'ds-compute-budget-warning';
    warning.textContent = overBudget;
    body.appendChild(warning);
  }
  // "Keep my variables": the server saves every kernel's variables to the
  // volume and the new machine restores them (serverext/state.py)
  const keep = document.createElement('label');
  keep.className = 'jp-DSCompute-keepState';
  const box = document.createElement('input');
  box.type = 'checkbox';
  box.checked = keepStateDefault;
  box.dataset.testid = 'ds-compute-keep-state';
  keep.appendChild(box);
  keep.appendChild(
    document.createTextNode(
      ' ' +
        trans.__(
          'Keep my variables (saved to your volume, restored in the same notebooks)'
        )
    )
  );
  body.appendChild(keep);
  if (hasUnsaved) {
    const warning = document.createElement('p');
    warning.className = 'jp-DSCompute-warning';
    warning.dataset.testid = 'ds-compute-unsaved-warning';
    warning.textContent = trans.__(
      'You have unsaved changes. Choose “Save all and switch” to keep them.'
    );
    body.appendChild(warning);
  }

  const result = await showDialog({
    title: trans.__('Switch to %1?', tierName(tier)),
    body: new Widget({ node: body }),
    renderer,
    buttons: [
      Dialog.cancelButton({
        label: trans.__('Cancel'),
        className: 'jp-DSCompute-cancelButton'
      }),
      Dialog.warnButton({
        label: trans.__('Switch'),
        className: 'jp-DSCompute-switchButton',
        actions: ['switch']
      }),
      Dialog.okButton({
        label: trans.__('Save all and switch'),
        className: 'jp-DSCompute-saveAndSwitchButton',
        actions: ['save-and-switch']
      })
    ]
  });
  const keepState = box.checked;
  if (!result.button.accept) {
    return { how: 'cancel', keepState };
  }
  return {
    how: result.button.actions.includes('save-and-switch')
      ? 'save-and-switch'
      : 'switch',
    keepState
  };
}

export interface ISwitchOptions {
  app: JupyterFrontEnd;
  model: IDSComputeModel;
  /** This extension's strings (`translator.load('jupyter-ds-compute')`). */
  trans: TranslationBundle;
  /** Whether open documents have unsaved changes (ILabStatus.isDirty). */
  isDirty: () => boolean;
}

/**
 * The whole *Switch machine…* flow: pick a tier, confirm, optionally save
 * all, ask the server extension to switch, and go to the progress page.
 */
export async function switchMachine(options: ISwitchOptions): Promise<void> {
  const { app, model, trans, isDirty } = options;
  if (model.underHub === null) {
    await model.refresh(); // opened before the first status answer
  }
  if (model.underHub === false) {
    await showNotUnderHub(trans);
    return;
  }
  let tier: ITier | null = null;
  let budget: IBudget | null = null;
  for (;;) {
    // *Request access…* on a card closes the picker (one dialog at a time:
    // two would fight over the focus), asks, and opens the picker again,
    // which then shows the request pending.
    let requested: ITier | null = null;
    const picker: TierPicker = new TierPicker(trans, chosen => {
      requested = chosen;
      dialog.resolve(0);
    });
    const dialog: Dialog<ITier | null> = new Dialog<ITier | null>({
      title: trans.__('Switch machine'),
      body: picker,
      renderer,
      buttons: [
        Dialog.cancelButton({
          label: trans.__('Cancel'),
          className: 'jp-DSCompute-cancelButton'
        }),
        Dialog.okButton({
          label: trans.__('Switch…'),
          className: 'jp-DSCompute-nextButton'
        })
      ]
    });
    const picked = await dialog.launch();
    budget = picker.budget;
    if (requested !== null) {
      await requestAccess(requested, trans);
      continue;
    }
    tier = picked.button.accept ? picked.value : null;
    break;
  }
  if (!tier) {
    return;
  }

  const { how, keepState } = await confirmSwitch(
    tier,
    isDirty(),
    trans,
    model.keepState,
    budget
  );
  if (how === 'cancel') {
    return;
  }
  if (
    how === 'save-and-switch' &&
    app.commands.hasCommand('docmanager:save-all')
  ) {
    try {
      await app.commands.execute('docmanager:save-all');
    } catch (error) {
      await showErrorMessage(
        trans.__('Could not save all documents'),
        trans.__(
          '%1. The machine was not switched.',
          (error as Error).message || String(error)
        )
      );
      return;
    }
  }

  // From here on a lost connection is expected: say so before the request,
  // because the hub may stop the server right after it answers.
  model.switching = true;
  let reply: ISwitchReply;
  try {
    reply = await requestAPI<ISwitchReply>('switch', {
      method: 'POST',
      body: JSON.stringify({
        profile: tier.slug,
        next: window.location.pathname + window.location.search,
        // once the new machine is ready the service waits (briefly) for Lab
        // to save the open documents before it stops this server
        hold_cutover: true,
        ...(keepState ? { keep_state: true } : {})
      })
    });
    if (!reply || typeof reply.progress_url !== 'string') {
      throw new Error(
        trans.__('The server did not say where to follow the switch.')
      );
    }
  } catch (error) {
    model.switching = false;
    const message = (error as Error).message || String(error);
    await showErrorMessage(
      trans.__('Could not switch to %1', tierName(tier)),
      message
    );
    void model.refresh();
    return;
  }
  // Make before break: while the new machine is prepared this server keeps
  // serving, so Lab stays until the cut-over begins.
  if (!(await followPreparation(reply, tier, trans, app, isDirty))) {
    model.switching = false;
    void model.refresh();
    return;
  }
  // connectionlost.ts keeps JupyterLab's "leave site?" prompt and its
  // connection-lost dialog away from here on (model.switching is true).
  window.location.href = reply.progress_url;
}

/**
 * Poll `GET switches/<id>` every FOLLOW_INTERVAL ms while the record's
 * `phase` is `preparing`, with a notification saying how long it usually
 * takes (updated in place). Once it is `ready` (the held cut-over waits),
 * save every open document and say go. Resolves true to go to the progress
 * page: Lab said go, the cut-over began, the server or the service went
 * away, or the record has no `phase` (an older service); false when the
 * switch failed before the cut-over (the notification then carries the
 * record's error).
 */
async function followPreparation(
  reply: ISwitchReply,
  tier: ITier,
  trans: TranslationBundle,
  app: JupyterFrontEnd,
  isDirty: () => boolean
): Promise<boolean> {
  if (typeof reply.id !== 'string' || !reply.id) {
    return true;
  }
  const label = tierName(tier);
  let notification: string | null = null;
  let shown = true; // false once the user closed it: no new one then
  let errors = 0;
  for (;;) {
    let record: ISwitchRecord;
    try {
      record = await requestAPI<ISwitchRecord>(
        `switches/${encodeURIComponent(reply.id)}`
      );
      errors = 0;
    } catch (error) {
      // a 5xx: the service did not answer this time, ask again a few times;
      // anything else (this server stopped, an older server extension): go
      if (
        error instanceof DSComputeError &&
        error.status >= 500 &&
        ++errors < FOLLOW_MAX_ERRORS
      ) {
        await sleep(FOLLOW_INTERVAL);
        continue;
      }
      return true;
    }
    const action = followAction(record);
    if (action.kind === 'go') {
      return true;
    }
    if (action.kind === 'save') {
      const show = (message: string, type: 'in-progress' | 'warning') => {
        if (
          notification === null ||
          !Notification.update({
            id: notification,
            message,
            type,
            autoClose: false
          })
        ) {
          notification = Notification.emit(message, type, {
            autoClose: false
          });
        }
      };
      show(savingMessage(label, trans), 'in-progress');
      const problem = saveProblem(
        await saveOpenDocuments(app, isDirty, saveBudget(record)),
        trans
      );
      if (problem) {
        show(saveFailedMessage(label, problem, trans), 'warning');
      }
      try {
        await requestAPI<null>(`switches/${encodeURIComponent(reply.id)}/go`, {
          method: 'POST'
        });
      } catch (error) {
        // 409: the hold already ended (the service cut over without us);
        // anything else: the service cuts over when its hold ends anyway
        console.warn('ds-compute: go for switch %s:', reply.id, error);
      }
      if (problem) {
        await sleep(SAVE_FAILED_PAUSE); // let the user read it first
      }
      return true;
    }
    if (action.kind === 'failed') {
      const message = preparingFailedMessage(label, action.error, trans);
      const options = { autoClose: false as const };
      if (
        notification === null ||
        !Notification.update({
          id: notification,
          message,
          type: 'error',
          ...options
        })
      ) {
        Notification.error(message, options);
      }
      return false;
    }
    const message = preparingMessage(label, record, trans);
    if (notification === null) {
      notification = Notification.emit(message, 'in-progress', {
        autoClose: false
      });
    } else if (shown) {
      shown = Notification.update({
        id: notification,
        message,
        type: 'in-progress',
        autoClose: false
      });
    }
    await sleep(FOLLOW_INTERVAL);
  }
}

/**
 * Save every open document (the same `docmanager:save-all` as *Save all and
 * switch*), for at most `budgetMs`: a document's save that fails shows its
 * own error dialog and resolves, so whether any is still dirty afterwards
 * is checked too.
 */
async function saveOpenDocuments(
  app: JupyterFrontEnd,
  isDirty: () => boolean,
  budgetMs: number
): Promise<ISaveOutcome> {
  if (!app.commands.hasCommand('docmanager:save-all')) {
    return { dirtyAfter: isDirty() };
  }
  let timer = 0;
  const timedOut = new Promise<'timeout'>(resolve => {
    timer = window.setTimeout(() => resolve('timeout'), budgetMs);
  });
  try {
    const saved = await Promise.race([
      app.commands.execute('docmanager:save-all'),
      timedOut
    ]);
    if (saved === 'timeout') {
      return { timedOut: true };
    }
    return { dirtyAfter: isDirty() };
  } catch (error) {
    return { error: (error as Error).message || String(error) };
  } finally {
    window.clearTimeout(timer);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise(resolve => window.setTimeout(resolve, ms));
}
