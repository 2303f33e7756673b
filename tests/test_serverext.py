"""The ds_compute server extension's REST API (``/ds-compute/api/*``).

A real jupyter server (pytest-jupyter), real HTTP, auth required; the hub
service is a small tornado app on 127.0.0.1 started by the test.
"""

import json
import os
import socket
import time

import fakes
import pytest
from tornado.httpclient import HTTPClientError

from jupyter_ds_compute.serverext.context import ServerContext
from jupyter_ds_compute.serverext.kernelspecs import DSComputeKernelSpecManager
from jupyter_ds_compute.serverext.volume import check_notebook_dir

TIER_SMALL = {
    "slug": "small",
    "display_name": "Small",
    "description": "",
    "cpu": 1.0,
    "mem": 2**31,
    "gpu": 0,
    "hourly_cost": 2.0,
}
TIER_GPU = {
    "slug": "gpu",
    "display_name": "GPU",
    "description": "",
    "cpu": 8.0,
    "mem": 2**35,
    "gpu": 1,
    "hourly_cost": 3.5,
}
ENV_TIERS = [
    dict(TIER_SMALL, allowed=True, reason=None, default=True),
    dict(TIER_GPU, allowed=True, reason=None, default=False),
]


TokenUsers = fakes.TokenUsers


BUDGET_WARN = {
    "spent": 8.5,
    "budget": 10.0,
    "fraction": 0.85,
    "state": "warn",
    "kind": "user",
    "name": "alice",
    "period": "month",
    "period_start": "2024-05-01T00:00:00Z",
    "warn_fraction": 0.8,
    "user_spent": 8.5,
}
NOTICE = {
    "time": "2024-05-02T10:00:00.000000Z",
    "kind": "idle-downshift",
    "from_profile": "gpu",
    "to_profile": "small",
    "message": "Your server was moved to the default tier: idle for 1h00 on tier GPU: moved to Small",
}


def FakeService():
    """The service's api/tiers (live reasons), api/policy (a warned budget and a
    notice) and api/switches (202), recording calls."""
    return fakes.FakeService(
        tiers_reply=(200, {"tiers": [dict(t, reason="live") for t in ENV_TIERS]}),
        policy_reply=(200, {"budget": BUDGET_WARN, "notices": [NOTICE]}),
        switch_reply=(
            202,
            {"id": "sw1", "progress_url": "/services/ds-compute/switches/sw1?next=/user/alice/lab"},
        ),
    )


def closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/services/ds-compute/"


@pytest.fixture
def run(jp_asyncio_loop):
    """Run a coroutine on pytest-jupyter's loop (the one the server runs on).

    The tests are sync on purpose: pytest-asyncio (asyncio_mode=auto) would run
    ``async def`` tests on its own loop, where the server never answers.
    """
    return jp_asyncio_loop.run_until_complete


@pytest.fixture
def fake_service():
    fake = FakeService()
    yield fake
    fake.stop()


@pytest.fixture
def hub_env(monkeypatch, jp_root_dir, fake_service):
    """The environment the spawner gives a server of alice on tier small."""
    values = {
        "JUPYTERHUB_USER": "alice",
        "JUPYTERHUB_SERVER_NAME": "",
        "JUPYTERHUB_API_TOKEN": "server-token-of-alice",
        "DS_COMPUTE_TIER": "small",
        "DS_COMPUTE_TIER_INFO": json.dumps(TIER_SMALL),
        "DS_COMPUTE_TIERS": json.dumps(ENV_TIERS),
        "DS_COMPUTE_STARTED_AT": str(time.time() - 1800),
        "DS_COMPUTE_VOLUME_ID": "alice",
        "DS_COMPUTE_VOLUME_PATH": str(jp_root_dir),
        "DS_COMPUTE_VOLUME_DRIVER": "local",
        "DS_COMPUTE_BACKEND": "local",
        "DS_COMPUTE_SERVICE_URL": fake_service.url,
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


@pytest.fixture
def no_hub_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("JUPYTERHUB_", "DS_COMPUTE_")):
            monkeypatch.delenv(k)


