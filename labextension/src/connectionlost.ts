import {
  ConnectionLost,
  IConnectionLost,
  JupyterFrontEnd,
  JupyterFrontEndPlugin,
  JupyterLab
} from '@jupyterlab/application';
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { ITranslator } from '@jupyterlab/translation';

import { IDSComputeModel } from './model';
import { loadTranslations } from './trans';

/**
 * Keep JupyterLab quiet about the lost connection while a switch runs.
 *
 * What we found in JupyterLab 4.6.6 (checked in node_modules and in the
 * built `share/jupyter/lab/static`):
 *
 * - `IConnectionLost` (from `@jupyterlab/application`) is a function
 *   `(manager, err, translator?) => Promise<void>`. The
 *   `@jupyterlab/application-extension:main` plugin takes it as an *optional*
 *   service, falls back to `ConnectionLost`, and connects it to
 *   `serviceManager.connectionFailure`.
 * - Its provider in 4.6 is `@jupyterlab/hub-extension:connectionlost` (not an
 *   application-extension plugin). Without a hub prefix it returns the
 *   default `ConnectionLost` (the "Server Connection Error" dialog); under
 *   JupyterHub it shows "Server unavailable or unreachable … Restart?" whose
 *   *Restart* runs `hub:restart` — the worst thing to offer mid-switch.
 * - Lumino's `PluginRegistry.registerPlugin` lets a later provider of a token
 *   override an earlier one ("the new service will override the old
 *   service"), and JupyterLab's bootstrap (`index.out.js`) registers the
 *   federated (prebuilt) extensions after all core plugins in one
 *   `registerPlugins` call. So this plugin becomes *the* `IConnectionLost`
 *   without disabling anything; the core provider still activates (it is
 *   autoStart) but nobody uses its function. If another prebuilt extension
 *   also provides the token, the one registered last wins.
 *
 * Outside a switch this provider behaves like the core one: the hub dialog
 * under JupyterHub, `ConnectionLost` otherwise.
 *
 * The same goes for the browser's "Leave site? Unsaved changes" prompt that
 * `@jupyterlab/application-extension:main` raises from a `beforeunload`
 * listener while documents are dirty: once the user has confirmed a switch
 * (and chosen whether to save), it would only strand them on a page whose
 * server is going away. Chromium runs `beforeunload` listeners on `window`
 * in registration order (`capture: true` does not put one first — checked),
 * so ours must be added before JupyterLab's. It is: `main` takes
 * `IConnectionLost` as an optional service, so Lumino activates this plugin
 * before `main`.
 */
export const connectionLostPlugin: JupyterFrontEndPlugin<IConnectionLost> = {
  id: 'jupyter-ds-compute:connection-lost',
  description:
    'Provides IConnectionLost: silent while a machine switch is in progress, JupyterLab’s dialog otherwise.',
  autoStart: true,
  requires: [IDSComputeModel, JupyterFrontEnd.IPaths],
  optional: [JupyterLab.IInfo, ITranslator],
  provides: IConnectionLost,
  activate: (
    app: JupyterFrontEnd,
    model: IDSComputeModel,
    paths: JupyterFrontEnd.IPaths,
    info: JupyterLab.IInfo | null,
    translator: ITranslator | null
  ): IConnectionLost => {
    const trans = loadTranslations(translator);
    window.addEventListener('beforeunload', event => {
      if (model.switching) {
        event.stopImmediatePropagation();
      }
    });

    const hubPrefix = paths.urls.hubPrefix || '';
    let showing = false;

    return async (manager, err, translator) => {
      if (model.switching) {
        // The hub is stopping this server on purpose and the page is on its
        // way to the progress page.
        return;
      }
      if (!hubPrefix) {
        return ConnectionLost(manager, err, translator);
      }
      // Same as @jupyterlab/hub-extension:connectionlost (4.6).
      if (showing) {
        return;
      }
      showing = true;
      if (info) {
        info.isConnected = false;
      }
      try {
        const result = await showDialog({
          title: trans.__('Server unavailable or unreachable'),
          body: trans.__(
            'Your server at %1 is not running.\nWould you like to restart it?',
            paths.urls.base
          ),
          buttons: [
            Dialog.okButton({ label: trans.__('Restart') }),
            Dialog.cancelButton({ label: trans.__('Dismiss') })
          ]
        });
        if (info) {
          info.isConnected = true;
        }
        if (
          result.button.accept &&
          !model.switching &&
          app.commands.hasCommand('hub:restart')
        ) {
          await app.commands.execute('hub:restart');
        }
      } finally {
        showing = false;
      }
    };
  }
};
