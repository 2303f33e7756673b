"""What the spawner told this server about itself (pure, no I/O).

The spawner passes everything through environment variables (see
``docs/internals.md``, "Environment the spawner gives every single-user
server"). :class:`ServerContext` parses them once, tolerating bad values: a
malformed variable is reported in ``problems`` and never stops the server.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Mapping


def utcnow() -> float:
    """Unix time now. Only a standalone function so tests can patch the clock."""
    return time.time()


def _json_env(env: Mapping[str, str], key: str, kind: type, problems: list[str]):
    raw = env.get(key)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError as e:
        problems.append(f"{key} is not valid JSON: {e}")
        return None
    if not isinstance(value, kind):
        problems.append(f"{key} must be a JSON {kind.__name__}, got {type(value).__name__}")
        return None
    return value


@dataclass
class ServerContext:
    """This server as the spawner and JupyterHub describe it."""

    user: str | None = None
    server_name: str = ""
    tier: dict[str, Any] | None = None
    tiers: list[dict[str, Any]] = field(default_factory=list)
    started_at: float | None = None
    volume_id: str | None = None
    volume_path: str | None = None
    volume_driver: str | None = None
    backend: str | None = None
    service_url: str | None = None
    api_token: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def under_hub(self) -> bool:
        return bool(self.user)

    @property
    def tier_slug(self) -> str | None:
        if self.tier and isinstance(self.tier.get("slug"), str):
            return self.tier["slug"]
        return None

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> "ServerContext":
        problems: list[str] = []
        tier = _json_env(env, "DS_COMPUTE_TIER_INFO", dict, problems)
        if tier is None and env.get("DS_COMPUTE_TIER"):
            tier = {"slug": env["DS_COMPUTE_TIER"]}
        tiers = _json_env(env, "DS_COMPUTE_TIERS", list, problems) or []
        tiers = [t for t in tiers if isinstance(t, dict)]
        started_at = None
        if env.get("DS_COMPUTE_STARTED_AT"):
            try:
                started_at = float(env["DS_COMPUTE_STARTED_AT"])
            except ValueError:
                problems.append(f"DS_COMPUTE_STARTED_AT is not a number: {env['DS_COMPUTE_STARTED_AT']!r}")
        service_url = env.get("DS_COMPUTE_SERVICE_URL") or None
        if service_url and not service_url.endswith("/"):
            service_url += "/"
        return cls(
            user=env.get("JUPYTERHUB_USER") or None,
            server_name=env.get("JUPYTERHUB_SERVER_NAME", ""),
            tier=tier,
            tiers=tiers,
            started_at=started_at,
            volume_id=env.get("DS_COMPUTE_VOLUME_ID") or None,
            volume_path=env.get("DS_COMPUTE_VOLUME_PATH") or None,
            volume_driver=env.get("DS_COMPUTE_VOLUME_DRIVER") or None,
            backend=env.get("DS_COMPUTE_BACKEND") or None,
            service_url=service_url,
            api_token=env.get("JUPYTERHUB_API_TOKEN") or None,
            problems=problems,
        )

    def seconds_on_tier(self, now: float | None = None) -> float | None:
        if self.started_at is None:
            return None
        now = utcnow() if now is None else now
        return max(0.0, now - self.started_at)

    def cost_so_far(self, now: float | None = None) -> float | None:
        """hourly_cost x hours on this tier, or None when either is unknown."""
        seconds = self.seconds_on_tier(now)
        hourly = (self.tier or {}).get("hourly_cost")
        if seconds is None or not isinstance(hourly, (int, float)):
            return None
        return round(float(hourly) * seconds / 3600.0, 6)

    def tiers_with_current(self, tiers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        current = self.tier_slug
        return [dict(t, current=(t.get("slug") == current)) for t in tiers]
