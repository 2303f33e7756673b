import { TranslationBundle } from '@jupyterlab/translation';
import { Token } from '@lumino/coreutils';
import { ISignal, Signal } from '@lumino/signaling';

import { requestAPI } from './request';
import { IStatus } from './types';

/** What the UI says outside JupyterHub (a plain `jupyter lab`). */
export function notUnderHub(trans: TranslationBundle): string {
  return trans.__(
    'This JupyterLab is not running under JupyterHub: there are no machines to switch to.'
  );
}

/** Default seconds between two `GET status` calls. */
export const DEFAULT_REFRESH_INTERVAL = 60;

/**
 * The state shared by the ds-compute plugins: the last `GET status` answer,
 * whether the server extension answers at all, and whether a switch is under
 * way (then the page is about to leave, and connection losses are expected).
 */
export interface IDSComputeModel {
  /** The last status, or null before the first answer or when unavailable. */
  readonly status: IStatus | null;
  /** `null` while the first request is pending, then whether it answered. */
  readonly available: boolean | null;
  /** Why the last refresh failed (empty when it did not). */
  readonly error: string;
  /**
   * Whether this server runs under JupyterHub: `null` until the server has
   * answered, then its `under_hub`. When false (a plain `jupyter lab`) there
   * is nothing to switch to, the UI stays quiet and polling stops.
   */
  readonly underHub: boolean | null;
  /** True from the moment a switch is requested until the page leaves. */
  switching: boolean;
  /** Seconds between refreshes (at least 10). */
  refreshInterval: number;
  /** Whether the switch dialog's "Keep my variables" starts checked (setting `keepState`). */
  keepState: boolean;
  /** Emitted after every refresh and every change of `switching`. */
  readonly changed: ISignal<IDSComputeModel, void>;
  /** Fetch the status now; never rejects. */
  refresh(): Promise<void>;
}

export const IDSComputeModel = new Token<IDSComputeModel>(
  'jupyter-ds-compute:IDSComputeModel',
  'The current compute tier, cost and volume of this server, and the switch state.'
);

export class DSComputeModel implements IDSComputeModel {
  get status(): IStatus | null {
    return this._status;
  }

  get available(): boolean | null {
    return this._available;
  }

  get error(): string {
    return this._error;
  }

  get underHub(): boolean | null {
    return this._underHub;
  }

  get switching(): boolean {
    return this._switching;
  }
  set switching(value: boolean) {
    if (value !== this._switching) {
      this._switching = value;
      this._changed.emit();
    }
  }

  get refreshInterval(): number {
    return this._refreshInterval;
  }
  set refreshInterval(seconds: number) {
    const value = Math.max(10, Number(seconds) || DEFAULT_REFRESH_INTERVAL);
    if (value !== this._refreshInterval || this._timer === null) {
      this._refreshInterval = value;
      this._schedule();
    }
  }

  get changed(): ISignal<IDSComputeModel, void> {
    return this._changed;
  }

  /**
   * Start polling (the first request goes out at once; not awaited).
   */
  start(): void {
    this._schedule();
    void this.refresh();
    document.addEventListener('visibilitychange', this._onVisibility);
  }

  refresh(): Promise<void> {
    if (this._pending) {
      return this._pending;
    }
    this._pending = this._fetch().finally(() => {
      this._pending = null;
    });
    return this._pending;
  }

  dispose(): void {
    if (this._timer !== null) {
      window.clearInterval(this._timer);
      this._timer = null;
    }
    document.removeEventListener('visibilitychange', this._onVisibility);
    Signal.clearData(this);
  }

  private async _fetch(): Promise<void> {
    if (this._switching) {
      return; // the server is going away; keep the last answer on screen
    }
    try {
      this._status = await requestAPI<IStatus>('status');
      this._available = true;
      this._error = '';
      if (this._status && typeof this._status.under_hub === 'boolean') {
        this._underHub = this._status.under_hub;
      }
      if (this._underHub === false) {
        // A plain JupyterLab: no tier, no volume, no switch, and nothing that
        // a later answer could change. One call, then quiet.
        this._stopPolling();
      }
    } catch (error) {
      this._status = null;
      this._available = false;
      this._error = (error as Error).message || String(error);
    }
    this._changed.emit();
  }

  private _stopPolling(): void {
    if (this._timer !== null) {
      window.clearInterval(this._timer);
      this._timer = null;
    }
    document.removeEventListener('visibilitychange', this._onVisibility);
  }

  private _schedule(): void {
    if (this._timer !== null) {
      window.clearInterval(this._timer);
      this._timer = null;
    }
    if (this._underHub === false) {
      return; // nothing changes outside JupyterHub: no polling
    }
    this._timer = window.setInterval(() => {
      if (!document.hidden) {
        void this.refresh();
      }
    }, this._refreshInterval * 1000);
  }

  private _onVisibility = (): void => {
    if (!document.hidden && this._underHub !== false) {
      void this.refresh();
    }
  };

  private _status: IStatus | null = null;
  private _available: boolean | null = null;
  private _error = '';
  private _underHub: boolean | null = null;
  keepState = false;
  private _switching = false;
  private _refreshInterval = DEFAULT_REFRESH_INTERVAL;
  private _timer: number | null = null;
  private _pending: Promise<void> | null = null;
  private _changed = new Signal<IDSComputeModel, void>(this);
}