def server_config(**extension):
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_ds_compute": True},
            "identity_provider_class": TokenUsers,
            "allow_unauthenticated_access": False,
        },
        "IdentityProvider": {"token": "alice-token"},
        "DSComputeExtension": extension,
    }


@pytest.fixture
def jp_server_config(hub_env):
    return server_config(service_timeout=1.0)


BOB = {"Authorization": "token bob-token"}


async def fetch_json(jp_fetch, *parts, **kw):
    resp = await jp_fetch("ds-compute", "api", *parts, **kw)
    return resp.code, json.loads(resp.body)


async def fetch_error(jp_fetch, *parts, **kw):
    with pytest.raises(HTTPClientError) as e:
        await jp_fetch("ds-compute", "api", *parts, **kw)
    body = e.value.response.body if e.value.response is not None else b"{}"
    return e.value.code, json.loads(body or b"{}")


# -- status ------------------------------------------------------------------
def test_status_under_hub(run, jp_fetch, jp_root_dir, monkeypatch, hub_env, fake_service):
    run(fake_service.start())
    (jp_root_dir / "data.bin").write_bytes(os.urandom(2**20))
    started = float(hub_env["DS_COMPUTE_STARTED_AT"])
    monkeypatch.setattr("jupyter_ds_compute.serverext.app.utcnow", lambda: started + 5400)
    code, st = run(fetch_json(jp_fetch, "status"))
    assert code == 200
    assert st["user"] == "alice" and st["server_name"] == "" and st["under_hub"] is True
    assert st["tier"] == TIER_SMALL
    assert st["seconds_on_tier"] == pytest.approx(5400)
    assert st["cost_so_far"] == pytest.approx(2.0 * 1.5)
    vol = st["volume"]
    assert vol["id"] == "alice" and vol["driver"] == "local" and vol["path"] == str(jp_root_dir)
    assert vol["is_notebook_dir"] is True and vol["warning"] is None
    # a plain directory volume: used = the directory's own size (walked in a thread)
    assert vol["usage_source"] == "directory"
    assert vol["used_bytes"] >= 2**20
    assert vol["size_bytes"] >= vol["used_bytes"]


def test_status_requires_auth(run, jp_fetch):
    code, _ = run(fetch_error(jp_fetch, "status", headers={"Authorization": "token wrong"}))
    assert code == 403


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("GET", "status", None),
        ("GET", "tiers", None),
        ("POST", "switch", {"profile": "gpu"}),
        ("GET", "switches/0123456789ab", None),
        ("GET", "envs", None),
    ],
)
def test_only_owner(run, jp_fetch, fake_service, method, path, body):
    run(fake_service.start())
    kw = {"method": method, "headers": BOB}
    if body is not None:
        kw["body"] = json.dumps(body)
    code, reply = run(fetch_error(jp_fetch, path, **kw))
    assert code == 403
    assert "owner" in reply["message"]
    assert fake_service.calls == []  # nothing reached the service


# -- budget and notices in status ---------------------------------------------
def test_status_budget_and_notices_from_service(run, jp_fetch, fake_service):
    run(fake_service.start())
    code, st = run(fetch_json(jp_fetch, "status"))
    assert code == 200
    assert st["budget"] == BUDGET_WARN  # the service's object, unchanged
    assert st["notices"] == [NOTICE]
    (call,) = fake_service.calls
    assert call["method"] == "GET" and call["path"] == "/services/ds-compute/api/policy"
    assert call["auth"] == "token server-token-of-alice"
    # cached: polling Lab does not hit the service every time
    code, st = run(fetch_json(jp_fetch, "status"))
    assert st["budget"]["state"] == "warn"
    assert len(fake_service.calls) == 1


def test_status_policy_cache_expires(run, jp_fetch, fake_service, jp_serverapp):
    run(fake_service.start())
    jp_serverapp.web_app.settings["ds_compute"].policy_cache_seconds = 0
    run(fetch_json(jp_fetch, "status"))
    fake_service.policy_reply = (
        200,
        {"budget": dict(BUDGET_WARN, state="spent", spent=10.0, fraction=1.0), "notices": []},
    )
    code, st = run(fetch_json(jp_fetch, "status"))
    assert st["budget"]["state"] == "spent" and st["notices"] == []
    assert [c["path"] for c in fake_service.calls] == ["/services/ds-compute/api/policy"] * 2


