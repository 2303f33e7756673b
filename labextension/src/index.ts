import {
  ILabStatus,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { IMainMenu } from '@jupyterlab/mainmenu';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { RankedMenu } from '@jupyterlab/ui-components';

import { connectionLostPlugin } from './connectionlost';
import { switchMachine } from './dialog';
import { tierName, tierSummary } from './format';
import { DSComputeModel, IDSComputeModel, NOT_UNDER_HUB } from './model';
import { NoticeWatcher } from './notices';
import { ComputeStatusItem } from './status';

export { IDSComputeModel } from './model';
export { requestAPI, DSComputeError } from './request';
export * from './types';

/** Command ids. */
export namespace CommandIDs {
  /** Open the *Switch machine…* dialog. */
  export const switchMachine = 'ds-compute:switch';
  /** Informational, always disabled: "Current: Small — 1 CPU, 2 GiB, $0.05/h". */
  export const currentTier = 'ds-compute:current-tier';
  /** Fetch the status again now. */
  export const refresh = 'ds-compute:refresh';
}

const CATEGORY = 'Compute';

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
 * the first and last also in the command palette.
 */
const commandsPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-ds-compute:commands',
  description: 'Adds the ds-compute commands (switch machine, current tier).',
  autoStart: true,
  requires: [IDSComputeModel],
  optional: [ICommandPalette, ILabStatus],
  activate: (
    app: JupyterFrontEnd,
    model: IDSComputeModel,
    palette: ICommandPalette | null,
    labStatus: ILabStatus | null
  ): void => {
    const { commands } = app;
    let dialogOpen = false;

    commands.addCommand(CommandIDs.switchMachine, {
      label: () =>
        model.underHub === false
          ? 'Switch machine… (not running under JupyterHub)'
          : 'Switch machine…',
      caption: () =>
        model.underHub === false
          ? NOT_UNDER_HUB
          : 'Run this server on another compute tier',
      isEnabled: () =>
        model.underHub !== false && !model.switching && !dialogOpen,
      execute: async () => {
        dialogOpen = true;
        commands.notifyCommandChanged(CommandIDs.switchMachine);
        try {
          await switchMachine({
            app,
            model,
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
          return 'Current: switching…';
        }
        if (model.underHub === false) {
          return 'Current: not running under JupyterHub';
        }
        const tier = model.status?.tier;
        if (tier) {
          return `Current: ${tierName(tier)} — ${tierSummary(tier)}`;
        }
        return model.available === false
          ? 'Current: not available'
          : 'Current: …';
      },
      caption: 'The compute tier this server runs on',
      isEnabled: () => false,
      execute: () => undefined
    });

    commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh compute status',
      execute: () => model.refresh()
    });

    model.changed.connect(() => {
      commands.notifyCommandChanged(CommandIDs.currentTier);
      commands.notifyCommandChanged(CommandIDs.switchMachine);
    });

    if (palette) {
      palette.addItem({
        command: CommandIDs.switchMachine,
        category: CATEGORY
      });
      palette.addItem({ command: CommandIDs.refresh, category: CATEGORY });
    }
  }
};

/**
 * The *Compute* main-menu entry.
 */
const menuPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-ds-compute:menu',
  description: 'Adds the Compute menu to the main menu.',
  autoStart: true,
  requires: [IMainMenu],
  activate: (app: JupyterFrontEnd, mainMenu: IMainMenu): void => {
    const menu = new RankedMenu({ commands: app.commands, rank: 1000 });
    menu.id = 'jp-mainmenu-ds-compute';
    menu.title.label = 'Compute';
    menu.addClass('jp-DSCompute-menu');
    menu.addItem({ command: CommandIDs.switchMachine, rank: 0 });
    menu.addItem({ type: 'separator', rank: 10 });
    menu.addItem({ command: CommandIDs.currentTier, rank: 20 });
    mainMenu.addMenu(menu, true, { rank: 1000 });
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
  activate: (
    app: JupyterFrontEnd,
    model: IDSComputeModel,
    statusBar: IStatusBar
  ): void => {
    const item = new ComputeStatusItem(model, () => {
      if (app.commands.isEnabled(CommandIDs.switchMachine)) {
        void app.commands.execute(CommandIDs.switchMachine);
      }
    });
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
  activate: (app: JupyterFrontEnd, model: IDSComputeModel): void => {
    // Only once Lab is restored: a notification emitted before JupyterLab's
    // notification plugin runs lands in the notification center, not as a toast.
    void app.restored.then(() => {
      new NoticeWatcher(model, () => {
        if (app.commands.isEnabled(CommandIDs.switchMachine)) {
          void app.commands.execute(CommandIDs.switchMachine);
        }
      });
    });
  }
};

const plugins: JupyterFrontEndPlugin<any>[] = [
  modelPlugin,
  commandsPlugin,
  menuPlugin,
  statusPlugin,
  noticesPlugin,
  connectionLostPlugin
];

export default plugins;
