"""SlurmBackend and the shared squeue poller without a cluster: the job script
and sbatch argv come from operator config only, state reading, the poller's
one-call-per-interval contract, the launcher."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import stat
import subprocess
import sys
import textwrap
import time

import pytest
from fakes import FakeSpawner
from traitlets.config import Config

from jupyter_ds_compute import tiers
from jupyter_ds_compute.backends.base import BackendError
from jupyter_ds_compute.backends.slurm import SlurmBackend, _batchspawner
from jupyter_ds_compute.backends.squeue import JobInfo, SqueuePoller, SqueueUnavailable, parse

PROFILES = tiers.normalize_profile_list(
    [
        {"slug": "small", "display_name": "small", "hourly_cost": 0.1, "default": True, "cpu": 1, "mem": "2G",
         "extra": {"slurm": {"partition": "small", "time": "8:00:00"}}},
        {"slug": "gpu", "display_name": "gpu", "hourly_cost": 0.1, "cpu": 4, "mem": "16G", "gpu": 1,
         "extra": {"slurm": {"partition": "gpu", "qos": "gpu", "sbatch_lines": ["#SBATCH --exclusive=user"]}}},
        {"slug": "bad-key", "display_name": "bad-key", "hourly_cost": 0.1, "cpu": 1, "mem": "1G", "extra": {"slurm": {"options": "--wrap=id"}}},
        {"slug": "bad-value", "display_name": "bad-value", "hourly_cost": 0.1, "cpu": 1, "mem": "1G", "extra": {"slurm": {"partition": "gpu --wrap=id"}}},
        {"slug": "bad-line", "display_name": "bad-line", "hourly_cost": 0.1, "cpu": 1, "mem": "1G", "extra": {"slurm": {"sbatch_lines": ["#SBATCH -p a\nid"]}}},
    ]
)  # fmt: skip
CMD = ["/venv/bin/jupyterhub-singleuser", "--debug"]


def backend(user_options=None, config=None, user="alice"):
    cfg = config or Config()
    cfg.SlurmBackend.run_as = "hub"
    cfg.SlurmBackend.python = "/venv/bin/python"
    return SlurmBackend(FakeSpawner(user, config=cfg, user_options=user_options))


def tier(slug):
    return tiers.get_tier(PROFILES, slug)


def submission(b, slug):
    t = tier(slug)
    return b.sbatch_argv(t, "/spool/alice", "/vol/alice"), b.script(t, CMD, "/spool/alice")


# -- the job script and argv ---------------------------------------------------------


@pytest.mark.parametrize(
    "user_options",
    [
        {"profile": "small", "req_partition": "gpu", "req_options": "--wrap=id"},
        {"profile": "small", "partition": "gpu", "options": "--wrap=id", "cmd": "id", "prologue": "id"},
        {"profile": "small", "sbatch_lines": ["#SBATCH -p gpu"], "time": "99:00:00", "qos": "high"},
        {"profile": "gpu\n#SBATCH --wrap=id", "keepvars": "ALL", "srun": "id;", "epilogue": "id"},
    ],
)
def test_user_options_change_neither_script_nor_argv(user_options):
    """Even if options ever got past the spawner's validation, the backend never reads them."""
    clean = submission(backend({"profile": "small"}), "small")
    crafted = submission(backend(user_options), "small")
    assert crafted == clean
    argv, script = crafted
    for value in ("--wrap=id", "gpu", "99:00:00", "high", "id;"):
        assert value not in script
        assert not any(value in a for a in argv if not a.startswith("--partition=small"))


def test_argv_carries_the_tier_resources():
    argv, script = submission(backend(), "gpu")
    assert argv[:2] == ["sbatch", "--parsable"]
    for expected in ("--cpus-per-task=4", "--mem=16384M", "--gres=gpu:1", "--partition=gpu", "--qos=gpu",
                     "--chdir=/vol/alice", "--output=/spool/alice/slurm-%j.log", "--export=ALL"):  # fmt: skip
        assert expected in argv
    assert not any(a.startswith("--time") for a in argv)
    assert "#SBATCH --exclusive=user" in script.splitlines()


