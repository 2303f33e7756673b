"""Which system account runs a hub user's server: the one place that decides.

When the hub runs as root, the local and Slurm backends start each server
as a system account.  A hub user name is whatever someone typed at the
login page, so it must never select an account the operator did not mean
for notebooks: ``root``, ``daemon``, ``munge`` (reads the cluster's key),
``slurm``, ``postgres``...  :class:`SystemAccounts` (``c.SystemAccounts.*``)
maps hub users to accounts and polices the result:

- ``mode``: ``per-user`` (the hub name itself, when it is a valid account
  name), ``prefixed`` (``jdc-<name>``, accounts made by us) or ``shared``
  (one configured unprivileged account for everyone);
- an account is used only if its uid is at least ``min_uid`` (never uid 0,
  never the ``nobody`` uid 65534), its name is not in ``deny``, it is in no
  group of ``deny_groups`` (``sudo``, ``docker``...) and, when ``allow`` is
  set, it is listed there;
- accounts this project creates (``create``) are members of ``group``
  (``jupyter-ds-compute``): the marker that says "made for notebooks".

A refusal is :class:`AccountRefused`, a 403 whose message names the rule.
The rules themselves (:func:`account_name`, :func:`refusal`) are pure.
"""

from __future__ import annotations

import asyncio
import fnmatch
import grp
import os
import pwd
import re
import subprocess
from dataclasses import dataclass

from traitlets import Bool, CaselessStrEnum, Integer, List, Unicode, validate
from traitlets.config import LoggingConfigurable

from .errors import DSComputeError
from .names import bounded, escape

#: a name ``useradd`` takes as is (POSIX portable, lower case, a letter first, at most 32)
VALID_ACCOUNT = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
MAX_ACCOUNT_LEN = 32
#: uids never used, whatever the settings: root, nobody/overflow, (uid_t)-1 and -2
NEVER_UIDS = {0: "root", 65534: "the nobody/overflow uid", 4294967294: "(uid_t)-2", 4294967295: "(uid_t)-1"}

DEFAULT_DENY = [
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy",
    "www-data", "backup", "list", "irc", "gnats", "nobody", "_*", "systemd-*", "messagebus", "polkitd",
    "sshd", "ntp", "chrony", "munge", "slurm", "slurmd", "postgres", "mysql", "redis", "mongodb",
    "rabbitmq", "elasticsearch", "nginx", "apache", "httpd", "docker", "jupyterhub",
]  # fmt: skip
DEFAULT_DENY_GROUPS = [
    "root", "sudo", "wheel", "admin", "adm", "staff", "shadow", "disk", "docker", "lxd", "libvirt",
    "munge", "slurm",
]  # fmt: skip


class AccountRefused(DSComputeError):
    """A hub user may not run as the system account their name maps to (403)."""

    status_code = 403


@dataclass(frozen=True)
class Account:
    """A system account a server may run as (already checked)."""

    name: str
    uid: int
    gid: int
    groups: tuple  # every gid, primary included (os.getgrouplist)


# -- pure rules --------------------------------------------------------------


def account_name(hub_name: str, mode: str = "per-user", prefix: str = "jdc-", shared: str = "") -> str:
    """The system account name for hub user ``hub_name``; injective for a given mode.

    - ``per-user``: ``hub_name`` itself when it is a valid account name that
      does not start with ``prefix``; any other name (``john@acme.com``,
      ``Alice``, ``jdc-x``) becomes ``prefix`` + its escape (see
      :mod:`jupyter_ds_compute.names`), cut at 32 characters with a hash.
      Valid names never start with the prefix and escaped ones always do, so
      no two hub users share an account.
    - ``prefixed``: always ``prefix`` + the escape (``jdc-alice``,
      ``jdc-mary-2djane``, ``jdc-john-40acme.com``).
    - ``shared``: ``shared`` for everyone (no isolation between hub users).
    """
    if mode == "shared":
        return shared
    if mode == "per-user" and VALID_ACCOUNT.match(hub_name) and not hub_name.startswith(prefix):
        return hub_name
    return prefix + bounded(escape(hub_name), ("account", hub_name), MAX_ACCOUNT_LEN - len(prefix))


def _matches(name, patterns):
    return next((p for p in patterns if fnmatch.fnmatchcase(name, p)), None)


