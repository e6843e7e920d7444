"""What the lean GET refuses in a Store's answer that httpx used to accept silently, over
real TLS on 127.0.0.1: a Content-Encoding it never asked for (it sends no Accept-Encoding)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sipcert.client import AsyncUA, ClientConfig
from sipcert.errors import StoreResponseError
from sipcert.proto.ca import TestCA
from tests.integration.client.peers import Request, TLSServer, server_context


def test_an_encoded_answer_not_asked_for_is_refused(
    ca: TestCA, ca_file: Path, tmp_path: Path
) -> None:
    def gzip_answer(request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        assert "accept-encoding" not in request.headers
        headers = [("Content-Type", "application/pkix-cert"), ("Content-Encoding", "gzip")]
        return 200, headers, b"\x1f\x8b not a certificate"

    context = server_context(ca.issue(["example.com"], now=datetime.now(UTC)), tmp_path)
    server = TLSServer(context, {}, gzip_answer)
    config = ClientConfig(store=f"127.0.0.1:{server.port}", ca_file=ca_file, home=tmp_path / "home")

    async def main() -> None:
        async with AsyncUA(config) as ua:
            with pytest.raises(StoreResponseError, match="Content-Encoding not asked for: gzip"):
                await ua.fetch("bob@example.com")

    try:
        asyncio.run(main())
    finally:
        server.close()
    assert len(server.requests) == 1