def test_operator_defaults_and_tier_override():
    cfg = Config()
    cfg.SlurmBackend.account = "ds-team"
    cfg.SlurmBackend.time = "1:00:00"
    cfg.SlurmBackend.sbatch_lines = ["#SBATCH --signal=B:TERM@60"]
    argv, script = submission(backend(config=cfg), "small")
    assert "--account=ds-team" in argv and "--time=8:00:00" in argv  # the tier's time wins
    assert "#SBATCH --signal=B:TERM@60" in script


def test_command_is_quoted_in_the_script(tmp_path):
    b = backend()
    cmd = ["/bin/echo", "a b", "$(touch pwned)", "`id`", "'; id; '"]
    script = b.script(tier("small"), cmd, "/spool/alice")
    last = script.strip().splitlines()[-1]
    assert last.startswith("exec ")
    words = shlex.split(last)[1:]
    assert words[words.index("--") + 1 :] == cmd
    # and bash agrees: the exec line runs exactly that argv
    probe = script.replace(last, "printf '%s\\n' " + last[len("exec ") :])
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, cwd=tmp_path).stdout
    assert out.splitlines()[-len(cmd) :] == cmd
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "slug, word", [("bad-key", "options"), ("bad-value", "partition"), ("bad-line", "sbatch")]
)
def test_broken_operator_config_is_refused(slug, word):
    with pytest.raises(BackendError) as e:
        submission(backend(), slug)
    assert word in e.value.message and slug in e.value.message


def test_job_env_drops_what_sbatch_reads_as_options(monkeypatch):
    server_env = {
        "SBATCH_PARTITION": "gpu",
        "SLURM_JOB_ID": "1",
        "SLURM_CONF": "/x",
        "HOME": "/vol",
        "X": "y",
    }
    monkeypatch.delenv("SLURM_CONF", raising=False)
    assert SlurmBackend.job_env(server_env) == {"HOME": "/vol", "X": "y"}
    # the hub's own SLURM_CONF (where sbatch finds the cluster) is kept
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm-test/slurm.conf")
    assert SlurmBackend.job_env(server_env)["SLURM_CONF"] == "/etc/slurm-test/slurm.conf"


def test_bind_is_a_placeholder_and_host_is_shared_fs():
    b = backend()
    assert b.bind() == ("0.0.0.0", 0)
    host = asyncio.run(b.prepare(tier("gpu")))
    assert host.kind == "shared-fs" and host.id == "slurm:gpu"


# -- reading Slurm's answer (batchspawner's rules) --------------------------------------


class FixedPoller:
    def __init__(self, answer):
        self.answer = answer

    async def get(self, job_id, max_age=None):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def track(self, job_id):
        pass


@pytest.mark.parametrize(
    "answer, status, logged",
    [
        (JobInfo("7", "PENDING", "", "Priority"), None, None),
        (JobInfo("7", "CONFIGURING", "n1", "None"), None, None),
        (JobInfo("7", "RUNNING", "n1", "None"), None, None),
        (JobInfo("7", "COMPLETING", "n1", "None"), None, None),
        (SqueueUnavailable("Unable to contact slurm controller"), None, None),
        (JobInfo("7", "TIMEOUT", "n1", "None"), 1, "ended: it reached its time limit"),
        (JobInfo("7", "PREEMPTED", "n1", "None"), 1, "ended: it was preempted"),
        (JobInfo("7", "NODE_FAIL", "n1", "None"), 1, "ended: its node failed"),
        (JobInfo("7", "CANCELLED", "n1", "None"), 1, "ended: it was cancelled (scancel)"),
        (JobInfo("7", "COMPLETED", "n1", "None"), 0, "ended: the server exited"),
        (None, 1, "is gone: Slurm no longer knows the job"),
    ],
)
def test_poll(monkeypatch, caplog, answer, status, logged):
    b = backend()
    b.job_id = "7"
    monkeypatch.setattr(SlurmBackend, "poller", FixedPoller(answer))
    caplog.set_level("INFO")
    assert asyncio.run(b.poll()) == status
    if logged:
        assert f"Slurm job 7 {logged}" in caplog.text
        assert b.events.get_nowait().startswith("Slurm job 7 ended: ")
        # logged once, not at every poll
        asyncio.run(b.poll())
        assert caplog.text.count(f"stopped: Slurm job 7 {logged}") == 1


