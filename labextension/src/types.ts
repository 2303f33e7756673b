/**
 * Shapes of the server extension's answers (docs/internals.md,
 * "Server extension REST API").
 */

/** `DS_COMPUTE_TIER_INFO`: what a tier is. */
export interface ITierInfo {
  slug: string;
  display_name: string;
  description?: string | null;
  /** CPUs (may be fractional). */
  cpu?: number | null;
  /** Memory in bytes. */
  mem?: number | null;
  gpu?: number | null;
  /** US dollars per hour. */
  hourly_cost?: number | null;
}

/** One entry of `GET tiers`: a tier plus what the policy says for this user. */
export interface ITier extends ITierInfo {
  allowed: boolean;
  /** Why it is refused (group, cap or budget rule), as the service words it. */
  reason?: string | null;
  /** The rule that refuses it: `group`, `cap`, `budget` (null when allowed). */
  policy?: 'group' | 'cap' | 'budget' | string | null;
  default?: boolean;
  max_servers?: number | null;
  /** Seconds idle before a server on this tier is moved to the default tier. */
  idle_downshift_after?: number | null;
  /** The longest grant (seconds) a request may ask for; null: not requestable. */
  max_grant?: number | null;
  /** Refused by its groups, has `max_grant`, and nothing pending or granted. */
  requestable?: boolean;
  /** The user's pending request for this tier. */
  request?: { id: string; created: string; duration: number } | null;
  /** The user's running grant of this tier (`expires`: ISO time). */
  grant?: { id: string; expires: string } | null;
}

/** `POST requests {"profile", "duration", "reason"}` answer (201). */
export interface IAccessRequest {
  id: string;
  user?: string;
  profile: string;
  /** Seconds asked for. */
  duration: number;
  reason: string;
  /** `pending`, `approved`, `denied`, `expired`. */
  state: string;
  expires?: string | null;
}

/** Where spending stands: `unlimited` (no budget), `ok`, `warn`, `spent`. */
export type BudgetState = 'unlimited' | 'ok' | 'warn' | 'spent';

/** The user's tightest budget, as the hub service computes it. */
export interface IBudget {
  /** Spent this period (for a group budget: by the whole group). */
  spent: number;
  /** The budget, or null when unlimited. */
  budget: number | null;
  /** spent / budget, or null. */
  fraction: number | null;
  state: BudgetState | string;
  /** `user` or `group`. */
  kind?: string;
  /** The user's or the group's name. */
  name?: string;
  /** `day`, `week` or `month`. */
  period?: string;
  /** ISO time the period started. */
  period_start?: string;
  warn_fraction?: number;
  /** What this user spent this period. */
  user_spent?: number;
}

/** A policy action on this server, e.g. an idle downshift. */
export interface INotice {
  /** ISO time of the action. */
  time: string;
  /**
   * `idle-downshift`, `idle-stop`, `grant-downshift` (this server), or the
   * user's `request-approved`, `request-denied`, `grant-expiring`,
   * `grant-expired`.
   */
  kind: string;
  from_profile?: string | null;
  to_profile?: string | null;
  message: string;
}

/**
 * The volume as the server sees it (`serverext/app.py` `status()` and
 * `volume.py` `VolumeUsage.snapshot()`). Outside JupyterHub (or without
 * `DS_COMPUTE_VOLUME_*`) the server still answers, with `id`, `driver` and
 * `path` null; what it could not measure is null too.
 */
export interface IVolume {
  id: string | null;
  driver: string | null;
  path: string | null;
  /** Null when the usage could not be read (then `usage_error` says why). */
  size_bytes?: number | null;
  used_bytes?: number | null;
  free_bytes?: number | null;
  /** `filesystem`, `directory`, or null when the usage could not be read. */
  usage_source?: string | null;
  /** For `directory`: whether the walk counted every file (null: unknown). */
  usage_complete?: boolean | null;
  /** Why the usage could not be read (an OSError's text). */
  usage_error?: string | null;
  is_notebook_dir?: boolean | null;
  notebook_dir?: string | null;
  /** Why the notebook dir may not be on the volume; null when it is. */
  warning?: string | null;
}

/** `GET status`. */
export interface IStatus {
  /** The hub user owning this server; null when not under JupyterHub. */
  user: string | null;
  server_name: string;
  tier: ITierInfo | null;
  started_at?: number | null;
  seconds_on_tier?: number | null;
  cost_so_far?: number | null;
  volume: IVolume | null;
  /** `local`, `slurm`, `ec2`, or null (not under JupyterHub). */
  backend?: string | null;
  /**
   * Whether this server runs under JupyterHub (`JUPYTERHUB_USER` is set).
   * When false there are no tiers, no volume and nothing to switch to.
   */
  under_hub: boolean;
  /** Null when there is no hub service or it did not answer. */
  budget?: IBudget | null;
  /** Recent policy actions on this server, newest first. */
  notices?: INotice[];
}

/** `GET tiers`. */
export interface ITiersReply {
  current: string | null;
  tiers: ITier[];
  /** `service` or `environment` (the service did not answer). */
  source?: string;
  warning?: string | null;
  budget?: IBudget | null;
  notices?: INotice[];
}

/** `POST switch` answer (202). */
export interface ISwitchReply {
  id: string;
  progress_url: string;
}

/** One step of a switch (`validate`, `prepare`, `stop`, ...). */
export interface ISwitchStep {
  name: string;
  /** `pending`, `running`, `done`, `failed`, `skipped`. */
  status: string;
  /** ISO times, null until then. */
  started?: string | null;
  finished?: string | null;
  message?: string | null;
}

/**
 * `GET switches/<id>`: the service's switch record. `phase` and `estimate`
 * are missing from an older service.
 */
export interface ISwitchRecord {
  id: string;
  user?: string;
  server_name?: string;
  from_profile?: string | null;
  to_profile?: string;
  /** `pending`, `running`, `succeeded`, `rolled_back`, `failed`. */
  state: string;
  /**
   * `preparing`, `ready` (prepared; a held cut-over waits for Lab's go),
   * `cutting-over`, `starting`, `rolling-back`, `done`.
   */
  phase?: string;
  /**
   * A switch requested with `hold_cutover`: whether the cut-over waits for
   * `POST switches/<id>/go` now, and for at most `timeout` seconds; null
   * (or missing, from an older service) for a switch not held.
   */
  cutover?: {
    held: boolean;
    waiting: boolean;
    timeout: number;
  } | null;
  steps?: ISwitchStep[];
  error?: string | null;
  /** Medians (seconds) of recent succeeded switches of the same tiers. */
  estimate?: {
    prepare: number | null;
    cutover: number | null;
    samples: number;
  } | null;
  /** The service's clock when it answered (ISO). */
  now?: string;
}

/** One kernel's restore (`GET state` → `restore.sessions[]`). */
export interface IRestoredSession {
  path: string;
  kernel_name: string;
  error: string | null;
  summary: {
    restored: number;
    bytes: number;
    seconds: number;
    failed: { name: string; reason: string }[];
    not_restored: { name: string; type: string }[];
    error: string | null;
    notice: string;
  } | null;
}

/** `GET /ds-compute/api/state`: the last save and restore of the kernels' variables. */
export interface IStateReply {
  root: string;
  restoring: boolean;
  save: { saved_at: number; seconds: number } | null;
  restore: {
    restored_at: number;
    seconds: number;
    sessions: IRestoredSession[];
  } | null;
}