def test_status_without_service(run, jp_fetch, jp_serverapp):
    jp_serverapp.web_app.settings["ds_compute"].context.service_url = closed_port_url()
    code, st = run(fetch_json(jp_fetch, "status"))
    assert code == 200
    assert st["budget"] is None and st["notices"] == []
    assert st["tier"] == TIER_SMALL  # the rest of the status is there


def test_status_policy_is_bounded(run, jp_fetch, fake_service):
    run(fake_service.start())
    fake_service.delay = 5.0
    t0 = time.monotonic()
    code, st = run(fetch_json(jp_fetch, "status"))
    assert code == 200 and st["budget"] is None and st["notices"] == []
    assert time.monotonic() - t0 < 3.0  # service_timeout=1.0 in jp_server_config
    # the failure is cached too: the next status does not wait again
    t0 = time.monotonic()
    run(fetch_json(jp_fetch, "status"))
    assert time.monotonic() - t0 < 0.9


@pytest.mark.parametrize(
    "reply",
    [
        (500, {"message": "Internal error in the ds-compute service; see its log."}),
        (403, {"message": "Authentication required"}),
        (200, b"<html>not json</html>"),
        (200, {"budget": "lots", "notices": []}),
        (200, {"budget": None, "notices": {"not": "a list"}}),
    ],
)
def test_status_survives_bad_policy_answers(run, jp_fetch, fake_service, reply):
    run(fake_service.start())
    fake_service.policy_reply = reply
    code, st = run(fetch_json(jp_fetch, "status"))
    assert code == 200
    assert st["budget"] is None and st["notices"] == []


def test_status_policy_drops_bad_notices_and_non_json_numbers(run, jp_fetch, fake_service):
    run(fake_service.start())
    fake_service.policy_reply = (
        200,
        '{"budget": {"spent": 1.0, "budget": 0.0, "fraction": Infinity, "state": "spent"}, "notices": [5, {"kind": "x"}, %s]}'
        % json.dumps(NOTICE),
    )
    code, st = run(fetch_json(jp_fetch, "status"))
    assert st["budget"] == {"spent": 1.0, "budget": 0.0, "fraction": None, "state": "spent"}
    assert st["notices"] == [NOTICE]


def test_status_unlimited_budget(run, jp_fetch, fake_service):
    run(fake_service.start())
    unlimited = dict(BUDGET_WARN, budget=None, fraction=None, state="unlimited", spent=3.0)
    fake_service.policy_reply = (200, {"budget": unlimited, "notices": []})
    code, st = run(fetch_json(jp_fetch, "status"))
    assert st["budget"] == unlimited and st["notices"] == []


# -- tiers ---------------------------------------------------------------------
def test_tiers_from_service(run, jp_fetch, fake_service):
    run(fake_service.start())
    code, model = run(fetch_json(jp_fetch, "tiers"))
    assert code == 200
    assert model["source"] == "service" and model["warning"] is None
    assert model["current"] == "small"
    assert [(t["slug"], t["current"], t["reason"]) for t in model["tiers"]] == [
        ("small", True, "live"),
        ("gpu", False, "live"),
    ]
    (call,) = fake_service.calls
    assert call["method"] == "GET" and call["path"] == "/services/ds-compute/api/tiers"
    assert call["auth"] == "token server-token-of-alice"


