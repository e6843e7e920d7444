"""sipcert.client.net's failure kinds: the walk and the transport judge a failure the same
whether this module raised it or a caller's httpcore-based backend did (issue 13: the GET
path no longer imports httpcore, but tests and callers may still hand it httpcore streams)."""

from __future__ import annotations

import asyncio
import socket

import httpcore
import pytest

from sipcert.client import net
from sipcert.client.tls import CONNECT, in_words


def test_httpcore_kinds_are_caught_alongside_ours() -> None:
    assert {net.ConnectError, net.ConnectTimeout, httpcore.ConnectError} <= set(
        net.connect_failures()
    )
    assert {net.NetworkError, httpcore.NetworkError} <= set(net.network_failures())
    assert {net.NetworkTimeout, httpcore.TimeoutException} <= set(net.timeout_failures())
    assert set(net.stream_failures(OSError)) == {
        *net.network_failures(),
        *net.timeout_failures(),
        OSError,
    }
    # Each kind sits where httpcore has it: a read or write error is a network error, not
    # a connect error; every timeout is a timeout and no network error.
    assert issubclass(net.ReadError, net.NetworkError)
    assert not issubclass(net.ReadError, net.ConnectError)
    for timeout in (net.ConnectTimeout, net.ReadTimeout, net.WriteTimeout):
        assert issubclass(timeout, net.NetworkTimeout)
        assert not issubclass(timeout, net.NetworkError)


def test_our_kinds_read_as_httpcores_did() -> None:
    assert in_words(net.ReadTimeout("x"), None, 2.0, "reading") == "reading timed out after 2 s"
    refused = net.ConnectError("refused")
    refused.__cause__ = ConnectionRefusedError(111, "refused")
    assert in_words(refused, "127.0.0.1:9", None, CONNECT) == "connection refused by 127.0.0.1:9"


def test_a_refused_connect_is_our_connect_error() -> None:
    with socket.socket() as probe:  # a port nothing listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

        async def connect() -> None:
            await net.AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)

        with pytest.raises(net.ConnectError) as caught:
            asyncio.run(connect())
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
