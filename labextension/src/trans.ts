import {
  ITranslator,
  nullTranslator,
  TranslationBundle
} from '@jupyterlab/translation';

/** The gettext domain of this extension's strings (`translator.load(...)`). */
export const TRANSLATION_DOMAIN = 'jupyter-ds-compute';

/** This extension's strings, in the user's language when a language pack has them. */
export function loadTranslations(
  translator: ITranslator | null | undefined
): TranslationBundle {
  return (translator ?? nullTranslator).load(TRANSLATION_DOMAIN);
}
