"""A real JupyterHub for tests: the repo's ``jupyterhub_config.py`` with test
overrides, a real proxy and real single-user servers, on 127.0.0.1.

Tests talk to it over HTTP like any client: an admin token (a test service
with an admin role) for the REST API, and logged-in ``requests`` sessions for
pages.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
HUB_CONFIG = REPO / "jupyterhub_config.py"
VENV_BIN = Path(sys.executable).parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fatal(RuntimeError):
    """Raised by a predicate to stop waiting at once."""


def wait_for(predicate, timeout=60, interval=0.1, message="condition"):
    """Poll ``predicate`` until it returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Fatal:
            raise
        except Exception as e:  # noqa: BLE001 - keep polling, report at the end
            last_exc = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {message} (last error: {last_exc!r})")


class Hub:
    """One JupyterHub process (plus its proxy and services)."""

    def __init__(
        self,
        workdir: Path,
        extra_config: str = "",
        env: dict | None = None,
        config_file: Path | None = None,
        args=(),
        base_path: str = "",
    ):
        """``config_file``: the hub's ``-f`` (default: the embedded
        ``jupyterhub_config.py``); ``args``: more command-line arguments;
        ``base_path``: the hub's ``base_url`` without the trailing slash
        (e.g. ``/ops``), when the config sets one."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        blocked = [p for p in self.workdir.parents if not os.stat(p).st_mode & 0o001]
        if os.geteuid() == 0 and blocked:
            raise RuntimeError(f"{blocked[0]} must be traversable by servers' system users")
        self.data = self.workdir / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{base_path}"
        self.config_file = Path(config_file or HUB_CONFIG)
        self.args = list(args)
        self.admin_token = secrets.token_hex(16)
        self.password = "test-password-" + secrets.token_hex(4)
        self.admin_password = secrets.token_hex(20)
        self.log_path = self.workdir / "hub.log"
        self.env = dict(os.environ)
        self.env.update(
            DS_COMPUTE_DATA=str(self.data),
            DS_COMPUTE_BIND_URL=self.url + "/",
            DS_COMPUTE_HUB_PORT=str(free_port()),
            DS_COMPUTE_PROXY_API_PORT=str(free_port()),
            DS_COMPUTE_SERVICE_PORT=str(free_port()),
            DS_COMPUTE_PASSWORD=self.password,
            DS_COMPUTE_ADMIN_PASSWORD=self.admin_password,
            DS_COMPUTE_TEST_ADMIN_TOKEN=self.admin_token,
            DS_COMPUTE_EXTRA_CONFIG=str(self.workdir / "test_config.py"),
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        self.env.update(env or {})
        #: the ds-compute service's port (the embedded config, and a
        #: ``config_file`` of a test that reads ``DS_COMPUTE_SERVICE_PORT``)
        self.service_port = int(self.env["DS_COMPUTE_SERVICE_PORT"])
        self.extra_config = extra_config
        self.proc = None

    # -- lifecycle ---------------------------------------------------------

    def write_config(self):
        base = textwrap.dedent(
            """
            import os
            c.JupyterHub.services = [{
                "name": "test-admin",
                "api_token": os.environ["DS_COMPUTE_TEST_ADMIN_TOKEN"],
            }]
            c.JupyterHub.load_roles = [{
                "name": "test-admin",
                "scopes": ["admin:users", "admin:servers", "admin:groups", "tokens", "access:servers",
                           "access:services", "read:hub", "proxy", "shares"],
                "services": ["test-admin"],
            }]
            c.JupyterHub.log_level = "DEBUG"
            c.Spawner.debug = False
            """
        )
        (self.workdir / "test_config.py").write_text(base + textwrap.dedent(self.extra_config))

    def start(self, timeout=60):
        self.write_config()
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "jupyterhub"), "-f", str(self.config_file), *self.args],
            cwd=self.workdir,
            env=self.env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logf.close()

        def up():
            if self.proc.poll() is not None:
                raise Fatal(f"hub exited with {self.proc.returncode}:\n{self.log_tail()}")
            return requests.get(f"{self.url}/hub/health", timeout=2).status_code == 200

        try:
            wait_for(up, timeout=timeout, message="hub /hub/health")

            def service_up():
                if self.proc.poll() is not None:
                    raise Fatal(f"hub exited with {self.proc.returncode}:\n{self.log_tail()}")
                return requests.get(f"{self.url}/services/ds-compute/api/health", timeout=2).ok

            # the hub answers before its managed service does (JupyterHub starts it, waits
            # for it, then routes it); a machine busy with the previous module's teardown
            # has been seen to need more than a minute for that
            wait_for(service_up, timeout=max(timeout, 180), interval=0.5, message="ds-compute service health")
        except Exception:
            print(self.log_tail(200), file=sys.stderr)
            self.stop(servers=False)
            raise
        return self

    def stop(self, servers=True):
        """Stop the hub; with ``servers``, stop every user's server first."""
        if self.proc is None:
            return
        if servers and self.proc.poll() is None:
            try:
                for user in self.users():
                    for name in user.get("servers") or {}:
                        self.stop_server(user["name"], name, wait=True)
            except Exception as e:  # noqa: BLE001 - teardown goes on
                print(f"stopping servers failed: {e!r}", file=sys.stderr)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._kill_proxy()
        self.proc = None

    def _kill_proxy(self):
        # the embedded config's pid file, else JupyterHub's default in the cwd
        for pidfile in (self.data / "proxy.pid", self.workdir / "jupyterhub-proxy.pid"):
            try:
                pid = int(pidfile.read_text())
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError):
                pass

    def restart(self):
        """Restart the hub process only; servers keep running."""
        self.stop(servers=False)
        return self.start()

    def log_tail(self, n=80):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -- REST API ------------------------------------------------------------

    def api(self, method, path, token=None, **kwargs):
        headers = kwargs.pop("headers", {})
        headers["Authorization"] = f"token {token or self.admin_token}"
        kwargs.setdefault("timeout", 30)
        return requests.request(method, f"{self.url}/hub/api{path}", headers=headers, **kwargs)

    def users(self, **params):
        """Every user model: ``GET /users`` read as jupyterhub-idle-culler reads
        it (the pagination media type, then ``_pagination.next`` until null),
        whatever ``c.JupyterHub.api_page_max_limit`` is."""
        headers = {"Accept": "application/jupyterhub-pagination+json"}
        params = dict(params, offset=0)
        found = []
        while True:
            r = self.api("GET", "/users", params=params, headers=dict(headers))
            r.raise_for_status()
            body = r.json()
            if isinstance(body, list):  # a hub that does not paginate
                return found + body
            found.extend(body["items"])
            following = (body.get("_pagination") or {}).get("next")
            if not following:
                return found
            params.update(offset=following["offset"], limit=following["limit"])

    def create_user(self, name, admin=False, groups=()):
        r = self.api("POST", f"/users/{name}")
        assert r.status_code in (201, 409), r.text
        if admin:
            self.api("PATCH", f"/users/{name}", json={"admin": True}).raise_for_status()
        for g in groups:
            self.api("POST", f"/groups/{g}")
            self.api("POST", f"/groups/{g}/users", json={"users": [name]}).raise_for_status()
        return name

    def user_token(self, name, scopes=None):
        body = {"note": "test"}
        if scopes is not None:
            body["scopes"] = scopes
        r = self.api("POST", f"/users/{name}/tokens", json=body)
        r.raise_for_status()
        return r.json()["token"]

    def server_model(self, user, server_name=""):
        model = self.api("GET", f"/users/{user}").json()
        return model.get("servers", {}).get(server_name)

    def spawn(self, user, options=None, server_name="", wait=True, timeout=120):
        """POST the server; with ``wait``, return the model once ready."""
        path = f"/users/{user}/servers/{server_name}" if server_name else f"/users/{user}/server"
        r = self.api("POST", path, json=options if options is not None else {})
        if not wait:
            return r
        if r.status_code >= 400:
            raise AssertionError(f"spawn of {user} failed: {r.status_code} {r.text}\n{self.log_tail(40)}")
        return self.wait_ready(user, server_name, timeout=timeout)

    def wait_ready(self, user, server_name="", timeout=120):
        def ready():
            m = self.server_model(user, server_name)
            if m is None:
                raise Fatal(f"server of {user} vanished:\n{self.log_tail()}")
            return m if m.get("ready") else None

        return wait_for(ready, timeout=timeout, interval=0.2, message=f"{user}'s server ready")

    def stop_server(self, user, server_name="", wait=True, timeout=60):
        path = f"/users/{user}/servers/{server_name}" if server_name else f"/users/{user}/server"
        r = self.api("DELETE", path)
        if wait:
            wait_for(
                lambda: self.server_model(user, server_name) is None,
                timeout=timeout,
                interval=0.2,
                message=f"{user}'s server stopped",
            )
        return r

    # -- the ds-compute service ------------------------------------------------

    def service(self, method, path, token, **kwargs):
        """Call the ds-compute service (``/services/ds-compute/<path>``) with ``token``."""
        headers = kwargs.pop("headers", {})
        headers["Authorization"] = f"token {token}"
        kwargs.setdefault("timeout", 30)
        return requests.request(method, f"{self.url}/services/ds-compute/{path}", headers=headers, **kwargs)

    def service_health(self):
        return requests.get(f"{self.url}/services/ds-compute/api/health", timeout=2).json() == {"ok": True}

    def wait_switch(self, switch_id, token, timeout=150):
        """The switch record once it is final (succeeded, rolled_back, failed)."""

        def final():
            rec = self.service("GET", f"api/switches/{switch_id}", token).json()
            return rec if rec.get("state") in ("succeeded", "rolled_back", "failed") else None

        return wait_for(final, timeout, interval=0.3, message=f"switch {switch_id} final")

    def service_pid(self):
        """The pid of this hub's running ds-compute service process (by its port), or None."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                if b"jupyter_ds_compute.service" not in cmd:
                    continue
                env = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if f"JUPYTERHUB_SERVICE_URL=http://127.0.0.1:{self.service_port}\0".encode() in env:
                return int(entry)
        return None

    # -- single-user servers ---------------------------------------------------

    def server_api(self, user, path, token, method="GET", server_name="", **kwargs):
        """Call a user's single-user server through the proxy."""
        prefix = f"/user/{user}/{server_name + '/' if server_name else ''}"
        headers = kwargs.pop("headers", {})
        headers["Authorization"] = f"token {token}"
        kwargs.setdefault("timeout", 30)
        return requests.request(method, f"{self.url}{prefix}{path.lstrip('/')}", headers=headers, **kwargs)

    def login(self, user, password=None):
        """A ``requests.Session`` logged in to the hub as ``user``."""
        s = requests.Session()
        r = s.get(f"{self.url}/hub/login")
        xsrf = s.cookies.get("_xsrf")
        r = s.post(
            f"{self.url}/hub/login",
            data={"username": user, "password": password or self.password, "_xsrf": xsrf},
            allow_redirects=False,
        )
        assert r.status_code == 302, f"login failed: {r.status_code} {r.text[:300]}"
        return s
