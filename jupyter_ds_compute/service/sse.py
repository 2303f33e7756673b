"""A server-sent events parser for the hub's ``/progress`` stream.

Incremental (fed the chunks tornado's ``streaming_callback`` gets, split
anywhere, even inside a UTF-8 character or a CRLF) and written to the WHATWG
HTML standard's "Interpreting an event stream"
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

- lines end with CRLF, LF or CR; one leading BOM is dropped; bytes that are
  not UTF-8 become U+FFFD;
- a line starting with ``:`` is a comment (the hub's keepalives);
- ``field: value`` (one space after the colon dropped), a line without a
  colon is a field with an empty value;
- ``data`` lines accumulate, joined by LF; ``event`` sets the type
  (default ``message``); ``id`` sets the last event id (kept for later
  events; ignored if it holds NUL); ``retry`` sets the reconnection time
  (ASCII digits only, else ignored); other fields are ignored;
- a blank line dispatches the event, unless no ``data`` came; an event the
  stream ends in the middle of is dropped.

No library does this for a push-style byte feed among the project's
dependencies: ``sseclient-py`` pulls from a blocking iterator, ``httpx-sse``
needs httpx's streaming. The cases are in ``tests/test_sse.py``.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

__all__ = ["Event", "SSEParser"]


@dataclass(frozen=True)
class Event:
    """One dispatched event: ``data`` (lines joined by LF), ``event`` type, last event ``id``."""

    data: str
    event: str = "message"
    id: str = ""


class SSEParser:
    """Feed bytes with :meth:`feed`; get the events completed so far.

    ``last_event_id`` and ``retry`` (milliseconds, or None) are the stream's
    state as the standard defines it.
    """

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""  # decoded, not yet split into lines
        self._started = False  # the BOM check is done
        self._skip_lf = False  # the last chunk ended in CR
        self._data: list[str] = []
        self._event = ""
        self._has_data = False
        self.last_event_id = ""
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """Parse ``chunk``; returns the events it completed (maybe none)."""
        text = self._decoder.decode(chunk)
        if not self._started and text:
            if text.startswith("\ufeff"):
                text = text[1:]
            self._started = True
        if self._skip_lf and text:
            # the previous chunk ended in CR: an LF now completes that CRLF
            if text.startswith("\n"):
                text = text[1:]
            self._skip_lf = False
        self._text += text
        events = []
        while True:
            cut, width = self._line_end(self._text)
            if cut < 0:
                break
            ends_in_cr = self._text[cut] == "\r" and cut + width == len(self._text)
            line, self._text = self._text[:cut], self._text[cut + width :]
            if ends_in_cr:
                self._skip_lf = True  # a CR that ended the chunk: CRLF split across chunks?
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    @staticmethod
    def _line_end(text: str) -> tuple[int, int]:
        """Where the first complete line ends and how long its end is; (-1, 0) if none yet."""
        lf, cr = text.find("\n"), text.find("\r")
        if cr < 0 or (0 <= lf < cr):
            return (lf, 1) if lf >= 0 else (-1, 0)
        if cr == len(text) - 1:
            return cr, 1  # a CR at the end: a line end; an LF in the next chunk is skipped
        return (cr, 2) if text[cr + 1] == "\n" else (cr, 1)

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._has_data = True
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif field == "retry":
            if value and value.isascii() and value.isdigit():
                self.retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        data, event, has_data = "\n".join(self._data), self._event, self._has_data
        self._data, self._event, self._has_data = [], "", False
        if not has_data:
            return None
        return Event(data=data, event=event or "message", id=self.last_event_id)
