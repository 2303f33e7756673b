"""Issue 12 §1 and §2 against a real hub running as root (the local backend
runs servers as system accounts):

- a hub user whose name is a system or service account (``root``,
  ``daemon``, ``nobody``, ``munge``, ``slurm``...) is refused with a 403
  naming the rule, and nothing runs under that uid;
- the colliding pair ``john@acme.com`` / ``john䂬me.com`` (and ``a--b`` /
  ``a:b``) get distinct volumes, logs and cgroups, and the second user's
  kernel cannot read (or plant files in) the first's volume;
- ``c.SystemAccounts.mode = "prefixed"`` runs servers as ``jdc-<name>``
  accounts we created, never as an existing account.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
from urllib.parse import quote

import pytest
from conftest import hub_workdir, process_uid, server_processes
from hubtest import Hub, wait_for
from kernelclient import execute, start_kernel

pytestmark = [
    pytest.mark.hub,
    pytest.mark.skipif(os.geteuid() != 0, reason="servers run as system accounts only under a root hub"),
]

HUB_EXTRA_CONFIG = """
c.JupyterHub.allow_named_servers = True
# the policy of hub names mapped to existing accounts (the embedded default
# uses "prefixed", which never maps to them)
c.SystemAccounts.mode = "per-user"
"""


def q(name):
    """A hub user name as JupyterHub puts it in URLs."""
    return quote(name, safe="@~")


def main_pid(user):
    for pid, env in server_processes(user).items():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"jupyterhub-singleuser" in f.read():
                    return pid, env
        except OSError:
            continue
    raise AssertionError(f"no server process of {user!r}")


def singleuser_pids_of_uid(uid):
    """Server processes (ours or anyone's jupyterhub-singleuser) running as ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if process_uid(int(entry)) != uid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except (OSError, LookupError):
            continue
        if b"jupyterhub-singleuser" in cmdline or b"DS_COMPUTE_SERVER_KEY=" in environ:
            found.append(int(entry))
    return found


def cgroup_of(pid):
    with open(f"/proc/{pid}/cgroup") as f:
        return sorted({line.strip().split(":", 2)[2] for line in f})


def refused_spawn(hub, user):
    hub.create_user(q(user))
    r = hub.spawn(q(user), {"profile": "small"}, wait=False)
    return r


# -- §1: system and service accounts are never used ------------------------------------


@pytest.mark.parametrize(
    "name, rule",
    [
        ("root", "which is root: never used for servers"),
        ("daemon", "maps to system account daemon (uid 1), below c.SystemAccounts.min_uid = 1000"),
        ("bin", "below c.SystemAccounts.min_uid = 1000"),
        ("nobody", "the nobody/overflow uid"),
        ("munge", "below c.SystemAccounts.min_uid = 1000"),
        ("slurm", "c.SystemAccounts.deny refuses ('slurm')"),
        ("postgres", "below c.SystemAccounts.min_uid = 1000"),
    ],
)
def test_system_account_names_are_refused(hub, name, rule):
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        pytest.skip(f"no {name} account on this machine")
    before = set(singleuser_pids_of_uid(uid))
    r = refused_spawn(hub, name)
    assert r.status_code == 403, (r.status_code, r.text)
    message = r.json()["message"]
    assert f"user {name!r} maps to system account {name} (uid {uid})" in message
    assert rule in message and "ask an admin" in message
    assert hub.server_model(name) is None
    assert server_processes(name) == {}
    assert set(singleuser_pids_of_uid(uid)) - before == set()
    # refused before anything was made for it
    assert not os.path.exists(os.path.join(hub.data, "volumes", name))
    assert not os.path.exists(os.path.join(hub.data, "volumes", ".owners", f"{name}.json"))


def test_login_as_root_then_spawn_page_is_refused(hub):
    s = hub.login("root")
    r = s.post(
        f"{hub.url}/hub/spawn",
        data={"profile": "small", "_xsrf": s.cookies.get("_xsrf")},
        allow_redirects=False,
    )
    if r.status_code in (302, 303):  # refused after the form's 1 s wait: the pending page says why
        wait_for(lambda: hub.server_model("root") is None, timeout=30, message="root's refused spawn over")
        r = s.get(f"{hub.url}/hub/spawn-pending/root")
    else:
        assert r.status_code == 403, (r.status_code, r.text[:500])
    assert "which is root: never used for servers" in r.text
    # (uid 0 runs other things here, e.g. the hub: look for this server's marker)
    assert server_processes("root") == {}


def test_an_ordinary_user_still_runs_as_their_account(hub):
    user = hub.create_user("sec-plain")
    hub.spawn(user, {"profile": "small"})
    pid, _ = main_pid(user)
    pw = pwd.getpwnam("sec-plain")
    assert process_uid(pid) == pw.pw_uid >= 1000
    # created by us: marked by the group
    assert "sec-plain" in grp.getgrnam("jupyter-ds-compute").gr_mem
    hub.stop_server(user)


# -- §2: one hub user + server, one volume, log and cgroup --------------------------------


def test_colliding_names_get_their_own_volume_log_and_cgroup(hub):
    first, second = "john@acme.com", "john䂬me.com"
    made = {}
    for user in (first, second):
        hub.create_user(q(user))
        hub.spawn(q(user), {"profile": "small"})
        pid, env = main_pid(user)
        made[user] = {
            "volume": env["DS_COMPUTE_VOLUME_ID"],
            "path": env["DS_COMPUTE_VOLUME_PATH"],
            "uid": process_uid(pid),
            "cgroup": cgroup_of(pid),
        }
    a, b = made[first], made[second]
    assert a["volume"] == "john-40acme.com" and b["volume"] == "john-u0040acme.com"
    assert a["path"] != b["path"] and a["uid"] != b["uid"] and a["cgroup"] != b["cgroup"]
    assert pwd.getpwuid(a["uid"]).pw_name == "jdc-john-40acme.com"
    assert pwd.getpwuid(b["uid"]).pw_name == "jdc-john-u0040acme.com"
    logs = os.listdir(os.path.join(hub.data, "logs"))
    assert "john-40acme.com.log" in logs and "john-u0040acme.com.log" in logs
    owners = os.path.join(hub.data, "volumes", ".owners")
    assert '"user": "john@acme.com"' in open(os.path.join(owners, "john-40acme.com.json")).read()

    # the first user's file, written by their own kernel
    token_a = hub.user_token(q(first))
    kid = start_kernel(hub, q(first), token_a)
    code = "open('secret.txt', 'w').write('for john only'); print('ok')"
    out, err = execute(hub, q(first), token_a, kid, code)
    assert (out.strip(), err) == ("ok", None)

    # the second user's kernel can neither read it nor plant a config there
    token_b = hub.user_token(q(second))
    kid = start_kernel(hub, q(second), token_b)
    code = f"""
import os
res = []
for op in (lambda: open({a['path'] + '/secret.txt'!r}).read(),
           lambda: os.listdir({a['path']!r}),
           lambda: open({a['path'] + '/.jupyter_server_config.py'!r}, 'w')):
    try:
        op(); res.append('OPEN')
    except PermissionError:
        res.append('denied')
print(res)
"""
    out, err = execute(hub, q(second), token_b, kid, code)
    assert err is None and out.strip() == "['denied', 'denied', 'denied']", (out, err)
    for user in (first, second):
        hub.stop_server(q(user))


def test_a_failed_start_shows_only_its_own_log(hub):
    # user "a--b" and user "a"'s server "b" wrote to the same a--b.log before
    hub.create_user("a--b")
    hub.spawn("a--b", {"profile": "small"})
    hub.create_user("a")
    r = hub.spawn("a", {"profile": "broken"}, server_name="b", wait=False)
    assert r.status_code == 500, r.text
    message = r.json()["message"]
    assert "boom: no such machine" in message
    assert "a--b" not in message and "/user/a--b/" not in message
    logs = os.listdir(os.path.join(hub.data, "logs"))
    assert "a-2d-2db.log" in logs and "a--b.log" in logs
    assert "/user/a--b/" not in open(os.path.join(hub.data, "logs", "a--b.log")).read()
    hub.stop_server("a--b")


# -- prefixed mode -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefixed_hub():
    from conftest import TEST_TIERS_CONFIG, _current_hub

    h = Hub(
        hub_workdir("security-prefixed"),
        extra_config=TEST_TIERS_CONFIG + 'c.SystemAccounts.mode = "prefixed"\n',
    )
    saved = dict(_current_hub)
    _current_hub["api_port"] = h.env["DS_COMPUTE_HUB_PORT"]
    h.start()
    yield h
    h.stop()
    _current_hub.clear()
    _current_hub.update(saved)


@pytest.fixture
def unmarked_account():
    name = "jdc-intruder"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=False)
    yield name
    subprocess.run(["userdel", name], check=False)


def test_prefixed_mode_runs_as_jdc_accounts(prefixed_hub, unmarked_account):
    hub = prefixed_hub
    for user in ("pat", "root"):
        hub.create_user(user)
        hub.spawn(user, {"profile": "small"})
        pid, _ = main_pid(user)
        pw = pwd.getpwnam(f"jdc-{user}")
        assert process_uid(pid) == pw.pw_uid >= 1000
        assert f"jdc-{user}" in grp.getgrnam("jupyter-ds-compute").gr_mem
        hub.stop_server(user)
        wait_for(
            lambda user=user: server_processes(user) == {}, timeout=15, message=f"{user}'s processes gone"
        )

    # an existing account with our prefix that we did not create is never used
    hub.create_user("intruder")
    r = hub.spawn("intruder", {"profile": "small"}, wait=False)
    assert r.status_code == 403, r.text
    assert "jdc-intruder" in r.json()["message"]
    assert "not created by jupyter-ds-compute (not in group jupyter-ds-compute" in r.json()["message"]
    assert singleuser_pids_of_uid(pwd.getpwnam(unmarked_account).pw_uid) == []
