import { Notification } from '@jupyterlab/apputils';
import { TranslationBundle } from '@jupyterlab/translation';

import { IDSComputeModel } from './model';
import { loadTranslations } from './trans';
import { INotice, IStatus } from './types';

/** At most this many notices are shown at once (the newest ones). */
const MAX_SHOWN = 3;

/**
 * Notices that offer *Switch machine…*: after a move down (back up, or to
 * another tier), before a grant ends (move off in time), after an approval
 * (move onto the tier now allowed).
 */
const SWITCH_KINDS = new Set([
  'idle-downshift',
  'grant-downshift',
  'grant-expiring',
  'request-approved'
]);

/**
 * Shows the hub service's policy notices (an idle downshift, the answer to
 * an access request, a grant about to end or ended) as
 * JupyterLab notifications, each once per browser: the time of the newest
 * notice shown is kept in localStorage, per user and server.
 *
 * `switchMachine` is offered as the notification's action (move back).
 */
export class NoticeWatcher {
  constructor(
    private _model: IDSComputeModel,
    private _switchMachine: (() => void) | null = null,
    private _trans: TranslationBundle = loadTranslations(null)
  ) {
    _model.changed.connect(this._check, this);
    this._check();
  }

  dispose(): void {
    this._model.changed.disconnect(this._check, this);
  }

  private _check(): void {
    const status = this._model.status;
    if (!status || this._model.switching) {
      return;
    }
    const notices = (status.notices ?? []).filter(
      n => n && typeof n.message === 'string' && typeof n.time === 'string'
    );
    if (notices.length === 0) {
      return;
    }
    const key = storageKey(status);
    const last = Private.load(key);
    const unseen = notices
      .filter(n => last === null || compareTimes(n.time, last) > 0)
      .sort((a, b) => compareTimes(a.time, b.time));
    if (unseen.length === 0) {
      return;
    }
    // remember first: a second refresh while the toasts are up shows nothing new
    Private.save(key, unseen[unseen.length - 1].time);
    for (const notice of unseen.slice(-MAX_SHOWN)) {
      this._show(notice);
    }
  }

  private _show(notice: INotice): void {
    const actions: Notification.IAction[] = [];
    if (this._switchMachine && SWITCH_KINDS.has(notice.kind)) {
      const run = this._switchMachine;
      actions.push({
        label: this._trans.__('Switch machine…'),
        caption: this._trans.__('Move this server to another tier'),
        callback: () => run()
      });
    }
    // an approval is good news; everything else a policy did needs a look
    const type = notice.kind === 'request-approved' ? 'success' : 'warning';
    Notification.emit(notice.message, type, { autoClose: false, actions });
  }
}

/** The localStorage key of the last notice shown for this server. */
export function storageKey(status: IStatus): string {
  return `jupyter-ds-compute:last-notice:${status.user ?? ''}/${
    status.server_name ?? ''
  }`;
}

/** Order of two ISO times (string order when either does not parse). */
export function compareTimes(a: string, b: string): number {
  const ta = Date.parse(a);
  const tb = Date.parse(b);
  if (isNaN(ta) || isNaN(tb)) {
    return a < b ? -1 : a > b ? 1 : 0;
  }
  return ta - tb;
}

namespace Private {
  /** Without localStorage (privacy settings) notices show on every load. */
  const memory = new Map<string, string>();

  export function load(key: string): string | null {
    try {
      return window.localStorage.getItem(key) ?? memory.get(key) ?? null;
    } catch {
      return memory.get(key) ?? null;
    }
  }

  export function save(key: string, value: string): void {
    memory.set(key, value);
    try {
      window.localStorage.setItem(key, value);
    } catch {
      // storage full or disabled: this page still remembers
    }
  }
}