def test_tiers_pass_cap_and_budget_refusals_unchanged(run, jp_fetch, fake_service):
    run(fake_service.start())
    capped = dict(
        TIER_GPU,
        slug="capped",
        display_name="Capped",
        allowed=False,
        policy="cap",
        default=False,
        reason="Capped tier full (1/1), try later or ask an admin",
        max_servers=1,
        idle_downshift_after=None,
    )
    pricey = dict(
        TIER_GPU,
        allowed=False,
        policy="budget",
        default=False,
        max_servers=None,
        idle_downshift_after=3600,
        reason="Your monthly budget is spent (10.00 of 10.00); GPU is not available until it renews",
    )
    small = dict(
        TIER_SMALL,
        allowed=True,
        reason=None,
        policy=None,
        default=True,
        max_servers=None,
        idle_downshift_after=None,
    )
    spent = dict(BUDGET_WARN, state="spent", spent=10.0, fraction=1.0)
    fake_service.tiers_reply = (200, {"tiers": [small, pricey, capped], "budget": spent, "notices": [NOTICE]})
    code, model = run(fetch_json(jp_fetch, "tiers"))
    assert code == 200 and model["source"] == "service"
    assert model["tiers"] == [
        dict(small, current=True),
        dict(pricey, current=False),
        dict(capped, current=False),
    ]
    assert model["budget"] == spent and model["notices"] == [NOTICE]
    # the fresher budget is what status shows next, without another call
    code, st = run(fetch_json(jp_fetch, "status"))
    assert st["budget"] == spent
    assert [c["path"] for c in fake_service.calls] == ["/services/ds-compute/api/tiers"]


def test_tiers_fallback_when_service_down(run, jp_fetch, jp_serverapp):
    jp_serverapp.web_app.settings["ds_compute"].context.service_url = closed_port_url()
    code, model = run(fetch_json(jp_fetch, "tiers"))
    assert code == 200
    assert model["source"] == "environment"
    assert "did not answer" in model["warning"]
    assert [(t["slug"], t["current"]) for t in model["tiers"]] == [("small", True), ("gpu", False)]


def test_tiers_fallback_is_bounded(run, jp_fetch, fake_service):
    run(fake_service.start())
    fake_service.delay = 5.0
    t0 = time.monotonic()
    code, model = run(fetch_json(jp_fetch, "tiers"))
    elapsed = time.monotonic() - t0
    assert code == 200 and model["source"] == "environment"
    assert elapsed < 3.0  # service_timeout=1.0 in jp_server_config


# -- switch ------------------------------------------------------------------------
def test_switch_forwards_to_service(run, jp_fetch, fake_service):
    run(fake_service.start())
    body = {
        "profile": "gpu",
        "profile-option-gpu--image": "torch",
        "next": "/user/alice/lab/tree/a.ipynb",
        "server_name": "other",
        "user": "bob",
    }
    code, reply = run(fetch_json(jp_fetch, "switch", method="POST", body=json.dumps(body)))
    assert code == 202
    assert reply == fake_service.switch_reply[1]  # the service's body, unchanged
    (call,) = fake_service.calls
    assert call["method"] == "POST" and call["path"] == "/services/ds-compute/api/switches"
    assert call["auth"] == "token server-token-of-alice"
    # this server's name, never the caller's; no "user" (only admins may name one, not through a server)
    assert call["body"] == {
        "profile": "gpu",
        "profile-option-gpu--image": "torch",
        "next": "/user/alice/lab/tree/a.ipynb",
        "server_name": "",
    }


def test_switch_default_next(run, jp_fetch, fake_service, jp_base_url):
    run(fake_service.start())
    run(fetch_json(jp_fetch, "switch", method="POST", body=json.dumps({"profile": "gpu"})))
    assert fake_service.calls[0]["body"]["next"] == jp_base_url.rstrip("/") + "/lab"


@pytest.mark.parametrize(
    "reply",
    [
        (409, {"message": "a switch of this server is in flight", "id": "sw0"}),
        (400, {"message": "No such tier: huge. Options include: small, gpu", "field": "profile"}),
        (403, {"message": "you may not use gpu"}),
    ],
)
def test_switch_passes_service_errors_through(run, jp_fetch, fake_service, reply):
    run(fake_service.start())
    fake_service.switch_reply = reply
    code, body = run(fetch_error(jp_fetch, "switch", method="POST", body=json.dumps({"profile": "gpu"})))
    assert (code, body) == reply