def test_missing_batchspawner_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "batchspawner", None)
    with pytest.raises(ImportError, match=r"pip install jupyter-ds-compute\[slurm\]"):
        _batchspawner()


def test_importing_the_backend_imports_no_batchspawner():
    code = "import sys, jupyter_ds_compute.backends.slurm; assert 'batchspawner' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_state_round_trip():
    b = backend()
    b.job_id, b.host, b.port, b.workdir = "42", "n1", 4242, "/spool/alice"
    state = b.get_state()
    c = backend()
    c.load_state(state)
    assert (c.job_id, c.host, c.port, c.workdir) == ("42", "n1", 4242, "/spool/alice")
    assert "42" in c.poller.jobs
    c.poller.untrack("42")
    assert backend().get_state() == {}


# -- the shared poller -------------------------------------------------------------------


@pytest.fixture
def fake_squeue(tmp_path):
    """An squeue that logs its argv and answers for the jobs asked about."""
    calls = tmp_path / "calls"
    script = tmp_path / "squeue"
    script.write_text(
        textwrap.dedent(f"""\
            #!/bin/sh
            echo "$@" >> {calls}
            [ -e {tmp_path}/fail ] && {{ echo "slurm_load_jobs error: Unable to contact slurm controller" >&2; exit 1; }}
            for arg in "$@"; do
              case $arg in --jobs=*) ids=${{arg#--jobs=}} ;; esac
            done
            found=0
            for id in $(echo "$ids" | tr , ' '); do
              [ "$id" -lt 1000 ] && {{ echo "$id|RUNNING|node$id|None"; found=1; }}
            done
            [ $found = 1 ] || {{ echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; }}
            """)
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, calls


def ncalls(calls):
    return len(calls.read_text().splitlines()) if calls.exists() else 0


async def test_concurrent_polls_share_one_call(fake_squeue):
    script, calls = fake_squeue
    poller = SqueuePoller([str(script)], interval=60, jitter=0.2)
    ids = [str(i) for i in range(1, 201)]
    for i in ids:
        poller.track(i)
    results = await asyncio.gather(*(poller.get(i) for i in ids))
    assert ncalls(calls) == 1 and poller.calls == 1
    assert [r.host for r in results] == [f"node{i}" for i in ids]
    assert f"--jobs={','.join(ids)}" in calls.read_text()
    # cached: another round of polls asks nothing
    await asyncio.gather(*(poller.get(i) for i in ids))
    assert ncalls(calls) == 1
    # a starting server wants a fresh answer; a new job is never served stale
    await poller.get("1", max_age=0)
    await poller.get("999")
    assert ncalls(calls) == 3


async def test_expiry_with_jitter(fake_squeue):
    script, calls = fake_squeue
    poller = SqueuePoller([str(script)], interval=0.2, jitter=0.5)
    await poller.get("5")
    assert 0.1 <= poller._ttl <= 0.3
    await asyncio.sleep(0.35)
    await poller.get("5")
    assert ncalls(calls) == 2


async def test_unknown_jobs_and_failures(fake_squeue, tmp_path):
    script, calls = fake_squeue
    poller = SqueuePoller([str(script)], interval=60)
    assert await poller.get("5000") is None  # "Invalid job id": Slurm forgot it
    (tmp_path / "fail").touch()
    with pytest.raises(SqueueUnavailable, match="Unable to contact"):
        await poller.get("5", max_age=0)
    (tmp_path / "fail").unlink()
    assert (await poller.get("5", max_age=0)).state == "RUNNING"


def test_parse():
    out = "12|PENDING|(null)|Resources\n13|RUNNING|n7|None\nnoise\n"
    assert parse(out) == {
        "12": JobInfo("12", "PENDING", "", "Resources"),
        "13": JobInfo("13", "RUNNING", "n7", "None"),
    }


def test_shared_is_one_instance_per_command():
    a = SqueuePoller.shared(("squeue-test",), interval=3.0)
    b = SqueuePoller.shared(("squeue-test",), interval=5.0)
    assert a is b and a.interval == 5.0
    assert SqueuePoller.shared(("other-squeue",)) is not a


# -- the launcher on the node ----------------------------------------------------------------


def test_launcher_reports_port_and_rewrites_service_url(tmp_path):
    env = dict(os.environ, SLURM_JOB_ID="77", JUPYTERHUB_SERVICE_URL="http://0.0.0.0:0/user/alice/")
    out = subprocess.run(
        [sys.executable, "-m", "jupyter_ds_compute.backends.slurm_launch", "--port-dir", str(tmp_path),
         "--ip", "127.0.0.1", "--", "sh", "-c", "echo $JUPYTERHUB_SERVICE_URL"],  # fmt: skip
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    port = int((tmp_path / "job-77.port").read_text())
    assert out == f"http://127.0.0.1:{port}/user/alice/"


# -- make before break: the prepared job and its start file -----------------------------------


@pytest.mark.parametrize("user", ["alice", "bob-with-a-long-name", "Ünïcode"])
@pytest.mark.parametrize("user_options", [None, {"profile": "gpu", "partition": "small", "cmd": ["id"]}])
def test_prepared_script_carries_no_user_value(user, user_options):
    b = backend(user_options=user_options, user=user)
    script = b.prepared_script(tier("gpu"))
    # the same script for every user: operator config only (the spool dir is in the job's env)
    assert script == backend().prepared_script(tier("gpu"))
    assert user not in script and "alice" not in script and b._workdir() not in script
    last = shlex.split(script.strip().splitlines()[-1])
    assert last == ["exec", "/venv/bin/python", "-m", "jupyter_ds_compute.backends.slurm_launch",
                    "--wait-start", "--timeout", "900", "--ip", "0.0.0.0"]  # fmt: skip
    assert "#SBATCH --exclusive=user" in script  # the tier's operator lines, as for a start


def test_prepared_timeout_zero_does_not_prepare():
    from jupyter_ds_compute.backends.base import PrepareUnsupported

    cfg = Config()
    cfg.SlurmBackend.prepared_timeout = 0
    with pytest.raises(PrepareUnsupported):
        asyncio.run(backend(config=cfg).prepare_ahead(tier("small"), CMD, {}, "/vol/alice", "alice/k"))


def _start():
    return {"argv": ["/venv/bin/jupyterhub-singleuser"], "env": {"JUPYTERHUB_API_TOKEN": "s3cret"},
            "exported": {"PATH": "/usr/bin"}, "cwd": "/vol/alice"}  # fmt: skip


def test_start_file_is_private_and_complete(tmp_path):
    from jupyter_ds_compute.backends.slurm import write_start_file

    workdir = tmp_path / "alice"
    workdir.mkdir(mode=0o700)
    old = os.umask(0)
    try:
        path = write_start_file(str(workdir), "42", _start())
    finally:
        os.umask(old)
    assert path == str(workdir / "job-42.start")
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and stat.S_ISREG(st.st_mode)
    assert json.loads(open(path).read()) == _start()
    assert os.listdir(workdir) == ["job-42.start"]  # no temporary left
    # written again (a second start of the same job id): replaced
    write_start_file(str(workdir), "42", dict(_start(), cwd="/elsewhere"))
    assert json.loads(open(path).read())["cwd"] == "/elsewhere"


def test_start_file_appears_only_whole(tmp_path, monkeypatch):
    from jupyter_ds_compute.backends import slurm

    final = tmp_path / "job-7.start"
    seen = []
    real_replace = os.replace

    def replace(src, dst, **kw):
        # at the rename the final name does not exist yet and the temporary is complete
        fd = os.open(src, os.O_RDONLY, dir_fd=kw["src_dir_fd"])
        seen.append((final.exists(), json.loads(os.read(fd, 1 << 20))))
        os.close(fd)
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(slurm.os, "replace", replace)
    slurm.write_start_file(str(tmp_path), "7", _start())
    assert seen == [(False, _start())]
    # a failed write leaves nothing: no final file, no temporary
    monkeypatch.setattr(slurm.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        slurm.write_start_file(str(tmp_path), "8", _start())
    assert sorted(os.listdir(tmp_path)) == ["job-7.start"]


def test_start_file_does_not_follow_links(tmp_path):
    from jupyter_ds_compute.backends.slurm import write_start_file

    outside = tmp_path / "outside"
    outside.write_text("untouched")
    workdir = tmp_path / "spool"
    workdir.mkdir()
    (workdir / "job-5.start").symlink_to(outside)  # the user owns the directory: they could
    write_start_file(str(workdir), "5", _start())
    assert outside.read_text() == "untouched"
    assert not os.path.islink(workdir / "job-5.start")
    # nor a directory that is a link
    (tmp_path / "link").symlink_to(workdir)
    with pytest.raises(OSError):
        write_start_file(str(tmp_path / "link"), "6", _start())
    with pytest.raises(ValueError):
        write_start_file(str(workdir), "6; id", _start())


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another account needs root")
def test_start_file_belongs_to_the_user(tmp_path):
    from jupyter_ds_compute.backends.slurm import write_start_file

    path = write_start_file(str(tmp_path), "9", _start(), uid=65534, gid=65534)
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o600)


def test_start_env_keeps_what_the_job_set():
    from jupyter_ds_compute.backends.slurm_launch import start_env

    exported = {"PATH": "/usr/bin", "DS_COMPUTE_STARTED_AT": "1", "OLD_ONLY": "x"}
    current = dict(exported, PATH="/opt/cuda/bin:/usr/bin", SLURM_JOB_ID="42", CUDA_VISIBLE_DEVICES="0")
    start = {"env": {"PATH": "/usr/bin", "DS_COMPUTE_STARTED_AT": "2", "JUPYTERHUB_API_TOKEN": "t"},
             "exported": exported}  # fmt: skip
    assert start_env(start, current) == {
        "PATH": "/opt/cuda/bin:/usr/bin",  # the prologue's (module load), as in a start
        "DS_COMPUTE_STARTED_AT": "2",  # the start's
        "JUPYTERHUB_API_TOKEN": "t",
        "SLURM_JOB_ID": "42",  # Slurm's
        "CUDA_VISIBLE_DEVICES": "0",
    }  # OLD_ONLY: exported at prepare time only, gone


def test_waiting_launcher_takes_the_start_file(tmp_path):
    from jupyter_ds_compute.backends.slurm import write_start_file

    env = dict(os.environ, SLURM_JOB_ID="78", DS_COMPUTE_SLURM_DIR=str(tmp_path), OLD="prepare-time")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_ds_compute.backends.slurm_launch", "--wait-start",
         "--timeout", "30", "--ip", "127.0.0.1"],  # fmt: skip
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path),
    )  # fmt: skip
    waiting = tmp_path / "job-78.waiting"
    deadline = time.monotonic() + 20
    while not waiting.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert waiting.exists() and proc.poll() is None
    vol = tmp_path / "vol"
    vol.mkdir()
    script = (
        "import os; e = os.environ; "
        "print(os.getcwd(), e.get('OLD'), e['TOKEN'], e['SLURM_JOB_ID'], e['JUPYTERHUB_SERVICE_URL'])"
    )
    start = {"argv": [sys.executable, "-c", script],
             "env": {"TOKEN": "s3cret", "PATH": os.environ["PATH"],
                     "JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:0/u/"},
             "exported": {k: v for k, v in env.items() if k != "SLURM_JOB_ID"}, "cwd": str(vol)}  # fmt: skip
    write_start_file(str(tmp_path), "78", start)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    port = int((tmp_path / "job-78.port").read_text())
    assert out.split() == [str(vol), "None", "s3cret", "78", f"http://127.0.0.1:{port}/u/"]
    # the token is on disk no longer than the launcher needs it
    assert not (tmp_path / "job-78.start").exists() and not waiting.exists()