def refusal(
    hub_name: str,
    account: str,
    uid: int,
    gid: int,
    group_names,
    *,
    mode: str = "per-user",
    min_uid: int = 1000,
    deny=DEFAULT_DENY,
    deny_groups=DEFAULT_DENY_GROUPS,
    allow=(),
    marker_group: str = "jupyter-ds-compute",
) -> str | None:
    """Why hub user ``hub_name`` may not run as ``account`` (uid, gid, its
    groups' names), or ``None`` when it may.  Each message names the rule."""
    who = f"user {hub_name!r} maps to system account {account} (uid {uid})"
    ask = "; ask an admin"
    if uid in NEVER_UIDS:
        return f"{who}, which is {NEVER_UIDS[uid]}: never used for servers{ask}"
    if gid == 0:
        return f"{who}, whose primary group is root (gid 0): never used for servers{ask}"
    groups = set(group_names)
    marked = bool(marker_group) and marker_group in groups
    listed = bool(allow) and _matches(account, allow) is not None
    if uid < min_uid and not (marked or listed or allow or mode == "prefixed"):
        return f"{who}, below c.SystemAccounts.min_uid = {min_uid}{ask}"
    hit = _matches(account, deny)
    if hit:
        return f"{who}, which c.SystemAccounts.deny refuses ({hit!r}){ask}"
    bad = sorted(g for g in groups if _matches(g, deny_groups))
    if bad:
        return f"{who}, a member of group {bad[0]} (c.SystemAccounts.deny_groups){ask}"
    if marked:
        return None  # made by us for notebooks
    if mode == "prefixed":
        return (
            f"{who}, which exists but was not created by jupyter-ds-compute (not in group "
            f"{marker_group}, c.SystemAccounts.group){ask}"
        )
    if allow and not listed:
        return f"{who}, which is not in c.SystemAccounts.allow{ask}"
    return None


# -- the configurable -----------------------------------------------------------