def test_switch_service_unreachable(run, jp_fetch, jp_serverapp):
    url = closed_port_url()
    jp_serverapp.web_app.settings["ds_compute"].context.service_url = url
    code, body = run(fetch_error(jp_fetch, "switch", method="POST", body=json.dumps({"profile": "gpu"})))
    assert code == 502
    assert "could not reach the ds-compute service" in body["message"] and url in body["message"]


@pytest.mark.parametrize(
    "raw,field",
    [
        (b"not json", None),
        (b"[1, 2]", None),
        (b"{}", "profile"),
        (b'{"profile": 3}', "profile"),
        (b'{"profile": ""}', "profile"),
        (b'{"profile": "gpu", "next": 5}', "next"),
    ],
)
def test_switch_bad_body(run, jp_fetch, fake_service, raw, field):
    run(fake_service.start())
    code, body = run(fetch_error(jp_fetch, "switch", method="POST", body=raw))
    assert code == 400
    assert body["field"] == field
    if field:
        assert field in body["message"]
    assert fake_service.calls == []


# -- one switch's record (Lab follows the prepare phase with it) ---------------------------
SWITCH_ID = "0123456789ab"
RECORD = {
    "id": SWITCH_ID,
    "user": "alice",
    "server_name": "",
    "from_profile": "small",
    "to_profile": "gpu",
    "state": "running",
    "phase": "preparing",
    "estimate": {"prepare": 4.2, "cutover": 3.0, "samples": 5},
    "steps": [
        {"name": "validate", "status": "done", "started": None, "finished": None, "message": ""},
        {"name": "prepare", "status": "running", "started": None, "finished": None, "message": ""},
    ],
    "error": None,
    "now": "2024-05-02T10:00:00.000000Z",
}


def test_switch_record_forwards_to_service(run, jp_fetch, fake_service):
    run(fake_service.start())
    fake_service.switch_reply = (200, RECORD)
    code, reply = run(fetch_json(jp_fetch, "switches", SWITCH_ID))
    assert code == 200
    assert reply == RECORD  # the service's record, unchanged
    (call,) = fake_service.calls
    assert call["method"] == "GET" and call["path"] == f"/services/ds-compute/api/switches/{SWITCH_ID}"
    assert call["auth"] == "token server-token-of-alice"


@pytest.mark.parametrize(
    "bad_id",
    ["sw1", "0123456789AB", "0123456789abc", "0123456789a", "0123456789a-", "..%2F..%2Fapi%2Ftiers", "a/b"],
)
def test_switch_record_bad_id(run, jp_fetch, fake_service, bad_id):
    run(fake_service.start())
    code, body = run(fetch_error(jp_fetch, "switches", bad_id))
    assert code == 400
    assert body["field"] == "id" and "id" in body["message"]
    assert fake_service.calls == []


@pytest.mark.parametrize(
    "reply,message",
    [
        ((404, {"message": "No such switch"}), "No such switch"),
        ((404, b"<html>Not Found</html>"), "non-JSON"),
        ((404, {}), f"no switch {SWITCH_ID}"),
    ],
)
def test_switch_record_404_passed_through(run, jp_fetch, fake_service, reply, message):
    run(fake_service.start())
    fake_service.switch_reply = reply
    code, body = run(fetch_error(jp_fetch, "switches", SWITCH_ID))
    assert code == 404
    assert message in body["message"]


@pytest.mark.parametrize(
    "reply",
    [
        (500, {"message": "Internal error in the ds-compute service; see its log."}),
        (502, b"Bad Gateway"),
        (200, b"<html>not json</html>"),
        (200, [1, 2]),
        (200, {"message": "no id here"}),
    ],
)
def test_switch_record_bad_service_answer_is_502(run, jp_fetch, fake_service, reply):
    run(fake_service.start())
    fake_service.switch_reply = reply
    code, body = run(fetch_error(jp_fetch, "switches", SWITCH_ID))
    assert code == 502
    assert SWITCH_ID in body["message"]


def test_switch_record_service_unreachable(run, jp_fetch, jp_serverapp):
    url = closed_port_url()
    jp_serverapp.web_app.settings["ds_compute"].context.service_url = url
    code, body = run(fetch_error(jp_fetch, "switches", SWITCH_ID))
    assert code == 502
    assert "could not reach the ds-compute service" in body["message"] and url in body["message"]


