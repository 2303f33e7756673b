import {
  ILabStatus,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { ITranslator } from '@jupyterlab/translation';

import { connectionLostPlugin } from './connectionlost';
// The menu's label callbacks and the status-bar item need these at once.
// eslint-disable-next-line jupyter/prefer-lazy-imports
import { tierName, tierSummary } from './format';
import { DSComputeModel, IDSComputeModel, notUnderHub } from './model';
// eslint-disable-next-line jupyter/prefer-lazy-imports
import { ComputeStatusItem } from './status';
import { loadTranslations } from './trans';

export { IDSComputeModel } from './model';
export { requestAPI, DSComputeError } from './request';
export * from './types';

/**
 * Command ids, in the extension's own namespace (as its plugin ids). The
 * *Compute* menu that shows them is declared in `labextension/schema/commands.json`
 * (`jupyter.lab.menus`).
 */
export namespace CommandIDs {
  /** Open the *Switch machine…* dialog. */
  export const switchMachine = 'jupyter-ds-compute:switch-machine';
  /** Informational, always disabled: "Current: Small — 1 CPU, 2 GiB, $0.05/h". */
  export const currentTier = 'jupyter-ds-compute:current-tier';
  /** Fetch the status again now. */
  export const refresh = 'jupyter-ds-compute:refresh';
}

/** The commands take no arguments. */
const NO_ARGS = { args: { type: 'object' as const, properties: {} } };

/**
 * The shared model: polls `GET status`; settings: `refreshInterval`.
 */
const modelPlugin: JupyterFrontEndPlugin<IDSComputeModel> = {
  id: 'jupyter-ds-compute:model',
  description: 'Provides the compute tier, cost and volume of this server.',
  autoStart: true,
  provides: IDSComputeModel,
  optional: [ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    settingRegistry: ISettingRegistry | null
  ): IDSComputeModel => {
    const model = new DSComputeModel();
    model.start();
    if (settingRegistry) {
      // Not awaited: the model works with its defaults until settings load.
      settingRegistry
        .load(modelPlugin.id)
        .then(settings => {
          const apply = () => {
            model.refreshInterval = settings.get('refreshInterval')
              .composite as number;
            model.keepState = settings.get('keepState').composite === true;
          };
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => {
          console.warn('jupyter-ds-compute: could not load settings', reason);
        });
    }
    return model;
  }
};

/**
 * Commands: *Switch machine…*, the current tier (informational), refresh;
 * the first and last also in the command palette. The first two make the
 * *Compute* menu, which the settings schema of this plugin declares
 * (`jupyter.lab.menus`); their labels follow the model
 * (`notifyCommandChanged` on every change).
 */
const commandsPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-ds-compute:commands',
  description:
    'Adds the ds-compute commands (switch machine, current tier) and the Compute menu.',
  autoStart: true,
  requires: [IDSComputeModel],
  optional: [ICommandPalette, ILabStatus, ITranslator],
  activate: (
    app: JupyterFrontEnd,
    model: IDSComputeModel,
    palette: ICommandPalette | null,
    labStatus: ILabStatus | null,
    translator: ITranslator | null
  ): void => {
    const { commands } = app;
    const trans = loadTranslations(translator);
    let dialogOpen = false;
    // after a switch with "Keep my variables": what came back (not awaited);
    // only under JupyterHub (a plain Lab has nothing to restore: no request)
    void app.restored
      .then(() => underHubKnown(model))
      .then(underHub =>
        underHub
          ? import('./restored').then(m => m.announceRestore(trans))
          : undefined
      );

    commands.addCommand(CommandIDs.switchMachine, {
      label: () =>
        model.underHub === false
          ? trans.__('Switch machine… (not running under JupyterHub)')
          : trans.__('Switch machine…'),
      caption: () =>
        model.underHub === false
          ? notUnderHub(trans)
          : trans.__('Run this server on another compute tier'),
      describedBy: NO_ARGS,
      isEnabled: () =>
        model.underHub !== false && !model.switching && !dialogOpen,
      execute: async () => {
        dialogOpen = true;
        commands.notifyCommandChanged(CommandIDs.switchMachine);
        try {
          // the dialog's code loads when it is first opened
          const { switchMachine } = await import('./dialog');
          await switchMachine({
            app,
            model,
            trans,
            isDirty: () => labStatus?.isDirty ?? false
          });
        } finally {
          dialogOpen = false;
          commands.notifyCommandChanged(CommandIDs.switchMachine);
        }
      }
    });

    commands.addCommand(CommandIDs.currentTier, {
      label: () => {
        if (model.switching) {
          return trans.__('Current: switching…');
        }
        if (model.underHub === false) {
          return trans.__('Current: not running under JupyterHub');
        }
        const tier = model.status?.tier;
        if (tier) {
          return trans.__(
            'Current: %1 — %2',
            tierName(tier),
            tierSummary(tier)
          );
        }
        return model.available === false
          ? trans.__('Current: not available')
          : trans.__('Current: …');
      },
      caption: trans.__('The compute tier this server runs on'),
      describedBy: NO_ARGS,
      isEnabled: () => false,
      execute: () => undefined
    });

    commands.addCommand(CommandIDs.refresh, {
      label: trans.__('Refresh compute status'),
      caption: trans.__(
        'Ask the server for the current tier, cost and volume now'
      ),
      describedBy: NO_ARGS,
      execute: () => model.refresh()
    });

    model.changed.connect(() => {
      commands.notifyCommandChanged(CommandIDs.currentTier);
      commands.notifyCommandChanged(CommandIDs.switchMachine);
    });

    if (palette) {
      const category = trans.__('Compute');
      palette.addItem({ command: CommandIDs.switchMachine, category });
      palette.addItem({ command: CommandIDs.refresh, category });
    }
  }
};

/**
 * The status-bar item (left): `⚙ Small · $0.05/h · vol alice`, plus
 * `⚠ budget 85% used` / `⚠ budget spent` when the budget needs attention.
 */
const statusPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-ds-compute:status',
  description:
    'Shows the compute tier, its price and the volume in the status bar.',
  autoStart: true,
  requires: [IDSComputeModel, IStatusBar],
  optional: [ITranslator],
  activate: (
    app: JupyterFrontEnd,
    model: IDSComputeModel,
    statusBar: IStatusBar,
    translator: ITranslator | null
  ): void => {
    const item = new ComputeStatusItem(
      model,
      () => {
        if (app.commands.isEnabled(CommandIDs.switchMachine)) {
          void app.commands.execute(CommandIDs.switchMachine);
        }
      },
      loadTranslations(translator)
    );
    statusBar.registerStatusItem(statusPlugin.id, {
      item,
      align: 'left',
      rank: 1000,
      // hidden in a plain JupyterLab: no tier, no volume, nothing to click
      isActive: () => model.underHub !== false,
      activeStateChanged: model.changed
    });
  }
};