def test_waiting_launcher_exits_by_itself(tmp_path):
    env = dict(os.environ, SLURM_JOB_ID="79", DS_COMPUTE_SLURM_DIR=str(tmp_path))
    r = subprocess.run(
        [sys.executable, "-m", "jupyter_ds_compute.backends.slurm_launch", "--wait-start",
         "--timeout", "0.3"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0 and "not started within" in r.stderr
    assert os.listdir(tmp_path) == []


def test_prepared_script_preloads_a_python_server(tmp_path):
    server = tmp_path / "my-singleuser"
    server.write_text(f"#!{sys.executable}\nprint('server')\n")
    server.chmod(0o755)
    cfg = Config()
    cfg.SlurmBackend.python = sys.executable
    b = backend(config=cfg)
    b.python = sys.executable
    words = shlex.split(
        b.prepared_script(tier("small"), [str(server), "--debug"], "/usr/bin").splitlines()[-1]
    )
    assert words[words.index("--script") + 1] == str(server)
    assert "jupyterhub.singleuser" in words[words.index("--preload") + 1].split(",")
    # not a Python script (or another interpreter's): the launcher execs it, nothing preloaded
    assert "--script" not in b.prepared_script(tier("small"), ["/bin/sh"], "/usr/bin")
    assert "--script" not in backend().prepared_script(tier("small"), [str(server)], "/usr/bin")


@pytest.mark.parametrize("same_program", [True, False])
def test_waiting_launcher_runs_the_preloaded_server_in_process(tmp_path, same_program):
    from jupyter_ds_compute.backends.slurm import write_start_file

    server = tmp_path / "server"
    server.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        "print(os.getpid(), 'xml.dom.minidom' in sys.modules, sys.argv[1:], os.environ['TOKEN'])\n"
    )
    server.chmod(0o755)
    env = dict(os.environ, SLURM_JOB_ID="80", DS_COMPUTE_SLURM_DIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_ds_compute.backends.slurm_launch", "--wait-start", "--timeout", "30",
         "--ip", "127.0.0.1", "--script", str(server), "--preload", "xml.dom.minidom,no_such_module_x"],  # fmt: skip
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path),
    )  # fmt: skip
    waiting = tmp_path / "job-80.waiting"
    deadline = time.monotonic() + 20
    while not waiting.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    status = json.loads(waiting.read_text())
    assert status["pid"] == proc.pid and status["failed"][0].startswith("no_such_module_x: ")
    argv = [str(server) if same_program else sys.executable, *([] if same_program else [str(server)]), "--x"]
    # the start's variables read at import time are those the job preloaded with (else: exec'd)
    server_env = {k: v for k, v in env.items() if k.startswith(("PYTHON", "LD_", "JUPYTERHUB_SINGLEUSER_"))}
    server_env.update(TOKEN="t", PATH=os.environ["PATH"])
    start = {"argv": argv, "env": server_env, "exported": env, "cwd": str(tmp_path)}
    write_start_file(str(tmp_path), "80", start)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    pid, preloaded, args, token = out.split(maxsplit=3)
    # in this process with the modules already imported; another program is exec'd (fresh imports)
    assert preloaded == str(same_program)
    if same_program:
        assert int(pid) == proc.pid
    assert eval(args) == ["--x"] and token.strip() == "t"