def test_switch_record_is_bounded(run, jp_fetch, fake_service):
    run(fake_service.start())
    fake_service.switch_reply = (200, RECORD)
    fake_service.delay = 5.0
    t0 = time.monotonic()
    code, body = run(fetch_error(jp_fetch, "switches", SWITCH_ID))
    assert code == 502 and "could not reach" in body["message"]
    assert time.monotonic() - t0 < 3.0  # service_timeout=1.0 in jp_server_config


# -- go: Lab saved the open documents of a held switch, cut over now -----------------------
def test_switch_go_forwards_to_service(run, jp_fetch, fake_service):
    run(fake_service.start())
    fake_service.switch_reply = (204, b"")
    resp = run(jp_fetch("ds-compute", "api", "switches", SWITCH_ID, "go", method="POST", body=b""))
    assert resp.code == 204 and resp.body == b""
    (call,) = fake_service.calls
    assert call["method"] == "POST" and call["path"] == f"/services/ds-compute/api/switches/{SWITCH_ID}/go"
    assert call["auth"] == "token server-token-of-alice"


def test_switch_hold_cutover_forwarded(run, jp_fetch, fake_service):
    run(fake_service.start())
    body = {"profile": "gpu", "hold_cutover": True}
    code, _ = run(fetch_json(jp_fetch, "switch", method="POST", body=json.dumps(body)))
    assert code == 202
    assert fake_service.calls[0]["body"]["hold_cutover"] is True


@pytest.mark.parametrize("value", ["yes", 1, None, {}])
def test_switch_hold_cutover_must_be_boolean(run, jp_fetch, fake_service, value):
    run(fake_service.start())
    body = {"profile": "gpu", "hold_cutover": value}
    code, reply = run(fetch_error(jp_fetch, "switch", method="POST", body=json.dumps(body)))
    assert code == 400 and reply["field"] == "hold_cutover" and "hold_cutover" in reply["message"]
    assert fake_service.calls == []


@pytest.mark.parametrize("bad_id", ["sw1", "0123456789AB", "0123456789abc", "..", "a%2Fb"])
def test_switch_go_bad_id(run, jp_fetch, fake_service, bad_id):
    run(fake_service.start())
    code, body = run(fetch_error(jp_fetch, "switches", bad_id, "go", method="POST", body=b""))
    assert code == 400
    assert body["field"] == "id" and "id" in body["message"]
    assert fake_service.calls == []


@pytest.mark.parametrize(
    "reply,message",
    [
        ((409, {"message": "That switch does not wait for a go"}), "does not wait"),
        ((403, {"message": "you may not act on that server"}), "may not act"),
        ((404, {"message": "No such switch"}), "No such switch"),
        ((404, b"<html>Not Found</html>"), "non-JSON"),
        ((409, {}), "answered 409"),
    ],
)
def test_switch_go_service_refusals_passed_through(run, jp_fetch, fake_service, reply, message):
    run(fake_service.start())
    fake_service.switch_reply = reply
    code, body = run(fetch_error(jp_fetch, "switches", SWITCH_ID, "go", method="POST", body=b""))
    assert code == reply[0]
    assert message in body["message"]


@pytest.mark.parametrize(
    "reply",
    [
        (500, {"message": "Internal error in the ds-compute service; see its log."}),
        (502, b"Bad Gateway"),
        (202, {"id": SWITCH_ID}),
    ],
)
def test_switch_go_bad_service_answer_is_502(run, jp_fetch, fake_service, reply):
    run(fake_service.start())
    fake_service.switch_reply = reply
    code, body = run(fetch_error(jp_fetch, "switches", SWITCH_ID, "go", method="POST", body=b""))
    assert code == 502
    assert SWITCH_ID in body["message"]


