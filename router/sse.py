"""An incremental server-sent events parser: upstream body bytes in, ``(event, data)`` pairs out.

Stream parsing is the project's core, so this is our own rather than another library's internals.
The rules are the WHATWG HTML standard's "Interpreting an event stream"
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

* lines end with ``\\r\\n``, ``\\r`` or ``\\n`` (a ``\\r`` at the end of one chunk and a ``\\n`` at
  the start of the next are one line end); a UTF-8 byte order mark at the very start is skipped;
* ``field: value`` with one leading space of the value dropped; a line with no colon is a field
  with an empty value; a line starting with ``:`` is a comment;
* ``data`` lines are joined with ``\\n``; ``event`` sets the type; ``id`` and ``retry`` are read
  and not used (an upstream call is never resumed);
* a blank line dispatches the event, unless no ``data`` line came (then it is dropped, as the
  standard says); an event cut off before its blank line is never dispatched.

Lines are decoded as UTF-8 only once whole, so a character split across chunks is never broken;
invalid bytes become U+FFFD. ``event`` is ``""`` when the message named no type (or ``message``,
the default type).
"""

from __future__ import annotations

__all__ = ["SSEParser"]

_BOM = b"\xef\xbb\xbf"


class SSEParser:
    """Feed body chunks with ``feed``; each call returns the events those bytes completed."""

    __slots__ = ("_data", "_event", "_partial", "_skip_lf", "_started")

    def __init__(self) -> None:
        self._partial = b""  # bytes of a line not yet ended
        self._data: list[bytes] = []
        self._event = b""
        self._skip_lf = False  # the previous chunk ended with \r: a leading \n belongs to it
        self._started = False

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """The ``(event, data)`` of every event whose blank line is in ``chunk``."""
        if not chunk:
            return []
        if (chunk[:6] == b"data: " and chunk[-2:] == b"\n\n" and not self._partial and not self._data
                and not self._event and self._started and not self._skip_lf and chunk.count(b"\n") == 2
                and b"\r" not in chunk):  # the usual read: one event of one data line, nothing pending
            return [("", chunk[6:-2].decode("utf-8", "replace"))]
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._partial + chunk if self._partial else chunk
        if not self._started:
            if len(buf) < 3 and _BOM.startswith(buf):
                self._partial = buf  # too short to tell a BOM from data
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[3:]
        if b"\r" in buf:
            if buf.endswith(b"\r"):
                self._skip_lf = True
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._partial = lines.pop()
        out: list[tuple[str, str]] = []
        for line in lines:
            if not line:
                if self._data:
                    event = self._event.decode("utf-8", "replace")
                    out.append(("" if event == "message" else event,
                                b"\n".join(self._data).decode("utf-8", "replace")))
                    self._data = []
                self._event = b""
                continue
            if line[0] == 58:  # b":": a comment
                continue
            name, colon, value = line.partition(b":")
            if colon and value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value
        return out
