"""One HTTP/1.1 connection to a Store, parsed by h11, over an already verified TLS stream.

The stream comes from :class:`~sipcert.client.tls.RoutedBackend` after SNI, chain and the
exact name check of draft §4.3 passed; this module only frames requests and reads answers.
h11 does the parsing (status line, header syntax, ``Content-Length`` versus chunked, the
16 KiB limit on an answer's head); the body limit, the timeouts and the words of each error
are ours. Every failure is a :class:`~sipcert.errors.SipCertError`:

* the connection ends before the first byte of an answer: :class:`ClosedBeforeAnswerError`
  (a kept-alive connection the Store closed while idle; the transport retries a GET once);
* any other network failure or a timeout: :class:`~sipcert.errors.TransportError`;
* an answer that breaks HTTP/1.1 (a malformed status line or header, a bad
  ``Content-Length``, a head over 16 KiB, a body cut short): :class:`TransportError` naming
  what was wrong;
* a body over the caller's limit: :class:`~sipcert.errors.InputTooLargeError`.

A plain answer to a GET (what a Store sends) is read without h11, in h11's grammar; h11 is
imported, and a connection's h11 state made, only when something else has to be framed or
read (``sipcert fetch`` starts without it: issue 13).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sipcert.client.net import (
    NetworkStream,
    network_failures,
    stream_failures,
    timeout_failures,
)
from sipcert.errors import InputTooLargeError, TransportError

if TYPE_CHECKING:
    import h11

__all__ = ["MAX_HEAD_SIZE", "Answer", "ClosedBeforeAnswerError", "HTTP11Connection"]

#: Largest answer head (status line and header fields) read; h11's default, as httpcore's.
MAX_HEAD_SIZE = 16 * 1024
_READ_SIZE = 64 * 1024

Headers = list[tuple[bytes, bytes]]

# h11's own grammar (h11/_abnf.py), for the plain answers read without it (see
# HTTP11Connection.exchange).
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_VCHAR = rb"[\x21-\x7e\x80-\xff]"
_FIELD = re.compile(
    rb"(" + _TOKEN + rb"):[ \t]*((?:" + _VCHAR + rb"+(?:[ \t]+" + _VCHAR + rb"+)*)?)[ \t]*"
)
_STATUS = re.compile(rb"HTTP/1\.1 (200|404) ((?:[ \t]|" + _VCHAR + rb")*)")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_DIGITS = re.compile(rb"[0-9]{1,18}")


@dataclass(frozen=True, slots=True)
class _Plain:
    """A whole plain answer read without h11: what :meth:`HTTP11Connection.exchange` needs."""

    status: int
    reason: bytes
    headers: Headers
    body: bytes
    close: bool


def _plain_request(target: bytes, headers: Headers) -> bytes | None:
    """The bytes h11 writes for a GET (``Host`` first), or ``None`` when any part is outside
    h11's grammar (h11 then frames it, or refuses it)."""
    if not _TARGET.fullmatch(target):
        return None
    hosts = [(n, v) for n, v in headers if n.lower() == b"host"]
    others = [(n, v) for n, v in headers if n.lower() != b"host"]
    if len(hosts) != 1:
        return None
    lines = [b"GET " + target + b" HTTP/1.1"]
    for name, value in hosts + others:
        field = _FIELD.fullmatch(name + b": " + value)
        if (
            field is None
            or field[2] != value
            # a body, or a close asked for: h11 frames those and keeps their state
            or name.lower() in (b"content-length", b"transfer-encoding", b"connection")
        ):
            return None
        lines.append(name + b": " + value)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _plain_answer(data: bytes | bytearray, limit: int) -> _Plain | bool:
    """``data`` as one whole plain answer to a GET: HTTP/1.1, 200 or 404, a head within
    :data:`MAX_HEAD_SIZE` in h11's grammar, one ``Content-Length`` of at most ``limit``, no
    ``Transfer-Encoding``, the body complete and nothing after it. ``True``: it may become
    one with more bytes; ``False``: it is something else, which h11 reads (and judges)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return len(data) <= MAX_HEAD_SIZE
    if end + 4 > MAX_HEAD_SIZE:
        return False
    lines = bytes(data[:end]).split(b"\r\n")
    status = _STATUS.fullmatch(lines[0])
    if status is None:
        return False
    headers: Headers = []
    length: int | None = None
    close = False
    for line in lines[1:]:
        field = _FIELD.fullmatch(line)
        if field is None:
            return False
        name, value = field[1].lower(), field[2]
        if name == b"content-length":
            if length is not None or not _DIGITS.fullmatch(value):
                return False
            length = int(value)
        elif name == b"transfer-encoding":
            return False
        elif name == b"connection":
            close = close or b"close" in (t.strip().lower() for t in value.split(b","))
        headers.append((name, value))
    if length is None or length > limit:
        return False  # an answer over the limit is refused by read_body before its body
    total = end + 4 + length
    if len(data) < total:
        return True
    if len(data) > total:
        return False  # bytes after the answer: h11 keeps them and says what they are
    return _Plain(int(status[1]), status[2], headers, bytes(data[end + 4 :]), close)


class ClosedBeforeAnswerError(TransportError):
    """The connection ended before any byte of the answer (an idle keep-alive close)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole answer: status, header fields (names lower-case, repeated ones joined with
    ``", "``), body, and the connection that carried it."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    connection: HTTP11Connection = field(compare=False, repr=False)