def test_switch_go_service_unreachable_or_slow(run, jp_fetch, jp_serverapp, fake_service):
    run(fake_service.start())
    fake_service.delay = 5.0
    t0 = time.monotonic()
    code, body = run(fetch_error(jp_fetch, "switches", SWITCH_ID, "go", method="POST", body=b""))
    assert code == 502 and "could not reach" in body["message"]
    assert time.monotonic() - t0 < 3.0  # service_timeout=1.0 in jp_server_config
    url = closed_port_url()
    jp_serverapp.web_app.settings["ds_compute"].context.service_url = url
    code, body = run(fetch_error(jp_fetch, "switches", SWITCH_ID, "go", method="POST", body=b""))
    assert code == 502 and url in body["message"]


def test_switch_go_only_owner(run, jp_fetch, fake_service):
    run(fake_service.start())
    code, reply = run(
        fetch_error(jp_fetch, "switches", SWITCH_ID, "go", method="POST", body=b"", headers=BOB)
    )
    assert code == 403 and "owner" in reply["message"]
    assert fake_service.calls == []


# -- not under JupyterHub --------------------------------------------------------------
class TestStandalone:
    @pytest.fixture
    def jp_server_config(self, no_hub_env):
        return server_config()

    def test_status_says_not_under_hub(self, run, jp_fetch, jp_serverapp):
        code, st = run(fetch_json(jp_fetch, "status"))
        assert code == 200
        assert st["under_hub"] is False and st["user"] is None and st["tier"] is None
        assert st["cost_so_far"] is None

    def test_switch_is_409(self, run, jp_fetch):
        code, body = run(fetch_error(jp_fetch, "switch", method="POST", body=json.dumps({"profile": "gpu"})))
        assert code == 409
        assert "not running under JupyterHub" in body["message"]

    def test_switch_record_is_409(self, run, jp_fetch):
        code, body = run(fetch_error(jp_fetch, "switches", "0123456789ab"))
        assert code == 409
        assert "not running under JupyterHub" in body["message"]
        code, body = run(fetch_error(jp_fetch, "switches", "0123456789ab", "go", method="POST", body=b""))
        assert code == 409
        assert "not running under JupyterHub" in body["message"]

    def test_no_kernelspec_takeover(self, run, jp_serverapp):
        assert not isinstance(jp_serverapp.kernel_spec_manager, DSComputeKernelSpecManager)


def test_kernelspec_manager_installed_under_spawner(run, jp_serverapp):
    assert isinstance(jp_serverapp.kernel_spec_manager, DSComputeKernelSpecManager)


# -- the volume check ---------------------------------------------------------------------
class TestVolumeNotNotebookDir:
    @pytest.fixture
    def jp_server_config(self, hub_env, monkeypatch, tmp_path, capfd):
        elsewhere = tmp_path / "the-volume"
        elsewhere.mkdir()
        monkeypatch.setenv("DS_COMPUTE_VOLUME_PATH", str(elsewhere))
        return server_config()

    def test_warning_in_status_and_log(self, run, jp_fetch, jp_root_dir, tmp_path, capfd, fake_service):
        run(fake_service.start())
        code, st = run(fetch_json(jp_fetch, "status"))
        vol = st["volume"]
        assert vol["is_notebook_dir"] is False
        assert str(jp_root_dir) in vol["warning"] and str(tmp_path / "the-volume") in vol["warning"]
        # the server's log (stderr), at warning level, names both paths
        logged = [line for line in capfd.readouterr().err.splitlines() if "VOLUME CHECK FAILED" in line]
        assert len(logged) == 1 and logged[0].startswith("[W ")
        assert str(jp_root_dir) in logged[0] and str(tmp_path / "the-volume") in logged[0]


def test_check_notebook_dir(tmp_path):
    vol = tmp_path / "vol"
    (vol / "work").mkdir(parents=True)
    assert check_notebook_dir(str(vol), str(vol)) == (True, None)
    assert check_notebook_dir(str(vol), str(vol / "work")) == (True, None)
    ok, why = check_notebook_dir(str(vol / "work"), str(vol))
    assert not ok and str(vol) in why and "NOT follow" in why
    ok, why = check_notebook_dir(str(tmp_path / "missing"), str(vol))
    assert not ok and "does not exist" in why
    ok, why = check_notebook_dir(None, str(vol))
    assert not ok and "DS_COMPUTE_VOLUME_PATH is not set" in why
    # a sibling with a common string prefix is not "inside"
    (tmp_path / "vol2").mkdir()
    assert check_notebook_dir(str(vol), str(tmp_path / "vol2"))[0] is False


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_check_notebook_dir_read_only(tmp_path):
    vol = tmp_path / "ro"
    vol.mkdir()
    vol.chmod(0o555)
    try:
        ok, why = check_notebook_dir(str(vol), str(vol))
        assert not ok and "not writable" in why
    finally:
        vol.chmod(0o755)


