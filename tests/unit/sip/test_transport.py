"""SIP transports on loopback: UDP, TCP, and TLS against a real TLS peer (RFC 3261, RFC 5922)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest

from sipcert.errors import (
    ConfigError,
    InputError,
    InputTooLargeError,
    NameMismatchError,
    SipCertError,
    TransportError,
    UntrustedCertificateError,
)
from sipcert.proto.ca import IssuedCertificate, TestCA
from sipcert.proto.sip import (
    Request,
    Response,
    SipLimits,
    StreamParser,
    make_response,
    parse_message,
    parse_uri,
)
from sipcert.sip.transport import (
    Hop,
    Origin,
    SipTransport,
    Transport,
    cancel_and_wait,
    client_tls_context,
)

T = TypeVar("T")
NOW = datetime.now(UTC)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(main())


def request(transport: str = "UDP", *, body: bytes = b"hello", cseq: int = 1) -> Request:
    return Request(
        "MESSAGE",
        "sip:bob@example.com",
        headers=(
            ("Via", f"SIP/2.0/{transport} 127.0.0.1:5999;rport;branch=z9hG4bK{cseq}"),
            ("From", "<sip:alice@example.com>;tag=a"),
            ("To", "<sip:bob@example.com>"),
            ("Call-ID", "call-1"),
            ("CSeq", f"{cseq} MESSAGE"),
            ("Content-Type", "text/plain"),
        ),
        body=body,
    )


class Collector:
    """A handler that records messages and can answer requests through a transport."""

    def __init__(self) -> None:
        self.messages: list[tuple[Request | Response, Origin]] = []
        self.arrived = asyncio.Event()
        self.transport: SipTransport | None = None
        self.answer = True

    def __call__(self, message: Request | Response, origin: Origin) -> None:
        self.messages.append((message, origin))
        self.arrived.set()
        if self.answer and isinstance(message, Request) and self.transport is not None:
            response = make_response(message, 200, to_tag="t")
            asyncio.get_running_loop().create_task(self.transport.reply(response, origin))

    async def wait(self, count: int = 1) -> None:
        while len(self.messages) < count:
            self.arrived.clear()
            await self.arrived.wait()


@contextlib.asynccontextmanager
async def pair(
    kind: Transport,
) -> AsyncIterator[tuple[SipTransport, Collector, SipTransport, Collector]]:
    server_seen, client_seen = Collector(), Collector()
    server = SipTransport(server_seen)
    client = SipTransport(client_seen)
    server_seen.transport = server
    try:
        await server.listen(kind)
        if kind is Transport.UDP:
            await client.listen(kind)
        yield server, server_seen, client, client_seen
    finally:
        await client.aclose()
        await server.aclose()


# --- UDP -------------------------------------------------------------------------------------


def test_udp_request_and_response() -> None:
    async def main() -> None:
        async with pair(Transport.UDP) as (server, server_seen, client, client_seen):
            host, port = server.local_address(Transport.UDP)
            assert await client.send(request(), Hop(Transport.UDP, host, port)) is None
            await client_seen.wait()
            received, origin = server_seen.messages[0]
            assert isinstance(received, Request)
            assert received.body == b"hello"
            assert (origin.transport, origin.port) == (
                Transport.UDP,
                client.local_address(Transport.UDP)[1],
            )
            # RFC 3581: the server filled rport and received in the top Via.
            via = received.top_via
            assert via.param("rport") == str(origin.port)
            assert via.param("received") == "127.0.0.1"
            response, _ = client_seen.messages[0]
            assert isinstance(response, Response)
            assert response.status == 200
            assert response.top_via.param("rport") == str(origin.port)

    run(main())


def test_udp_drops_garbage_and_ignores_keepalives() -> None:
    async def main() -> None:
        errors: list[str] = []
        seen = Collector()
        server = SipTransport(seen, on_error=lambda e, o: errors.append(str(e)))
        host, port = await server.listen(Transport.UDP)
        loop = asyncio.get_running_loop()
        sender, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=(host, port)
        )
        try:
            sender.sendto(b"\r\n\r\n")
            sender.sendto(b"NOT SIP AT ALL")
            sender.sendto(request().to_bytes())
            await seen.wait()
            assert len(seen.messages) == 1
            assert errors == ["malformed SIP message: no empty line ends the header section"]
            assert len(server.dropped) == 1
        finally:
            sender.close()
            await server.aclose()

    run(main())


def test_udp_needs_a_socket_and_fits_a_datagram() -> None:
    async def main() -> None:
        async with SipTransport(Collector(), limits=SipLimits(max_message=200_000)) as transport:
            with pytest.raises(TransportError, match="listen on UDP first"):
                await transport.send(request(), Hop(Transport.UDP, "127.0.0.1", 9))
            with pytest.raises(ConfigError, match="no udp listener"):
                transport.local_address(Transport.UDP)
            await transport.listen(Transport.UDP)
            with pytest.raises(TransportError, match="do not fit a UDP datagram"):
                await transport.send(request(body=b"x" * 70000), Hop(Transport.UDP, "127.0.0.1", 9))

    run(main())


def test_own_size_limit_applies_to_sending() -> None:
    async def main() -> None:
        async with SipTransport(Collector(), limits=SipLimits(max_message=500)) as transport:
            await transport.listen(Transport.UDP)
            with pytest.raises(TransportError, match="over our own limit"):
                await transport.send(request(body=b"x" * 600), Hop(Transport.UDP, "127.0.0.1", 9))

    run(main())


# --- TCP -------------------------------------------------------------------------------------


def test_tcp_request_response_and_connection_reuse() -> None:
    async def main() -> None:
        async with pair(Transport.TCP) as (server, server_seen, client, client_seen):
            host, port = server.local_address(Transport.TCP)
            hop = Hop(Transport.TCP, host, port)
            first = await client.send(request("TCP", cseq=1), hop)
            second = await client.send(request("TCP", cseq=2, body=b"\r\n\r\nbinary"), hop)
            assert first is not None
            assert first is second  # one connection per (transport, host, port, domain)
            await client_seen.wait(2)
            bodies = [m.body for m, _ in server_seen.messages]
            assert bodies == [b"hello", b"\r\n\r\nbinary"]
            statuses = [m.status for m, _ in client_seen.messages if isinstance(m, Response)]
            assert statuses == [200, 200]
            origin = server_seen.messages[0][1]
            assert origin.connection is not None
            assert origin.transport is Transport.TCP

    run(main())


def test_tcp_stream_that_does_not_frame_is_closed() -> None:
    async def main() -> None:
        errors: list[str] = []
        seen = Collector()
        server = SipTransport(seen, on_error=lambda e, o: errors.append(str(e)))
        host, port = await server.listen(Transport.TCP)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            no_length = request("TCP").to_bytes().replace(b"Content-Length: 5\r\n", b"")
            writer.write(no_length)
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
            assert errors == [
                "malformed SIP message: Content-Length is required on a stream transport "
                "(RFC 3261 §18.3)"
            ]
            assert seen.messages == []
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            await server.aclose()

    run(main())


def test_tcp_connect_refused() -> None:
    async def main() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        async with SipTransport(Collector()) as transport:
            with pytest.raises(TransportError, match=r"cannot connect to tcp 127\.0\.0\.1") as info:
                await transport.send(request("TCP"), Hop(Transport.TCP, "127.0.0.1", port))
            # In words, not "[Errno 111] Connect call failed ('127.0.0.1', ...)".
            assert str(info.value).endswith(f": connection refused by 127.0.0.1:{port}")

    run(main())


def test_tls_reset_during_the_handshake_is_said_in_words(ca: TestCA, tmp_path: Path) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the ClientHello has arrived
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST

    async def main() -> None:
        server = await asyncio.start_server(reset, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            tls = client_tls_context(_ca_file(ca, tmp_path))
            async with SipTransport(Collector(), tls_context=tls) as client:
                hop = Hop(Transport.TLS, "127.0.0.1", port, domain="example.com")
                with pytest.raises(TransportError) as info:
                    await client.send(request("TLS"), hop)
        finally:
            server.close()
            await server.wait_closed()
        message = str(info.value)
        assert message.endswith(f"connection reset by 127.0.0.1:{port} during the TLS handshake")
        assert "Errno" not in message and "Error" not in message

    run(main())


def test_reply_needs_the_connection() -> None:
    async def main() -> None:
        async with SipTransport(Collector()) as transport:
            origin = Origin(Transport.TCP, "127.0.0.1", 1)
            with pytest.raises(TransportError, match="is gone"):
                await transport.reply(make_response(request(), 200), origin)

    run(main())


def test_hop_from_uri() -> None:
    assert Hop.from_uri(parse_uri("sip:p.example.com")) == Hop(Transport.UDP, "p.example.com", 5060)
    assert Hop.from_uri(parse_uri("sips:example.com")) == Hop(Transport.TLS, "example.com", 5061)
    hop = Hop.from_uri(parse_uri("sip:[::1]:5080;transport=TCP"), domain="Example.COM")
    assert (hop.transport, hop.host, hop.port, hop.tls_domain) == (
        Transport.TCP,
        "::1",
        5080,
        "example.com",
    )
    with pytest.raises(ConfigError, match="unsupported SIP transport 'sctp'"):
        Hop.from_uri(parse_uri("sip:h;transport=sctp"))


# --- TLS against a real TLS peer --------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA.create(now=NOW)


def _server_context(issued: IssuedCertificate, folder: Path, sni: list[str]) -> ssl.SSLContext:
    cert, key = folder / "server.pem", folder / "server.key"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    def record(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sni.append(name or "")

    ctx.sni_callback = record  # type: ignore[assignment]
    return ctx


@contextlib.asynccontextmanager
async def tls_echo_server(ctx: ssl.SSLContext) -> AsyncIterator[tuple[int, list[Request]]]:
    """A small TLS SIP server, independent of SipTransport: answers each request with 200."""
    received: list[Request] = []
    handlers: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        parser = StreamParser()
        try:
            while data := await reader.read(4096):
                for message in parser.feed(data):
                    assert isinstance(message, Request)
                    received.append(message)
                    writer.write(make_response(message, 200, to_tag="tls").to_bytes())
        except (ConnectionError, ssl.SSLError, InputError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1], received
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


def _ca_file(ca: TestCA, folder: Path) -> Path:
    path = folder / "ca.pem"
    path.write_bytes(ca.cert_pem)
    return path


def test_tls_to_the_right_domain(ca: TestCA, tmp_path: Path) -> None:
    sni: list[str] = []
    ctx = _server_context(ca.issue(["example.com"], now=NOW), tmp_path, sni)

    async def main() -> None:
        async with tls_echo_server(ctx) as (port, received):
            seen = Collector()
            tls = client_tls_context(_ca_file(ca, tmp_path))
            async with SipTransport(seen, tls_context=tls) as client:
                hop = Hop(Transport.TLS, "127.0.0.1", port, domain="Example.com")
                conn = await client.send(request("TLS"), hop)
                assert conn is not None
                assert conn.domain == "example.com"
                await seen.wait()
                response, origin = seen.messages[0]
                assert isinstance(response, Response)
                assert (response.status, response.to.tag) == (200, "tls")
                assert origin.transport is Transport.TLS
                assert [m.body for m in received] == [b"hello"]
                assert sni == ["example.com"]  # SNI is the SIP domain (RFC 5922 §7.1)
                assert await client.send(request("TLS", cseq=2), hop) is conn

    run(main())


def test_tls_wrong_name_is_refused_before_any_sip(ca: TestCA, tmp_path: Path) -> None:
    ctx = _server_context(ca.issue(["proxy.example.net"], now=NOW), tmp_path, [])

    async def main() -> None:
        async with tls_echo_server(ctx) as (port, received):
            tls = client_tls_context(_ca_file(ca, tmp_path))
            async with SipTransport(Collector(), tls_context=tls) as client:
                hop = Hop(Transport.TLS, "127.0.0.1", port, domain="example.com")
                with pytest.raises(NameMismatchError) as caught:
                    await client.send(request("TLS"), hop)
                assert caught.value.presented == ["proxy.example.net"]
                assert caught.value.expected == "example.com"
            assert received == []

    run(main())


@pytest.mark.parametrize("names", [["*.example.com"], ["sub.example.com"], ["example.com.evil"]])
def test_tls_no_wildcards_or_subdomains(ca: TestCA, tmp_path: Path, names: list[str]) -> None:
    ctx = _server_context(ca.issue(names, now=NOW), tmp_path, [])

    async def main() -> None:
        async with tls_echo_server(ctx) as (port, _):
            tls = client_tls_context(_ca_file(ca, tmp_path))
            async with SipTransport(Collector(), tls_context=tls) as client:
                hop = Hop(Transport.TLS, "127.0.0.1", port, domain="example.com")
                with pytest.raises(NameMismatchError):
                    await client.send(request("TLS"), hop)
                with pytest.raises(ConfigError, match="needs the SIP domain"):
                    await client.send(request("TLS"), Hop(Transport.TLS, "127.0.0.1", port))

    run(main())


def test_tls_untrusted_chain(ca: TestCA, tmp_path: Path) -> None:
    other = TestCA.create(now=NOW, name="not trusted")
    ctx = _server_context(other.issue(["example.com"], now=NOW), tmp_path, [])

    async def main() -> None:
        async with tls_echo_server(ctx) as (port, received):
            tls = client_tls_context(_ca_file(ca, tmp_path))
            async with SipTransport(Collector(), tls_context=tls) as client:
                hop = Hop(Transport.TLS, "127.0.0.1", port, domain="example.com")
                with pytest.raises(UntrustedCertificateError, match="does not verify"):
                    await client.send(request("TLS"), hop)
            assert received == []

    run(main())


def test_tls_pool_is_keyed_by_domain(ca: TestCA, tmp_path: Path) -> None:
    """A connection verified for example.com is not reused for example.net."""
    ctx = _server_context(ca.issue(["example.com"], now=NOW), tmp_path, [])

    async def main() -> None:
        async with tls_echo_server(ctx) as (port, _):
            tls = client_tls_context(_ca_file(ca, tmp_path))
            seen = Collector()
            async with SipTransport(seen, tls_context=tls) as client:
                good = Hop(Transport.TLS, "127.0.0.1", port, domain="example.com")
                await client.send(request("TLS"), good)
                other = Hop(Transport.TLS, "127.0.0.1", port, domain="example.net")
                with pytest.raises(NameMismatchError):
                    await client.send(request("TLS", cseq=2), other)

    run(main())


def test_tls_listener_side(ca: TestCA, tmp_path: Path) -> None:
    """Our own TLS listener (optional for a UA) receives and answers over the same connection."""
    ctx = _server_context(ca.issue(["example.com"], now=NOW), tmp_path, [])

    async def main() -> None:
        server_seen, client_seen = Collector(), Collector()
        server = SipTransport(server_seen)
        server_seen.transport = server
        tls = client_tls_context(_ca_file(ca, tmp_path))
        client = SipTransport(client_seen, tls_context=tls)
        try:
            with pytest.raises(ConfigError, match="needs a server ssl_context"):
                await server.listen(Transport.TLS)
            host, port = await server.listen(Transport.TLS, ssl_context=ctx)
            await client.send(request("TLS"), Hop(Transport.TLS, host, port, "example.com"))
            await client_seen.wait()
            assert [m.body for m, _ in server_seen.messages] == [b"hello"]
        finally:
            await client.aclose()
            await server.aclose()

    run(main())


def test_client_tls_context_rejects_a_missing_ca_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load CA file"):
        client_tls_context(tmp_path / "missing.pem")


def test_parse_message_of_a_stream_frame_too_large() -> None:
    # The limit used by the transports is the parser's; a huge frame is refused early.
    with pytest.raises(InputTooLargeError):
        parse_message(request(body=b"x" * 70000).to_bytes())


def test_stream_gives_up_an_incomplete_message_after_the_timeout() -> None:
    """RFC 4475 §3.1.2.2 over TCP: a body shorter than its Content-Length is not waited
    for forever (issue 12)."""

    async def main() -> None:
        seen: list[str] = []

        def on_error(error: SipCertError, origin: Origin) -> None:
            seen.append(str(error))

        async with SipTransport(lambda m, o: None, on_error=on_error, incomplete_timeout=0.2) as t:
            host, port = await t.listen(Transport.TCP)
            reader, writer = await asyncio.open_connection(host, port)
            loop = asyncio.get_running_loop()
            started = loop.time()
            writer.write(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 50\r\n\r\nshort")
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the transport
            assert loop.time() - started >= 0.2
            writer.close()
        assert len(seen) == 1 and "stayed incomplete for 0.2 s" in seen[0]

    run(main())


def test_framing_error_is_answered_then_the_connection_closed() -> None:
    """The on_error response goes out before the close; framed requests are answered first."""

    async def main() -> None:
        transport: SipTransport

        def on_message(message: Request | Response, origin: Origin) -> None:
            assert isinstance(message, Request)
            reply = make_response(message, 200, to_tag="x")
            asyncio.get_running_loop().create_task(transport.reply(reply, origin))

        def on_error(error: SipCertError, origin: Origin) -> Response:
            return Response(400, "Bad Request (framing)", headers=(("Via", "SIP/2.0/TCP h"),))

        transport = SipTransport(on_message, on_error=on_error)
        async with transport:
            host, port = await transport.listen(Transport.TCP)
            reader, writer = await asyncio.open_connection(host, port)
            request = Request(
                "OPTIONS",
                "sip:a@b",
                headers=(
                    ("Via", "SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK1"),
                    ("From", "<sip:c@d>;tag=1"),
                    ("To", "<sip:a@b>"),
                    ("Call-ID", "framing-1"),
                    ("CSeq", "1 OPTIONS"),
                ),
            )
            writer.write(request.to_bytes() + b"X sip:a@b SIP/2.0\r\nl: -1\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 5)  # everything until the close
            writer.close()
        # Both answers arrived before the close (read() returned at the end of the stream).
        assert data.count(b"SIP/2.0 400 Bad Request (framing)\r\n") == 1
        assert data.count(b"SIP/2.0 200 OK\r\n") == 1

    run(main())


def test_cancel_and_wait_ends_the_tasks_and_keeps_the_callers_own_cancellation() -> None:
    """Every task is cancelled and awaited, whatever it raised; cancelling the caller while
    it waits (for a task slow to stop) reaches the caller instead of being swallowed."""

    async def main() -> None:
        async def fails() -> None:
            raise ValueError("ignored")

        async def slow_to_stop(stopping: asyncio.Event) -> None:
            try:
                await asyncio.sleep(60)
            finally:
                stopping.set()
                await asyncio.shield(asyncio.sleep(60))

        quick = asyncio.create_task(asyncio.sleep(60))
        failed = asyncio.create_task(fails())
        await asyncio.sleep(0)
        await cancel_and_wait([quick, failed])
        assert quick.cancelled() and isinstance(failed.exception(), ValueError)

        stopping = asyncio.Event()
        slow = asyncio.create_task(slow_to_stop(stopping))
        await asyncio.sleep(0)
        closer = asyncio.create_task(cancel_and_wait([slow]))
        await stopping.wait()
        closer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closer
        slow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await slow

    asyncio.run(main())


def test_no_asyncio_wait_for_in_the_package() -> None:
    """Python 3.11's ``asyncio.wait_for`` returns the result instead of raising when a
    cancellation races the awaited result (gh-86296): a loop around it then never stops and
    whoever closes it waits for ever. ``asyncio.timeout`` has no such race."""
    package = Path(__file__).parents[3] / "src" / "sipcert"
    users = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if "asyncio.wait_for(" in path.read_text(encoding="utf-8")
    ]
    assert users == []
