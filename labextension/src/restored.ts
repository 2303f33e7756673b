import { Notification } from '@jupyterlab/apputils';
import { TranslationBundle } from '@jupyterlab/translation';

import { requestAPI } from './request';
import { IStateReply } from './types';

/** A restore older than this (seconds) is not announced any more. */
const RECENT = 600;

/**
 * After a switch with "Keep my variables": once per restore (remembered in
 * localStorage), a notification per notebook, e.g. "analysis.ipynb: restored
 * 14 variables (1.3 GB) in 2.1 s; not restored: conn (socket)". Waits while
 * the new server is still restoring; never throws.
 */
export async function announceRestore(
  trans: TranslationBundle,
  tries = 60
): Promise<void> {
  for (let i = 0; i < tries; i++) {
    let reply: IStateReply;
    try {
      reply = await requestAPI<IStateReply>('state');
    } catch {
      return; // not under the hub, or an older server: nothing to say
    }
    if (reply.restoring) {
      await new Promise(resolve => setTimeout(resolve, 2000));
      continue;
    }
    const restore = reply.restore;
    if (!restore || Date.now() / 1000 - restore.restored_at > RECENT) {
      return;
    }
    const key = `jupyter-ds-compute:restored:${window.location.pathname.split('/lab')[0]}`;
    if (window.localStorage.getItem(key) === String(restore.restored_at)) {
      return;
    }
    window.localStorage.setItem(key, String(restore.restored_at));
    for (const s of restore.sessions) {
      const text = s.error
        ? trans.__('%1: variables not restored: %2', s.path, s.error)
        : trans.__('%1: %2', s.path, s.summary?.notice ?? '');
      if (s.error || s.summary?.failed.length || s.summary?.error) {
        Notification.warning(text, { autoClose: false });
      } else {
        Notification.info(text, { autoClose: 10000 });
      }
    }
    return;
  }
}