async def test_release_while_sbatch_runs_cancels_the_job_it_submitted(tmp_path):
    """A switch given up while the prepared job's sbatch runs: stop() waits for
    the job id and scancels that job (nothing is left queued)."""
    calls = tmp_path / "calls"
    sbatch = tmp_path / "sbatch"
    sbatch.write_text(f"#!/bin/sh\ncat >/dev/null\necho sbatch >>{calls}\nsleep 1\necho 4242\n")
    scancel = tmp_path / "scancel"
    scancel.write_text(f'#!/bin/sh\necho "scancel $*" >>{calls}\n')
    for f in (sbatch, scancel):
        f.chmod(0o755)
    cfg = Config()
    cfg.SlurmBackend.sbatch = [str(sbatch)]
    cfg.SlurmBackend.scancel = [str(scancel)]
    cfg.SlurmBackend.squeue = ["true"]
    cfg.SlurmBackend.spool_dir = str(tmp_path / "spool")
    b = backend(config=cfg)
    (tmp_path / "vol").mkdir()
    task = asyncio.ensure_future(b.prepare_ahead(tier("small"), CMD, {}, str(tmp_path / "vol"), "alice/k"))
    while not calls.exists():
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await b.stop(now=True)
    assert calls.read_text().split("\n")[:2] == ["sbatch", "scancel 4242"]
    assert b.job_id == "" and b.get_state() == {}
    # the spool dir is the user's alone (the start file will carry a token)
    assert stat.S_IMODE(os.stat(b._workdir()).st_mode) == 0o700