def test_context_from_environ():
    ctx = ServerContext.from_environ(
        {
            "JUPYTERHUB_USER": "alice",
            "DS_COMPUTE_TIER_INFO": json.dumps(TIER_GPU),
            "DS_COMPUTE_TIERS": "{not json",
            "DS_COMPUTE_STARTED_AT": "100",
            "DS_COMPUTE_SERVICE_URL": "http://hub/services/ds-compute",
        }
    )
    assert ctx.under_hub and ctx.tier_slug == "gpu"
    assert ctx.service_url == "http://hub/services/ds-compute/"
    assert ctx.tiers == [] and any("DS_COMPUTE_TIERS" in p for p in ctx.problems)
    assert ctx.cost_so_far(now=100 + 7200) == pytest.approx(7.0)
    assert ServerContext.from_environ({"DS_COMPUTE_STARTED_AT": "soon"}).problems
    assert ServerContext.from_environ({}).cost_so_far(now=5) is None


# -- requests for a tier (issue 17) ----------------------------------------------------


def test_request_forwards_to_service(run, jp_fetch, fake_service):
    run(fake_service.start())
    fake_service.switch_reply = (201, {"id": "0123456789ab", "state": "pending", "profile": "gpu"})
    body = {"profile": "gpu", "duration": "7d", "reason": "train the model", "user": "bob", "extra": 1}
    code, reply = run(fetch_json(jp_fetch, "requests", method="POST", body=json.dumps(body)))
    assert code == 201 and reply == fake_service.switch_reply[1]
    (call,) = fake_service.calls
    assert call["method"] == "POST" and call["path"] == "/services/ds-compute/api/requests"
    assert call["auth"] == "token server-token-of-alice"
    # only what a request has: never another user
    assert call["body"] == {"profile": "gpu", "duration": "7d", "reason": "train the model"}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"duration": "7d", "reason": "r"}, "profile"),
        ({"profile": "gpu", "duration": "7d", "reason": ""}, "reason"),
        ({"profile": "gpu", "duration": True, "reason": "r"}, "duration"),
        ({"profile": "gpu", "reason": "r"}, "duration"),
    ],
)
def test_request_bad_body(run, jp_fetch, fake_service, body, field):
    run(fake_service.start())
    code, reply = run(fetch_error(jp_fetch, "requests", method="POST", body=json.dumps(body)))
    assert code == 400 and reply["field"] == field
    assert fake_service.calls == []


def test_request_service_errors_passed_through(run, jp_fetch, fake_service):
    run(fake_service.start())
    fake_service.switch_reply = (
        400,
        {"message": "Tier 'GPU' may be granted for at most 2d.", "field": "duration"},
    )
    body = {"profile": "gpu", "duration": "7d", "reason": "r"}
    code, reply = run(fetch_error(jp_fetch, "requests", method="POST", body=json.dumps(body)))
    assert code == 400 and reply["field"] == "duration" and "at most 2d" in reply["message"]
    fake_service.switch_reply = (500, b"<html>oops</html>")
    code, reply = run(fetch_error(jp_fetch, "requests", method="POST", body=json.dumps(body)))
    assert code == 502 and "could not take the request" in reply["message"]


def test_requests_listed(run, jp_fetch, fake_service):
    run(fake_service.start())
    fake_service.switch_reply = (200, {"requests": [{"id": "0123456789ab"}], "decidable": []})
    code, reply = run(fetch_json(jp_fetch, "requests"))
    assert code == 200 and reply["requests"][0]["id"] == "0123456789ab"
    assert fake_service.calls[0]["method"] == "GET"
