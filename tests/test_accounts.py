"""The system-account policy (accounts.py), pure: given an account and the
settings, allowed or the refusal message naming the rule; and the hub-name
→ account-name mapping is injective in every mode."""

from __future__ import annotations

import os
import pwd
import random

import pytest
from traitlets.config import Config

from jupyter_ds_compute.accounts import (
    DEFAULT_DENY,
    VALID_ACCOUNT,
    AccountRefused,
    SystemAccounts,
    account_name,
    refusal,
)


@pytest.mark.parametrize(
    "account, uid, gid, groups, settings, expected",
    [
        ("root", 0, 0, {"root"}, {}, "which is root: never used"),
        (
            "root",
            0,
            0,
            {"root"},
            {"min_uid": 0, "deny": [], "deny_groups": [], "allow": ["*"]},
            "which is root",
        ),
        ("root", 0, 0, {"root", "jupyter-ds-compute"}, {"deny": []}, "which is root"),
        ("nobody", 65534, 65534, {"nogroup"}, {"deny": []}, "nobody/overflow uid"),
        ("toor", 1500, 0, set(), {}, "primary group is root (gid 0)"),
        (
            "daemon",
            1,
            1,
            {"daemon"},
            {},
            "user 'daemon' maps to system account daemon (uid 1), below "
            "c.SystemAccounts.min_uid = 1000; ask an admin",
        ),
        ("munge", 102, 105, {"munge"}, {}, "below c.SystemAccounts.min_uid = 1000"),
        ("slurm", 64030, 64030, {"slurm"}, {}, "c.SystemAccounts.deny refuses ('slurm')"),
        ("systemd-oom", 1500, 1500, set(), {}, "c.SystemAccounts.deny refuses ('systemd-*')"),
        (
            "cloudsdk",
            1000,
            1000,
            {"cloudsdk", "sudo"},
            {},
            "member of group sudo (c.SystemAccounts.deny_groups)",
        ),
        ("dev", 1000, 1000, {"dev", "docker"}, {}, "group docker"),
        ("alice", 1001, 1001, {"alice"}, {}, None),
        ("alice", 1001, 1001, {"alice"}, {"min_uid": 2000}, "below c.SystemAccounts.min_uid = 2000"),
        # made by us (marker group): fine even below min_uid, never in deny
        ("jdc-x", 999, 999, {"jdc-x", "jupyter-ds-compute"}, {}, None),
        ("slurm", 64030, 64030, {"jupyter-ds-compute"}, {}, "deny refuses"),
        # prefixed mode: only accounts we made
        ("jdc-alice", 1001, 1001, {"jdc-alice"}, {"mode": "prefixed"}, "not created by jupyter-ds-compute"),
        ("jdc-alice", 1001, 1001, {"jdc-alice", "jupyter-ds-compute"}, {"mode": "prefixed"}, None),
        # allow-list: only these (then even below min_uid), never a denied one
        ("bob", 1002, 1002, set(), {"allow": ["alice"]}, "not in c.SystemAccounts.allow"),
        ("legacy", 500, 500, set(), {"allow": ["legacy", "lab-*"]}, None),
        ("lab-7", 1500, 1500, set(), {"allow": ["legacy", "lab-*"]}, None),
        ("munge", 102, 105, set(), {"allow": ["munge"]}, "deny refuses"),
        # shared mode: the one account is checked like any other
        ("notebooks", 1100, 1100, set(), {"mode": "shared"}, None),
        ("daemon", 1, 1, set(), {"mode": "shared"}, "below c.SystemAccounts.min_uid"),
    ],
)
def test_refusal(account, uid, gid, groups, settings, expected):
    hub_name = account if account != "jdc-alice" else "alice"
    reason = refusal(hub_name, account, uid, gid, groups, **settings)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason, reason
        assert reason.endswith("ask an admin")


def test_account_names_per_user_mode():
    assert account_name("alice") == "alice"
    assert account_name("mary-jane") == "mary-jane"
    assert account_name("j.doe") == "j.doe"
    assert account_name("root") == "root"  # then refused by the policy, by name of the rule
    assert account_name("john@acme.com") == "jdc-john-40acme.com"
    assert account_name("john䂬me.com") == "jdc-john-u0040acme.com"
    assert account_name("Alice") == "jdc--41lice"
    assert account_name("jdc-alice") == "jdc-jdc-2dalice"  # never someone's escaped account
    assert account_name("_svc") == "jdc-_svc"
    long = account_name("a" * 40)
    assert len(long) == 32 and long.startswith("jdc-") and "-h" in long