class SystemAccounts(LoggingConfigurable):
    """Map hub users to system accounts and refuse the ones outside the policy."""

    mode = CaselessStrEnum(
        ["per-user", "prefixed", "shared"],
        "per-user",
        help="""
        How hub users map to system accounts (when servers run as system
        accounts: a root hub, ``c.LocalBackend.run_as`` / ``c.SlurmBackend.run_as``).

        - ``per-user``: the account named like the hub user (``alice`` runs as
          ``alice``, like JupyterHub's ``LocalProcessSpawner``); a hub name that
          is not a valid account name, or starts with :attr:`prefix`, maps to
          ``<prefix><escaped name>`` (never to someone else's account).
          Existing accounts are used only inside the policy below.
        - ``prefixed``: ``<prefix><name>`` (``jdc-alice``), accounts created
          by jupyter-ds-compute only (members of :attr:`group`); existing
          accounts of the machine are never used. What operators of shared
          machines expect.
        - ``shared``: every server runs as :attr:`shared_account`; this protects
          the machine from notebooks, not users from each other (they can
          read each other's volumes).

        Example::

            c.SystemAccounts.mode = "prefixed"
            c.SystemAccounts.create = True

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    prefix = Unicode(
        "jdc-",
        help="""
        Prefix of accounts made for hub users whose name is not an account
        name (and of every account in ``prefixed`` mode).

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    @validate("prefix")
    def _validate_prefix(self, proposal):
        value = proposal.value
        if not re.match(r"^[a-z_][a-z0-9_-]{0,11}$", value) or "--" in value:
            raise ValueError(
                f"c.SystemAccounts.prefix {value!r} must start with a letter or _, use only "
                "[a-z0-9_-] and be at most 12 characters"
            )
        return value

    shared_account = Unicode(
        "",
        help="""
        The one unprivileged account every server runs as in ``shared`` mode
        (it must exist, or :attr:`create` makes it). It is checked like any
        other account (``min_uid``, ``deny``, ``deny_groups``, ``allow``).

        Example::

            c.SystemAccounts.mode = "shared"
            c.SystemAccounts.shared_account = "notebooks"

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    min_uid = Integer(
        1000,
        help="""
        Lowest uid a server may run as. Below it are the accounts of the
        system and its services (Debian: < 1000). uid 0 and the ``nobody``
        uid 65534 are never used, whatever this says. Accounts in
        :attr:`group` (made by us) and accounts in :attr:`allow` are exempt.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    deny = List(
        Unicode(),
        DEFAULT_DENY,
        help="""
        Account names (shell-style patterns) never used for servers, even
        above :attr:`min_uid` (Debian's ``slurm`` is uid 64030) or in
        :attr:`allow`. The default lists root and the usual system and
        service accounts; extend it rather than replace it::

            c.SystemAccounts.deny = SystemAccounts.deny.default_value + ["ci-runner"]

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    deny_groups = List(
        Unicode(),
        DEFAULT_DENY_GROUPS,
        help="""
        Accounts in any of these groups (shell-style patterns) are never used:
        groups that give root or other users' data (``sudo``, ``wheel``,
        ``docker``, ``lxd``, ``disk``, ``shadow``, ``adm``, ``staff``...).

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    allow = List(
        Unicode(),
        help="""
        If not empty, only these accounts (shell-style patterns) may run
        servers, besides the ones we created (:attr:`group`); a listed account
        may be below :attr:`min_uid`, but never uid 0, in :attr:`deny` or in
        :attr:`deny_groups`.

        Example::

            c.SystemAccounts.allow = ["alice", "bob", "lab-*"]

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    create = Bool(
        False,
        help="""
        Create a missing account (``useradd``, no home, no login shell) as a
        member of :attr:`group`, the marker of accounts made for notebooks.
        ``c.LocalBackend.create_system_users`` / ``c.SlurmBackend.create_system_users``
        also turn this on. An account that exists is never changed.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    group = Unicode(
        "jupyter-ds-compute",
        help="""
        The system group every account we create belongs to (created when
        needed). Membership marks an account as made for notebooks: it is
        used even outside :attr:`min_uid`/:attr:`allow`, and it is the only
        kind of account ``prefixed`` mode uses. Add no other account to it.

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    command_timeout = Integer(30, help="""Seconds before groupadd/useradd count as failed.""").tag(
        config=True
    )

    # -- mapping and checks ----------------------------------------------------

    def name_for(self, hub_name: str) -> str:
        if self.mode == "shared" and not self.shared_account:
            raise AccountRefused(
                "Servers cannot start: c.SystemAccounts.mode = 'shared' needs "
                "c.SystemAccounts.shared_account; ask an admin"
            )
        return account_name(hub_name, self.mode, self.prefix, self.shared_account)

    def check(self, hub_name: str, pw) -> Account:
        """The :class:`Account` for ``pw`` (a ``pwd`` entry) or :class:`AccountRefused`."""
        gids = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
        names = set()
        for g in gids:
            try:
                names.add(grp.getgrgid(g).gr_name)
            except KeyError:
                pass
        reason = refusal(
            hub_name,
            pw.pw_name,
            pw.pw_uid,
            pw.pw_gid,
            names,
            mode=self.mode,
            min_uid=self.min_uid,
            deny=self.deny,
            deny_groups=self.deny_groups,
            allow=self.allow,
            marker_group=self.group,
        )
        if reason:
            raise AccountRefused(reason, log_message=f"Refused system account for {hub_name!r}: {reason}")
        return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, gids)

    def lookup(self, hub_name: str) -> Account:
        """The checked account of an existing user (no creation; sync)."""
        name = self.name_for(hub_name)
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise AccountRefused(
                f"No system account {name} for user {hub_name!r} on the hub's machine: create it "
                "(on a cluster: in the directory service), or set c.SystemAccounts.create = True; "
                "ask an admin"
            ) from None
        return self.check(hub_name, pw)

    async def resolve(self, hub_name: str, *, create: bool = False, log_name: str = "") -> Account:
        """The checked account for ``hub_name``, created first if missing and allowed."""
        name = self.name_for(hub_name)
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            if not (create or self.create):
                return self.lookup(hub_name)  # raises the clear error
            await self._create(name, hub_name, log_name or hub_name)
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                # useradd's 9 also means "a group of that name exists" (e.g.
                # Debian's `operator`): no account was made
                raise AccountRefused(
                    f"Cannot create system account {name} for user {hub_name!r}: a group named {name} "
                    "already exists on the hub's machine; use c.SystemAccounts.mode = 'prefixed' "
                    "(jdc-<name>), or ask an admin"
                ) from None
        return self.check(hub_name, pw)

    async def _create(self, name, hub_name, log_name):
        if not VALID_ACCOUNT.match(name):
            raise AccountRefused(f"{name!r} (for user {hub_name!r}) is not a valid system account name")
        try:
            grp.getgrnam(self.group)
        except KeyError:
            self.log.info("Creating system group %s (marks accounts made for notebooks)", self.group)
            await self._run(["groupadd", "--system", "--", self.group], ok=(0, 9))
        self.log.info("Creating system account %s for %s", name, log_name)
        argv = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--groups", self.group]
        # 9: exists (another spawn won the race); then it is checked like any account
        await self._run([*argv, "--", name], ok=(0, 9))

    async def _run(self, argv, ok=(0,)):
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.command_timeout)
        except asyncio.TimeoutError:
            proc.kill()
            raise DSComputeError(f"{argv[0]} did not finish within {self.command_timeout}s") from None
        if proc.returncode not in ok:
            raise DSComputeError(
                f"Could not run {argv[0]} for the system account; ask an admin",
                log_message=f"{' '.join(argv)} failed ({proc.returncode}): {out.decode(errors='replace')}",
            )
