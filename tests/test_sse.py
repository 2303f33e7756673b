"""service/sse.py, the event-stream parser of the hub's /progress (WHATWG "Interpreting an event
stream"), and HubAPI.progress using it against an in-process server (issue 13 §4)."""

import asyncio

import pytest

from jupyter_ds_compute.service.hubapi import HubAPI
from jupyter_ds_compute.service.sse import Event, SSEParser


def parse(stream: bytes, split=None):
    p = SSEParser()
    if split is None:
        return p.feed(stream), p
    events = []
    for i in range(0, len(stream), split):
        events += p.feed(stream[i : i + split])
    return events, p


CASES = [
    ("one", b'data: {"a": 1}\n\n', [Event('{"a": 1}')]),
    ("multi-line data joined by LF", b"data: one\ndata: two\ndata\n\n", [Event("one\ntwo\n")]),
    ("CRLF", b"data: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n", [Event("a\nb"), Event("c")]),
    ("CR alone", b"data: a\rdata: b\r\rdata: c\r\r", [Event("a\nb"), Event("c")]),
    ("comments and keepalives", b": keepalive\n:\ndata: x\n: in the middle\n\n", [Event("x")]),
    ("no space after the colon; only one space dropped", b"data:x\ndata:  y\n\n", [Event("x\n y")]),
    ("event type, then back to message", b"event: ping\ndata: 1\n\ndata: 2\n\n", [Event("1", "ping"), Event("2")]),
    ("id persists; NUL ignored", b"id: 7\ndata: a\n\ndata: b\n\nid: x\0y\ndata: c\n\n",
     [Event("a", id="7"), Event("b", id="7"), Event("c", id="7")]),
    ("blank lines without data dispatch nothing", b"\n\nevent: x\n\ndata: a\n\n", [Event("a")]),
    ("unknown fields ignored", b"foo: bar\ndata: a\nretryx: 1\n\n", [Event("a")]),
    ("BOM dropped once", b"\xef\xbb\xbfdata: a\n\n", [Event("a")]),
    ("unfinished event at the end is dropped", b"data: a\n\ndata: b\n", [Event("a")]),
    ("not UTF-8", b"data: \xff\n\n", [Event("\ufffd")]),
    ("non-ASCII", "data: tier: Großer Ünterschied ✓\n\n".encode(), [Event("tier: Großer Ünterschied ✓")]),
]  # fmt: skip


@pytest.mark.parametrize("stream, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_events(stream, expected):
    assert parse(stream)[0] == expected


@pytest.mark.parametrize("stream, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("split", [1, 2, 3, 5])
def test_events_in_any_chunks(stream, expected, split):
    # a chunk may end inside a UTF-8 character, a field name or between CR and LF
    assert parse(stream, split)[0] == expected


def test_retry():
    events, p = parse(b"retry: 1500\ndata: a\n\n")
    assert events == [Event("a")] and p.retry == 1500
    for bad in (b"retry: 1.5\n", b"retry: x\n", b"retry:\n", "retry: ١٢\n".encode()):
        p.feed(bad)
        assert p.retry == 1500, bad
    p.feed(b"retry:20\n")
    assert p.retry == 20


def test_crlf_split_between_cr_and_lf_is_one_line_end():
    p = SSEParser()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"\n") == []  # CRLF: still inside the event
    assert p.feed(b"data: b\r\n\r") == [Event("a\nb")]  # the CR ends the event at once
    assert p.feed(b"\n") == []  # ... and this LF is the rest of that CRLF, not a blank line
    assert p.feed(b"\ndata: c\n\n") == [Event("c")]


async def test_hubapi_progress_reads_a_chunked_stream():
    # the hub's progress events, sent in awkward pieces (CRLF split, a keepalive, a JSON over two data lines)
    body = (
        b": keepalive\r\n\r\n"
        b'data: {"progress": 10, "message": "Pulling \xc3\xa9"}\r\n\r\n'
        b'data: {"progress": 100,\r\ndata:  "ready": true, "message": "Server ready"}\r\n\r\n'
        b"data: not json\r\n\r\n"
    )

    async def handler(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        for i in range(0, len(body), 7):
            writer.write(body[i : i + 7])
            await writer.drain()
            await asyncio.sleep(0.001)
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    got = []
    try:
        api = HubAPI(f"http://127.0.0.1:{port}/hub/api", "t", request_timeout=5)
        await api.progress("alice", "", got.append, timeout=5)
    finally:
        server.close()
        await server.wait_closed()
    assert got == [
        {"progress": 10, "message": "Pulling é"},
        {"progress": 100, "ready": True, "message": "Server ready"},
    ]
