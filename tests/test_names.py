"""Per-user names are injective: generated pairs that collided before
(``-%02x`` above U+00FF, ``a--b`` vs ``a:b``, case, long names) get distinct
volume ids, log files, cgroups, Slurm job names and AWS keys; existing
lower-case names keep their ids; a local volume refuses another's owner."""

from __future__ import annotations

import itertools
import json
import os
import random
import re

import pytest
from aws.harness import FakeSpawner
from traitlets.config import Config

from jupyter_ds_compute import names
from jupyter_ds_compute.backends import cgroups
from jupyter_ds_compute.backends.local import LocalBackend
from jupyter_ds_compute.backends.slurm import SlurmBackend
from jupyter_ds_compute.names import MAX_LEN, safe_name
from jupyter_ds_compute.volumes.local import LocalVolume, VolumeOwnedError, volume_id_for

_OLD_SAFE = re.compile(r"[^a-z0-9._-]")


def old_volume_id(user, server=""):
    """The volume id before names.py (ambiguous): kept here to prove the pairs collided."""

    def esc(s):
        return _OLD_SAFE.sub(lambda m: "-%02x" % ord(m.group()), s.lower().replace("-", "-2d"))

    return esc(user) + ("--" + esc(server) if server else "")


def old_log_name(user, server=""):
    log_name = f"{user}:{server}" if server else user
    return log_name.replace("/", "_").replace(":", "--")


def decode(name):
    """Invert safe_name for uncut names: proof that the escape is injective."""
    assert "-h" not in name or len(name) < MAX_LEN
    parts, i, current = [], 0, []
    while i < len(name):
        if name.startswith("--", i):
            parts.append("".join(current))
            current, i = [], i + 2
        elif name[i] == "-" and name[i + 1] == "u":
            current.append(chr(int(name[i + 2 : i + 8], 16)))
            i += 8
        elif name[i] == "-":
            current.append(chr(int(name[i + 1 : i + 3], 16)))
            i += 3
        else:
            current.append(name[i])
            i += 1
    parts.append("".join(current))
    assert len(parts) <= 2, name
    return parts[0], parts[1] if len(parts) == 2 else ""


def legacy_collisions(limit=400):
    """Pairs of distinct hub names the old ``-%02x`` escape mapped to one id:
    a code point >= U+0100 written ``-abcd`` equals chr(0xab) + "cd"."""
    pairs = []
    for cp in itertools.chain(range(0x100, 0x1000), range(0x4000, 0x4100), [0x40AC, 0x1F600]):
        h = "%02x" % cp
        first = chr(int(h[:2], 16))
        if _OLD_SAFE.match(first) is None or first == "-":
            continue  # a safe first char is not escaped: no collision
        a, b = f"john{chr(cp)}me", f"john{first}{h[2:]}me"
        if old_volume_id(a) == old_volume_id(b):
            pairs.append((a, b))
        if len(pairs) >= limit:
            break
    return pairs


# -- the escape ---------------------------------------------------------------------


def test_the_issue_pair_collided_and_no_longer_does():
    a, b = "john@acme.com", "john䂬me.com"
    assert old_volume_id(a) == old_volume_id(b) == "john-40acme.com"
    assert safe_name(a) == "john-40acme.com"  # the first user keeps their volume
    assert safe_name(b) == "john-u0040acme.com"
    assert safe_name(a) != safe_name(b)


def test_generated_legacy_collisions_are_distinct():
    pairs = legacy_collisions()
    assert len(pairs) > 100  # the generator really finds collisions
    for a, b in pairs:
        assert safe_name(a) != safe_name(b), (a, b)
        assert decode(safe_name(a)) == (a, "")
        assert decode(safe_name(b)) == (b, "")