/**
 * The hub service's notices about this server (e.g. "moved to Small after
 * being idle") as JupyterLab notifications, each shown once per browser.
 */
const noticesPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-ds-compute:notices',
  description:
    'Shows what the compute policies did to this server (idle downshift) as notifications.',
  autoStart: true,
  requires: [IDSComputeModel],
  optional: [ITranslator],
  activate: (
    app: JupyterFrontEnd,
    model: IDSComputeModel,
    translator: ITranslator | null
  ): void => {
    const trans = loadTranslations(translator);
    // Only once Lab is restored: a notification emitted before JupyterLab's
    // notification plugin runs lands in the notification center, not as a toast.
    void app.restored.then(async () => {
      const { NoticeWatcher } = await import('./notices');
      new NoticeWatcher(
        model,
        () => {
          if (app.commands.isEnabled(CommandIDs.switchMachine)) {
            void app.commands.execute(CommandIDs.switchMachine);
          }
        },
        trans
      );
    });
  }
};

const plugins: JupyterFrontEndPlugin<any>[] = [
  modelPlugin,
  commandsPlugin,
  statusPlugin,
  noticesPlugin,
  connectionLostPlugin
];

export default plugins;

/** Whether the server runs under JupyterHub, once its first status answer came. */
function underHubKnown(model: IDSComputeModel): Promise<boolean> {
  if (model.underHub !== null) {
    return Promise.resolve(model.underHub);
  }
  return new Promise(resolve => {
    const onChanged = (): void => {
      if (model.underHub !== null) {
        model.changed.disconnect(onChanged);
        resolve(model.underHub);
      }
    };
    model.changed.connect(onChanged);
  });
}
