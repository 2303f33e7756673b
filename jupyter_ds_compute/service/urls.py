"""URLs the service sends browsers to (no tornado, no hub: pure)."""

from __future__ import annotations

import posixpath
from urllib.parse import quote, urlparse

__all__ = ["safe_next_url"]


def safe_next_url(next_url, user: str, server_name: str, base_url: str = "/") -> str:
    """Where to send the browser after a switch: ``next`` if it is safe, else Lab.

    Safe means a plain path (no scheme, no host, no ``..``, no backslash or
    control characters) under ``{base_url}user/<user>/`` or
    ``{base_url}hub/user/<user>/``. Anything else (another user's server,
    another site) gives ``{base_url}user/<user>/[<server>/]lab``.
    """
    user_prefix = f"{base_url}user/{quote(user, safe='')}/"
    fallback = user_prefix + (f"{quote(server_name, safe='')}/" if server_name else "") + "lab"
    if not isinstance(next_url, str) or not next_url or len(next_url) > 2000:
        return fallback
    if "\\" in next_url or any(ord(c) < 32 or ord(c) == 127 for c in next_url):
        return fallback
    parsed = urlparse(next_url)
    if parsed.scheme or parsed.netloc or not parsed.path.startswith("/"):
        return fallback
    if next_url.startswith("//"):
        return fallback
    path = parsed.path
    if "%2e" in path.lower() or "%2f" in path.lower():
        return fallback
    if ".." in path.split("/") or posixpath.normpath(path) + ("/" if path.endswith("/") else "") != path:
        return fallback
    if path.startswith(user_prefix) or path.startswith(f"{base_url}hub/user/{quote(user, safe='')}/"):
        return next_url
    return fallback