@pytest.mark.parametrize(
    "first, second",
    [
        (("a--b", ""), ("a", "b")),  # the user/server separator
        (("a:b", ""), ("a", "b")),
        (("a--b", ""), ("a:b", "")),  # the old log names: both a--b.log
        (("Alice", ""), ("alice", "")),  # case
        (("a", "b--c"), ("a--b", "c")),
        (("a-", "b"), ("a", "-b")),
        (("x" * 300, ""), ("x" * 300 + "y", "")),  # long names sharing a long prefix
        (("x" * 300, ""), ("x" * 299, "x")),
        (("x" * 127, ""), ("x" * 126, "")),  # around the bound
        ((".owners", ""), ("-2eowners", "")),
    ],
)
def test_pairs_that_collide_somewhere_are_distinct(first, second):
    assert safe_name(*first) != safe_name(*second)


def test_old_log_names_collided():
    assert old_log_name("a--b") == old_log_name("a", "b") == "a--b"


def test_existing_lowercase_names_keep_their_ids():
    for user, server in [("alice", ""), ("alice", "gpu"), ("alice-adm", ""), ("john@acme.com", ""),
                         ("j.doe_2", "my box"), ("émile", "")]:  # fmt: skip
        assert safe_name(user, server) == old_volume_id(user, server) == volume_id_for(user, server)


def test_random_names_are_injective_bounded_and_safe():
    rng = random.Random(12)
    alphabet = "ab-_.:@/ A\u00e9\u00ff\u0100\u40ac\U0001f600-"
    seen = {}
    for _ in range(20000):
        user = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
        server = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4)))
        name = safe_name(user, server)
        assert re.fullmatch(r"[a-z0-9._-]+", name) and not name.startswith(".")
        assert len(name) <= MAX_LEN
        assert decode(name) == (user, server)
        assert seen.setdefault(name, (user, server)) == (user, server)
    assert len(seen) > 15000


def test_long_names_are_cut_with_a_hash_at_exactly_the_bound():
    long = [("u" * n + tail, s) for n in (120, 127, 128, 300) for tail in ("", "@", "䂬") for s in ("", "x")]
    out = {safe_name(u, s) for u, s in long}
    assert len(out) == len(long)
    for u, s in long:
        name = safe_name(u, s)
        full = names.escape(u) + ("--" + names.escape(s) if s else "")
        if len(full) >= MAX_LEN:
            assert len(name) == MAX_LEN and re.search(r"-h[a-z2-7]{16}$", name)
        else:
            assert name == full
    assert len(safe_name("a" * 1000, max_len=40)) == 40


# -- where the names are used ------------------------------------------------------


def spawner(user, name="", **config):
    c = Config()
    for key, value in config.items():
        cls, _, trait = key.partition("__")
        c[cls][trait] = value
    return FakeSpawner(user, name, config=c)


def test_logs_cgroups_and_slurm_names_of_colliding_pairs_are_distinct(tmp_path):
    pairs = [
        (("john@acme.com", ""), ("john䂬me.com", "")),
        (("a--b", ""), ("a", "b")),
        (("a--b", ""), ("a:b", "")),
    ]
    token = "0123456789abcdef"
    for first, second in pairs:
        made = []
        for user, server in (first, second):
            dirs = dict(LocalBackend__log_dir=str(tmp_path), SlurmBackend__spool_dir=str(tmp_path))
            sp = spawner(user, server, **dirs)
            local, slurm = LocalBackend(sp), SlurmBackend(sp)
            job_name = next(
                a for a in slurm.sbatch_argv(_tier(), "/w", "/v") if a.startswith("--job-name=")
            )  # fmt: skip
            made.append(
                (
                    local._log_path(),
                    cgroups.group_name(user, server, f"{user}/{server}/{token}"),
                    job_name,
                    slurm._workdir(),
                )
            )
        for a, b in zip(*made):
            assert a != b, (first, second, a)


def test_cgroup_names_stay_under_the_parent():
    name = cgroups.group_name("..", "", "../x/0123456789abcdef")
    assert "/" not in name and not name.startswith(".")
    h = cgroups.Hierarchy(2, {"": "/nonexistent"}, "ds-compute")
    for bad in ("../evil", "/abs", "a/../../b", ""):
        with pytest.raises(ValueError):
            h.paths(bad)
    assert h.paths("alice//0123")  # a group named before names were flat still resolves


