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


def _request(session, msg_type, content):
    msg_id = uuid.uuid4().hex
    header = {
        "msg_id": msg_id,
        "username": "test",
        "session": session,
        "msg_type": msg_type,
        "version": "5.3",
    }
    msg = {
        "header": header,
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": "shell",
        "buffers": [],
    }
    return msg_id, json.dumps(msg)


async def _wait_kernel_ready(conn, session, deadline):
    """Ask ``kernel_info`` until the kernel answers, as Lab does: a request sent
    while the server is still connecting its channels can be lost."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        msg_id, raw = _request(session, "kernel_info_request", {})
        conn.write_message(raw)
        retry_at = loop.time() + 2
        while loop.time() < retry_at:
            try:
                reply = await asyncio.wait_for(conn.read_message(), retry_at - loop.time())
            except asyncio.TimeoutError:
                break
            if reply is None:
                raise ConnectionError("kernel websocket closed")
            msg = json.loads(reply)
            if (
                msg.get("parent_header", {}).get("msg_id") == msg_id
                and msg["msg_type"] == "kernel_info_reply"
            ):
                return
    raise TimeoutError("the kernel never answered kernel_info")


async def _execute(ws_url, token, code, timeout):
    conn = await websocket_connect(HTTPRequest(ws_url, headers={"Authorization": f"token {token}"}))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    session = uuid.uuid4().hex
    await _wait_kernel_ready(conn, session, deadline)
    msg_id, raw = _request(
        session,
        "execute_request",
        {"code": code, "silent": False, "store_history": False, "user_expressions": {},
         "allow_stdin": False, "stop_on_error": True},
    )  # fmt: skip
    conn.write_message(raw)
    # shell (execute_reply) and iopub (idle) are separate channels: either
    # may arrive first, the execution is over once both have
    out, error, status, idle = [], None, None, False
    while status is None or not idle:
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
        elif kind == "status" and content["execution_state"] == "idle":
            idle = True
    conn.close()
    return "".join(out), error


def execute(hub, user, token, kernel_id, code, timeout=60):
    """Run ``code``; return ``(output text, error or None)``."""
    ws_url = hub.url.replace("http", "ws", 1) + f"/user/{user}/api/kernels/{kernel_id}/channels"
    return asyncio.run(_execute(ws_url, token, code, timeout))


__all__ = ["start_kernel", "execute", "requests"]
