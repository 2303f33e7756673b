import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/**
 * The error thrown by `requestAPI` for an answer that is not 2xx.
 *
 * `message` is the server's own `message` field when it sent one (all
 * ds-compute handlers do), otherwise the HTTP status text. `body` is the
 * parsed JSON answer (for example the `id` of a switch already in flight
 * with a 409), or `null`.
 */
export class DSComputeError extends ServerConnection.ResponseError {
  constructor(
    response: Response,
    message: string,
    readonly body: any
  ) {
    super(response, message);
    this.name = 'DSComputeError';
  }

  get status(): number {
    return this.response.status;
  }
}

/**
 * Call the ds-compute server extension: `<baseUrl>/ds-compute/api/<endPoint>`.
 *
 * Every request of the extension goes through here.
 *
 * @param endPoint - API path below `ds-compute/api`, e.g. `status`.
 * @param init - Initial values for the request (method, body, ...).
 * @param settings - Server connection settings; defaults to the page's.
 * @returns The parsed JSON answer (or `null` for an empty one).
 * @throws ServerConnection.NetworkError when the server is unreachable,
 *   DSComputeError (a ServerConnection.ResponseError) for a non-2xx answer.
 */
export async function requestAPI<T>(
  endPoint = '',
  init: RequestInit = {},
  settings: ServerConnection.ISettings = Private.settings()
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, 'ds-compute/api', endPoint);

  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }

  const text = await response.text();
  let data: any = null;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      // Not JSON: typically an HTML 404 page when the server extension is
      // not installed. Keep `data` null; the status text says enough.
    }
  }

  if (!response.ok) {
    const message =
      (data && typeof data.message === 'string' && data.message) ||
      `${response.status} ${response.statusText}`.trim();
    throw new DSComputeError(response, message, data);
  }
  return data as T;
}

namespace Private {
  let _settings: ServerConnection.ISettings | null = null;

  export function settings(): ServerConnection.ISettings {
    if (_settings === null) {
      _settings = ServerConnection.makeSettings();
    }
    return _settings;
  }
}