def test_account_names_prefixed_and_shared():
    assert account_name("alice", "prefixed") == "jdc-alice"
    assert account_name("root", "prefixed") == "jdc-root"
    assert account_name("mary-jane", "prefixed") == "jdc-mary-2djane"
    assert account_name("x", "prefixed", prefix="nb_") == "nb_x"
    assert account_name("alice", "shared", shared="notebooks") == "notebooks"
    assert account_name("bob", "shared", shared="notebooks") == "notebooks"


@pytest.mark.parametrize("mode", ["per-user", "prefixed"])
def test_account_names_are_injective_and_valid(mode):
    rng = random.Random(7)
    alphabet = "abz09-_.@A:\u00e9\u40ac"
    hub_names = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(20000)}
    hub_names |= {"jdc-" + n for n in list(hub_names)[:2000]} | {"a" * n for n in range(1, 60)}
    hub_names |= {"john@acme.com", "john䂬me.com", "jdc-john-40acme.com", "a--b", "a:b", "Alice", "alice"}
    out = {}
    for n in hub_names:
        acct = account_name(n, mode)
        assert VALID_ACCOUNT.match(acct), (n, acct)
        assert out.setdefault(acct, n) == n, f"{n!r} and {out[acct]!r} both map to {acct}"


def config(**settings):
    c = Config()
    for k, v in settings.items():
        c.SystemAccounts[k] = v
    return c


@pytest.mark.parametrize("name", ["root", "daemon", "bin", "nobody", "munge", "slurm", "postgres"])
def test_check_refuses_this_machines_system_accounts(name):
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        pytest.skip(f"no {name} account here")
    accounts = SystemAccounts(config=config())
    with pytest.raises(AccountRefused) as e:
        accounts.check(name, pw)
    assert e.value.status_code == 403
    assert f"maps to system account {name} (uid {pw.pw_uid})" in e.value.message
    assert "c.SystemAccounts." in e.value.message or "never used" in e.value.message
    with pytest.raises(AccountRefused):
        accounts.lookup(name)


def test_lookup_of_a_missing_account_says_how_to_fix():
    accounts = SystemAccounts(config=config(mode="prefixed"))
    with pytest.raises(AccountRefused, match="No system account jdc-nosuchuserxyz .*c.SystemAccounts.create"):
        accounts.lookup("nosuchuserxyz")


def test_shared_mode_needs_an_account():
    with pytest.raises(AccountRefused, match="shared_account"):
        SystemAccounts(config=config(mode="shared")).name_for("alice")


def test_bad_prefix_is_refused_naming_the_field():
    with pytest.raises(Exception, match="c.SystemAccounts.prefix"):
        SystemAccounts(config=config(prefix="Bad Prefix"))


def test_default_deny_lists_root():
    assert "root" in DEFAULT_DENY and "munge" in DEFAULT_DENY and "slurm" in DEFAULT_DENY


@pytest.mark.parametrize("backend", ["local", "slurm"])
async def test_both_backends_use_the_policy(backend):
    from aws.harness import FakeSpawner

    from jupyter_ds_compute.backends.local import LocalBackend
    from jupyter_ds_compute.backends.slurm import SlurmBackend

    cls = {"local": LocalBackend, "slurm": SlurmBackend}[backend]
    b = cls(FakeSpawner("root", config=config()))
    with pytest.raises(AccountRefused, match="which is root: never used"):
        await b.system_account()
    with pytest.raises(AccountRefused, match="which is root"):
        b.system_account_now()


@pytest.mark.skipif(os.geteuid() != 0, reason="useradd needs root")
def test_name_of_an_existing_group_is_a_clear_refusal_not_a_crash():
    """Debian has a group `operator` but no such user: useradd exits 9 and
    makes nothing; the refusal says why and what to do."""
    import asyncio
    import grp

    grp.getgrnam("operator")
    with pytest.raises(KeyError):
        pwd.getpwnam("operator")
    accounts = SystemAccounts(create=True)
    with pytest.raises(AccountRefused, match="a group named operator already exists.*prefixed"):
        asyncio.run(accounts.resolve("operator"))
