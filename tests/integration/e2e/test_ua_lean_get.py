"""The lean GET (client/http11.py, issue 13) against a real ``sipcert serve``, through a TCP
relay that counts the connections the Store is given and can close them like a Store
closing an idle keep-alive connection.

The relay only copies bytes, so TLS (SNI, the exact name rule of draft §4.3) runs end to
end between the UA and the Store; the UA reaches it with ``store=`` (no DNS).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sipcert.client import AsyncUA, ClientConfig, Credentials
from sipcert.errors import TransportError
from tests.integration.e2e.conftest import password
from tests.integration.store.conftest import StoreProcess

BOB = "bob@example.com"
DAVE = "dave@example.com"


class Relay:
    """127.0.0.1:``port`` → the Store; ``accepted`` counts connections."""

    def __init__(self, store_port: int) -> None:
        self.store_port = store_port
        self.accepted = 0
        #: Close the next connection that sends a request, without forwarding it.
        self.drop_next_request = False
        self.dropped = 0
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.store_port)
        pair = (writer, up_writer)
        self._pairs.append(pair)
        handshaken = asyncio.Event()

        async def copy(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, upstream: bool
        ) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    if upstream and handshaken.is_set() and self.drop_next_request:
                        self.drop_next_request = False
                        self.dropped += 1
                        break
                    sink.write(data)
                    await sink.drain()
                    if not upstream and len(data) > 0:
                        handshaken.set()  # the Store has spoken: what follows are requests
            self.close_pair(pair)

        await asyncio.gather(
            copy(reader, up_writer, upstream=True), copy(up_reader, writer, upstream=False)
        )

    def close_pair(self, pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        for side in pair:
            side.close()
        if pair in self._pairs:
            self._pairs.remove(pair)

    def close_all(self) -> None:
        """What a Store does to idle keep-alive connections at its timeout."""
        for pair in list(self._pairs):
            self.close_pair(pair)

    async def stop(self) -> None:
        self.close_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Let the loop run until ``condition()`` holds (the async form of ``wait_for``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def relayed_ua(
    store: StoreProcess, home: Path, *, transparency: bool = False
) -> AsyncIterator[tuple[AsyncUA, Relay, list[str]]]:
    relay = Relay(store.port)
    await relay.start()
    lines: list[str] = []
    config = ClientConfig(
        store=f"127.0.0.1:{relay.port}",
        ca_file=store.files.ca_file,
        home=home,
        transparency=transparency,
    )
    try:
        async with AsyncUA(config, narrate=lines.append) as ua:
            yield ua, relay, lines
    finally:
        await relay.stop()


def run(work: Awaitable[None]) -> None:
    asyncio.run(work)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def enrolled(store: StoreProcess, tmp_path_factory: pytest.TempPathFactory) -> StoreProcess:
    """bob and dave hold one certificate each, enrolled through the same transport (the
    PUT with Digest goes over httpx and the lanes)."""

    async def main() -> None:
        async with relayed_ua(store, tmp_path_factory.mktemp("home")) as (ua, _, _):
            for aor in (BOB, DAVE):
                assert (await ua.enroll(aor, Credentials(password(aor)))).status == 201

    run(main())
    return store


def test_sequential_fetches_use_one_connection_of_the_store(
    enrolled: StoreProcess, tmp_path: Path
) -> None:
    async def main() -> None:
        async with relayed_ua(enrolled, tmp_path) as (ua, relay, _):
            for _ in range(20):
                assert len((await ua.fetch(BOB)).kept) == 1
            assert relay.accepted == 1
            assert len(ua.transport.connections) == 1
            assert ua.transport.connections[0].answered == 20

    run(main())


def test_a_connection_the_store_closed_while_idle_is_replaced(
    enrolled: StoreProcess, tmp_path: Path
) -> None:
    async def main() -> None:
        async with relayed_ua(enrolled, tmp_path) as (ua, relay, _):
            assert len((await ua.fetch(BOB)).kept) == 1
            first = ua.transport.connections[0]
            relay.close_all()
            await until(lambda: not first.reusable, "the UA to see the close")
            assert len((await ua.fetch(BOB)).kept) == 1
            assert relay.accepted == 2
            assert [e.kind for e in ua.events] == ["connected", "tls-verified"] * 2

    run(main())


def test_a_get_the_store_closed_without_answering_is_sent_once_more(
    enrolled: StoreProcess, tmp_path: Path
) -> None:
    """The race of an idle close: the request went out on a connection the Store was
    closing. A GET is idempotent, so it goes once more on a new, verified connection."""

    async def main() -> None:
        async with relayed_ua(enrolled, tmp_path) as (ua, relay, _):
            assert len((await ua.fetch(BOB)).kept) == 1
            relay.drop_next_request = True
            assert len((await ua.fetch(BOB, use_cache=False)).kept) == 1
            assert (relay.dropped, relay.accepted) == (1, 2)
            assert [e.kind for e in ua.events] == ["connected", "tls-verified"] * 2

    run(main())


def test_a_delete_the_store_closed_without_answering_is_not_sent_again(
    enrolled: StoreProcess, tmp_path: Path
) -> None:
    async def main() -> None:
        async with relayed_ua(enrolled, tmp_path) as (ua, relay, _):
            assert len((await ua.fetch(DAVE)).kept) == 1
            relay.drop_next_request = True
            with pytest.raises(TransportError, match="closed the connection without answering"):
                await ua.revoke(DAVE, Credentials(password(DAVE)), everything=True)
            assert (relay.dropped, relay.accepted) == (1, 1)
            assert len((await ua.fetch(DAVE)).kept) == 1  # the DELETE never reached the Store

    run(main())


def test_a_404_on_log_vkey_is_asked_once_per_connection(
    enrolled: StoreProcess, tmp_path: Path
) -> None:
    """This Store keeps no log. With the check on (the CLI's default) and no cache, the
    connection that answered 404 on /log/vkey is believed for the next fetches on it; a new
    connection asks again (docs/transparency.md)."""

    async def main() -> None:
        async with relayed_ua(enrolled, tmp_path, transparency=True) as (ua, relay, lines):
            for _ in range(3):
                assert len((await ua.fetch(BOB)).kept) == 1
            relay.close_all()
            await until(lambda: not ua.transport.connections[0].reusable, "the close")
            assert len((await ua.fetch(BOB)).kept) == 1
            said = [line for line in lines if "publishes no transparency log" in line]
            assert said == [
                "example.com publishes no transparency log",
                "example.com publishes no transparency log (said on this connection)",
                "example.com publishes no transparency log (said on this connection)",
                "example.com publishes no transparency log",
            ]

    run(main())
