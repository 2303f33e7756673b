"""What the hub and the service write is theirs alone: no other account on
the machine (every user's kernel runs as one) can read the hub's database,
the service's records and audit log, secrets or server logs."""

import os
import stat

import pytest

pytestmark = pytest.mark.hub

#: not secret: a process id, which `ps` shows anyway
PUBLIC = {"jupyterhub.pid", "proxy.pid"}


def readable_by_others(path, top):
    """True if an account other than the owner (and not in its group) can
    read ``path``: 'other' may search every directory from ``top`` down to
    it and read the file itself."""
    directory = os.path.dirname(path)
    while True:
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return False
        if os.path.samefile(directory, top):
            break
        directory = os.path.dirname(directory)
    return bool(os.stat(path).st_mode & stat.S_IROTH)


def test_no_file_of_the_hub_or_service_is_readable_by_others(hub):
    user = hub.create_user("perms")
    hub.spawn(user, {"profile": "small"})
    hub.stop_server(user)  # a server log and the service's records exist now
    data = str(hub.data)
    seen, leaks = [], []
    for root, _dirs, files in os.walk(data):
        if os.path.relpath(root, data).split(os.sep)[0] == "volumes":
            continue  # the users' own volumes: their business
        for name in files:
            path = os.path.join(root, name)
            seen.append(os.path.relpath(path, data))
            if name not in PUBLIC and readable_by_others(path, data):
                leaks.append(f"{os.path.relpath(path, data)} ({stat.filemode(os.stat(path).st_mode)})")
    for expected in ("jupyterhub.sqlite", "service/ds-compute.sqlite", "credentials.json"):
        assert expected in seen, seen
    assert any(p.startswith("logs" + os.sep) for p in seen), seen
    assert not leaks, f"readable by every account on the machine: {leaks}"
    assert not os.stat(data).st_mode & stat.S_IROTH, "the data directory lists its files to everyone"
    for private in (
        "jupyterhub.sqlite",
        "service/ds-compute.sqlite",
        "service/cookie_secret",
        "credentials.json",
    ):
        assert stat.S_IMODE(os.stat(os.path.join(data, private)).st_mode) == 0o600, private
    assert stat.S_IMODE(os.stat(os.path.join(data, "service")).st_mode) == 0o700