def _tier():
    import types

    return types.SimpleNamespace(slug="small", display_name="Small", extra={}, cpu=1, mem=2**30, gpu=0)


def test_aws_keys_are_injective():
    from jupyter_ds_compute.volumes.ebs import EBSVolume
    from jupyter_ds_compute.volumes.efs import EFSVolume

    for cls in (EBSVolume, EFSVolume):
        pairs = [("a--b", ""), ("a", "b"), ("a:b", ""), ("A", ""), ("a", "")]
        keys = {cls(spawner(u, s))._key() for u, s in pairs}
        assert len(keys) == 5


# -- local volume ownership ----------------------------------------------------------


def volume(tmp_path, user, server=""):
    return LocalVolume(spawner(user, server, LocalVolume__root=str(tmp_path / "volumes")))


async def test_volume_records_its_owner_and_refuses_others(tmp_path):
    alice = volume(tmp_path, "john@acme.com")
    vid = await alice.ensure()
    record = json.loads((tmp_path / "volumes" / ".owners" / f"{vid}.json").read_text())
    assert (record["user"], record["server"]) == ("john@acme.com", "")
    assert oct(os.stat(tmp_path / "volumes" / ".owners").st_mode & 0o777) == "0o700"
    assert oct(os.stat(tmp_path / "volumes" / ".owners" / f"{vid}.json").st_mode & 0o777) == "0o600"
    (tmp_path / "volumes" / vid / "secret.txt").write_text("alice's")

    # the other half of the old collision gets its own volume
    mallory = volume(tmp_path, "john䂬me.com")
    assert await mallory.ensure() != vid

    # a state that points at alice's volume (left by the old naming) is not followed
    mallory = volume(tmp_path, "john䂬me.com")
    mallory.load_state({"driver": "local", "id": vid})
    assert await mallory.ensure() == "john-u0040acme.com"

    # a record naming someone else: refused, nothing changed
    bob = volume(tmp_path, "bob")
    os.makedirs(tmp_path / "volumes" / "bob")
    (tmp_path / "volumes" / ".owners" / "bob.json").write_text(json.dumps({"user": "robert", "server": ""}))
    before = sorted(os.listdir(tmp_path / "volumes" / "bob")), os.stat(tmp_path / "volumes" / "bob").st_mtime
    with pytest.raises(VolumeOwnedError) as e:
        await bob.ensure()
    assert e.value.status_code == 403 and "robert" in e.value.message
    assert "nothing was changed" in e.value.message
    after = sorted(os.listdir(tmp_path / "volumes" / "bob")), os.stat(tmp_path / "volumes" / "bob").st_mtime
    assert after == before

    # another server of the same user is someone else too
    alice_gpu = volume(tmp_path, "john@acme.com", "gpu")
    assert await alice_gpu.ensure() == f"{vid}--gpu"


async def test_unrecorded_volume_of_another_uid_is_not_adopted(tmp_path):
    os.makedirs(tmp_path / "volumes" / "carol")
    os.chown(tmp_path / "volumes" / "carol", 4242, 4242) if os.geteuid() == 0 else pytest.skip("needs root")
    carol = volume(tmp_path, "carol")
    carol.owner = (4343, 4343)
    with pytest.raises(VolumeOwnedError, match="uid 4242"):
        await carol.ensure()
    assert os.stat(tmp_path / "volumes" / "carol").st_uid == 4242
    assert not os.path.exists(tmp_path / "volumes" / ".owners" / "carol.json")
    carol.owner = (4242, 4242)  # the volume's own uid: adopted (made before owner records)
    assert await carol.ensure() == "carol"
    assert json.loads((tmp_path / "volumes" / ".owners" / "carol.json").read_text())["user"] == "carol"