def joined_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Header fields as one ``dict``, as ``dict(httpx.Headers)`` gives them."""
    pairs = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]
    headers = dict(pairs)
    if len(headers) < len(pairs):  # a repeated field: join its values in order
        headers = {}
        for key, text in pairs:
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


class HTTP11Connection:
    """One kept-alive HTTP/1.1 connection: one request at a time, answers read in full or
    the connection is closed (nothing is left half-read on a connection that is reused)."""

    def __init__(self, stream: NetworkStream, domain: str) -> None:
        self.stream = stream
        self.domain = domain
        #: h11's state of the connection, made when first needed (:meth:`_machine`); until
        #: then every exchange was a plain one and the connection is idle between them.
        self._h11: h11.Connection | None = None
        #: Answers read in full on this connection (0: it has not carried one yet).
        self.answered = 0
        self.closed = False
        self._fed = 0  # bytes given to h11 since the request was sent
        #: Facts this server said on this connection, with the ``time.monotonic`` they were
        #: said at (see :meth:`remember`).
        self._notes: dict[str, float] = {}

    def remember(self, fact: str) -> None:
        """Note that the server on this connection said ``fact`` (e.g. it has no log)."""
        self._notes[fact] = time.monotonic()

    def recalls(self, fact: str, max_age: float) -> bool:
        """Whether this connection's server said ``fact`` within the last ``max_age`` s."""
        said = self._notes.get(fact)
        return said is not None and time.monotonic() - said <= max_age

    def _machine(self) -> h11.Connection:
        """h11's state of this connection, made on first use (with the import of h11)."""
        if self._h11 is None:
            import h11

            self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_SIZE)
        return self._h11

    def _h11_idle(self) -> bool:
        """h11 is between two exchanges (trivially so when it was never needed)."""
        if self._h11 is None:
            return True
        import h11

        return self._h11.our_state is h11.IDLE and self._h11.their_state is h11.IDLE

    @property
    def reusable(self) -> bool:
        """Open, between two exchanges, and nothing unasked arrived (no close from the peer)."""
        return (
            not self.closed and self._h11_idle() and not self.stream.get_extra_info("is_readable")
        )

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                await self.stream.aclose()
            except network_failures(OSError):
                pass  # already gone: nothing to release

    def _failure(self, exc: BaseException, step: str) -> TransportError:
        from sipcert.client.tls import in_words  # tls builds on this module

        if isinstance(exc, timeout_failures(TimeoutError)):
            return TransportError(f"{step} the Store of {self.domain} timed out")
        why = in_words(exc, None, None, "talking to it")
        return TransportError(f"{step} the Store of {self.domain} failed: {why}")

    async def send(
        self, method: bytes, target: bytes, headers: Headers, body: bytes, timeout: float | None
    ) -> None:
        """Write one request (``Host`` and ``Content-Length`` must be among ``headers``)."""
        import h11

        machine = self._machine()
        try:
            data = machine.send(h11.Request(method=method, target=target, headers=headers))
            if body:
                data += machine.send(h11.Data(data=body)) or b""
            data += machine.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            await self.aclose()
            raise TransportError(f"a request to {self.domain} could not be framed: {exc}") from exc
        await self._write(data or b"", timeout)

    async def _write(self, data: bytes, timeout: float | None) -> None:
        self._fed = 0
        try:
            await self.stream.write(data, timeout)
        except stream_failures(OSError) as exc:
            await self.aclose()
            if self.answered:
                raise ClosedBeforeAnswerError(
                    f"the Store of {self.domain} closed the kept-alive connection"
                ) from exc
            raise self._failure(exc, "sending to") from exc

    async def _next(self, timeout: float | None, *, first: bool = False) -> h11.Event:
        import h11

        machine = self._machine()
        while True:
            try:
                event = machine.next_event()
            except h11.RemoteProtocolError as exc:
                await self.aclose()
                raise TransportError(self._protocol_error(exc)) from exc
            if event is not h11.NEED_DATA:
                assert isinstance(event, h11.Event)  # noqa: S101 (PAUSED is for servers)
                return event
            data = await self._read(timeout, first=first)
            first = first and not data
            self._fed += len(data)
            machine.receive_data(data)

    async def _read(self, timeout: float | None, *, first: bool) -> bytes:
        """The next bytes of the answer (``b""`` at its end); ``first``: none came yet."""
        try:
            data = await self.stream.read(_READ_SIZE, timeout)
        except stream_failures(OSError) as exc:
            await self.aclose()
            if first and self.answered and not isinstance(exc, timeout_failures()):
                raise ClosedBeforeAnswerError(
                    f"the Store of {self.domain} reset the kept-alive connection"
                ) from exc
            raise self._failure(exc, "reading the answer of") from exc
        if not data and first:
            await self.aclose()
            raise ClosedBeforeAnswerError(
                f"the Store of {self.domain} closed the connection without answering"
            )
        return data

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> str:
        if exc.error_status_hint == 431:
            return self._too_long()
        return f"the Store of {self.domain} broke the HTTP/1.1 protocol: {exc or 'malformed'}"

    def _too_long(self) -> str:
        return (
            f"the Store of {self.domain} broke the HTTP/1.1 protocol: its answer's head is "
            f"over {MAX_HEAD_SIZE} bytes"
        )

    async def receive_head(self, timeout: float | None, *, first: bool = True) -> h11.Response:
        """The final answer's status line and header fields (1xx answers are skipped);
        ``first=False`` when h11 was already given some of the answer."""
        import h11

        while True:
            event = await self._next(timeout, first=first)
            first = False
            if isinstance(event, h11.Response):
                # h11 bounds a head that arrives in pieces; one that came whole is measured
                # here, so the limit does not depend on how the bytes were split.
                if self._fed - len(self._machine().trailing_data[0]) > MAX_HEAD_SIZE:
                    await self.aclose()
                    raise TransportError(self._too_long())
                return event
            if not isinstance(event, h11.InformationalResponse):  # pragma: no cover (h11)
                await self.aclose()
                raise TransportError(f"the Store of {self.domain} sent no answer head")

    async def body(self, timeout: float | None) -> AsyncIterator[bytes]:
        """The answer's body in chunks; at its end the connection is ready for the next
        request, or closed when the Store said ``Connection: close``."""
        import h11

        while True:
            event = await self._next(timeout)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._finish()
                return
            else:  # ConnectionClosed after a body delimited by the close: h11 says so above
                await self.aclose()
                return

    def _finish(self) -> None:
        import h11

        machine = self._machine()
        self.answered += 1
        if machine.our_state is h11.DONE and machine.their_state is h11.DONE:
            machine.start_next_cycle()
        else:
            self.closed = True  # MUST_CLOSE: the Store ends it; the caller closes our side

    async def read_body(self, limit: int, declared: str | None, timeout: float | None) -> bytes:
        """The whole body, at most ``limit`` bytes (else :class:`InputTooLargeError`)."""
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self.aclose()
            raise InputTooLargeError(
                f"the Store's answer is {declared} bytes, over the limit of {limit}"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.body(timeout):
            size += len(chunk)
            if size > limit:
                await self.aclose()
                raise InputTooLargeError(f"the Store's answer is over the limit of {limit} bytes")
            chunks.append(chunk)
        if self.closed:
            await self.aclose()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def exchange(
        self, method: bytes, target: bytes, headers: Headers, limit: int, timeout: float | None
    ) -> Answer:
        """One bodiless request and its whole answer.

        A plain answer (:func:`_plain_answer`: what a Store sends to a GET) is read without
        h11, which was half of a kept-alive fetch's client CPU (issue 13); h11's grammar is
        applied to it all the same. Anything else -- chunked, 1xx, another status, a
        malformed or oversized head, a body cut short -- is handed to h11 byte for byte as
        it came, so its reading and its errors are unchanged.
        """
        plain = _plain_request(target, headers) if method == b"GET" and self._idle() else None
        if plain is None:
            await self.send(method, target, headers, b"", timeout)
            return await self._h11_answer(limit, timeout, first=True)
        await self._write(plain, timeout)
        data = bytearray()
        ended = False
        while True:
            chunk = await self._read(timeout, first=not data)
            if not chunk:
                ended = True
                break
            data += chunk
            found = _plain_answer(data, limit)
            if found is True:
                continue
            if found is False:
                break
            self.answered += 1
            if found.close:
                await self.aclose()
            return Answer(
                found.status,
                found.reason.decode("latin-1"),
                joined_headers(found.headers),
                found.body,
                connection=self,
            )
        # Not a plain answer: h11 reads what came (and what follows) as if it had sent it.
        import h11

        machine = self._machine()
        try:
            machine.send(h11.Request(method=method, target=target, headers=headers))
            machine.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:  # pragma: no cover (_plain_request checked it)
            await self.aclose()
            raise TransportError(f"a request to {self.domain} could not be framed: {exc}") from exc
        self._fed = len(data)
        machine.receive_data(bytes(data))
        if ended:
            machine.receive_data(b"")
        return await self._h11_answer(limit, timeout, first=False)

    def _idle(self) -> bool:
        """Between two exchanges, nothing received ahead."""
        return (
            not self.closed
            and self._h11_idle()
            and (self._h11 is None or not self._h11.trailing_data[0])
        )

    async def _h11_answer(self, limit: int, timeout: float | None, *, first: bool) -> Answer:
        head = await self.receive_head(timeout, first=first)
        fields = joined_headers(head.headers)
        body = await self.read_body(limit, fields.get("content-length"), timeout)
        return Answer(
            head.status_code, head.reason.decode("latin-1"), fields, body, connection=self
        )
