"""Run code in a real kernel of a real single-user server, through the hub's
proxy, over the Jupyter websocket protocol (what Lab does)."""

from __future__ import annotations

import asyncio
import json
import uuid

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


def start_kernel(hub, user, token, name="python3"):
    r = hub.server_api(user, "api/kernels", token, method="POST", json={"name": name})
    r.raise_for_status()
    return r.json()["id"]


async def _execute(ws_url, token, code, timeout):
    conn = await websocket_connect(HTTPRequest(ws_url, headers={"Authorization": f"token {token}"}))
    msg_id = uuid.uuid4().hex
    conn.write_message(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "username": "test",
                    "session": uuid.uuid4().hex,
                    "msg_type": "execute_request",
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {"code": code, "silent": False, "store_history": False,
                            "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
                "channel": "shell",
                "buffers": [],
            }
        )
    )  # fmt: skip
    out, error, status = [], None, None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        raw = await asyncio.wait_for(conn.read_message(), max(0.1, deadline - loop.time()))
        if raw is None:
            raise ConnectionError("kernel websocket closed")
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            out.append(content["text"])
        elif kind in ("execute_result", "display_data"):
            out.append(content["data"].get("text/plain", ""))
        elif kind == "error":
            error = f"{content['ename']}: {content['evalue']}"
        elif kind == "execute_reply":
            status = content["status"]
        elif kind == "status" and content["execution_state"] == "idle" and status is not None:
            break
    conn.close()
    return "".join(out), error


def execute(hub, user, token, kernel_id, code, timeout=60):
    """Run ``code``; return ``(output text, error or None)``."""
    ws_url = hub.url.replace("http", "ws", 1) + f"/user/{user}/api/kernels/{kernel_id}/channels"
    return asyncio.run(_execute(ws_url, token, code, timeout))


__all__ = ["start_kernel", "execute", "requests"]
