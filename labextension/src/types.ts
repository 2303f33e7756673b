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
  reason?: string | null;
  default?: boolean;
}

export interface IVolume {
  id: string;
  driver: string;
  path: string;
  size_bytes?: number | null;
  used_bytes?: number | null;
  is_notebook_dir?: boolean;
  warning?: string | null;
}

/** `GET status`. */
export interface IStatus {
  user: string;
  server_name: string;
  tier: ITierInfo | null;
  started_at?: number | null;
  seconds_on_tier?: number | null;
  cost_so_far?: number | null;
  volume: IVolume | null;
  under_hub: boolean;
}

/** `GET tiers`. */
export interface ITiersReply {
  current: string | null;
  tiers: ITier[];
}

/** `POST switch` answer (202). */
export interface ISwitchReply {
  id: string;
  progress_url: string;
}
