"""Per-user names: one hub user + server, one name (injective), everywhere.

Every name the hub derives from a hub user (and named server) for the
outside world goes through :func:`safe_name`: local volume ids, server log
files, cgroups, Slurm job names and spool directories, EBS/EFS names and
tokens.  Two different ``(user, server)`` pairs never get the same name, so
one user can never be handed another's volume, log or cgroup.

The escape is a prefix-free code, one code per character:

- ``a``–``z``, ``0``–``9``, ``.`` and ``_`` stay as they are (a leading ``.``
  is escaped, so no name is ``.owners``, ``..`` or another hidden entry);
- any other character below U+0100 becomes ``-`` + 2 hex digits (``-`` is
  ``-2d``, ``@`` is ``-40``, ``A`` is ``-41``);
- a character from U+0100 up becomes ``-u`` + 6 hex digits (``䂬`` is
  ``-u0040ac``).

``-`` is always followed by a hex digit or ``u``, so an escaped name never
contains ``--``: that separates the user from the server
(``alice--gpu-2dbox``).  For lower-case names below U+0100 (nearly every
existing hub user) this is exactly the escape volume ids have always used,
so existing volumes keep their ids.  (The old escape lower-cased first and
wrote everything as ``-%02x``, which made ``Alice`` and ``alice``, and
``john@acme.com`` and ``john䂬me.com``, the same name.)

A name that would reach ``max_len`` is cut and ends in ``-h`` + a hash of
the exact ``(user, server)`` pair; such a name is always exactly
``max_len`` long and an uncut one always shorter, so the two kinds never meet.
"""

from __future__ import annotations

import base64
import hashlib
import json

#: characters kept as they are
SAFE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._")
#: separator between the user's and the server's part
SEPARATOR = "--"
#: default bound: fits file names (255), cgroup names, Slurm job names, AWS tags
MAX_LEN = 128
#: base32 characters of the hash in a cut name (80 bits)
HASH_LEN = 16


def _codes(s: str):
    for i, ch in enumerate(s):
        if ch in SAFE_CHARS and not (i == 0 and ch == "."):
            yield ch
        elif ord(ch) < 0x100:
            yield "-%02x" % ord(ch)
        else:
            yield "-u%06x" % ord(ch)


def escape(s: str) -> str:
    """The injective escape of one string (see the module docstring)."""
    return "".join(_codes(s))


def digest(*parts: str, length: int = HASH_LEN) -> str:
    """A short lower-case base32 hash of the exact ``parts`` (no ambiguity in joining)."""
    raw = hashlib.sha256(json.dumps(list(parts), ensure_ascii=False).encode()).digest()
    return base64.b32encode(raw).decode().lower()[:length]


def bounded(codes, key: tuple, max_len: int) -> str:
    """Join ``codes``; if the result would reach ``max_len``, cut it at a code
    boundary and end it in ``-h<hash of key>``, exactly ``max_len`` long."""
    codes = list(codes)
    full = "".join(codes)
    if len(full) < max_len:
        return full
    tail = "-h" + digest(*key)
    if max_len < len(tail) + 1:
        raise ValueError(f"max_len {max_len} is too small for a hashed name")
    head = ""
    for code in codes:
        if len(head) + len(code) > max_len - len(tail):
            break
        head += code
    # a cut name is always exactly max_len long (padded where a code did not fit)
    return head + "_" * (max_len - len(head) - len(tail)) + tail


def safe_name(user: str, server: str = "", max_len: int = MAX_LEN) -> str:
    """The name of hub user ``user``'s server ``server`` (``""``: the default one).

    ``alice``, ``alice--gpu``, ``mary-2djane``, ``john-40acme.com``,
    ``john-u0040acme.com``; injective over all ``(user, server)`` pairs,
    at most ``max_len`` long, made of ``[a-z0-9._-]`` only, never starting
    with ``.``.
    """
    if not user:
        raise ValueError("a hub user name is never empty")
    codes = list(_codes(user))
    if server:
        codes.append(SEPARATOR)
        codes.extend(_codes(server))
    return bounded(codes, (user, server or ""), max_len)
