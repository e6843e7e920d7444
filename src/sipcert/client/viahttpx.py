"""What only httpx callers need: PUT and DELETE with Digest (draft §5), and httpx's types.

The Caller's GET (draft §4.5) runs on :class:`~sipcert.client.tls.StrictTransport` alone;
this module, and with it httpx (and httpcore, h11 and, when installed, trio, which httpcore
loads), is imported only by enrollment, revocation and a caller that hands the UA an httpx
client. ``sipcert fetch`` thus starts without them (issue 13, start-up time).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING

import httpx

from sipcert.errors import AuthenticationError
from sipcert.proto.digest import Algorithm, DigestClient, parse_challenges

if TYPE_CHECKING:
    from sipcert.client.http11 import HTTP11Connection
    from sipcert.client.tls import StrictTransport, _Lane

__all__ = ["DigestAuth", "HttpxTransport", "LaneBody"]


class HttpxTransport(httpx.AsyncBaseTransport):
    """A :class:`~sipcert.client.tls.StrictTransport` as httpx's transport type.

    The strict transport has httpx's interface itself (httpx takes it as it is); this gives
    it httpx's base class, for an ``httpx.AsyncClient`` typed as httpx says, without the
    strict transport importing httpx for the GET that never needs it.
    """

    def __init__(self, strict: StrictTransport) -> None:
        self.strict = strict

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.strict.handle_async_request(request)

    async def aclose(self) -> None:
        await self.strict.aclose()


class LaneBody(httpx.AsyncByteStream):
    """The body of an answer given to httpx; closing it frees the lane (and drops the
    connection when the body was not read to its end)."""

    def __init__(self, connection: HTTP11Connection, lane: _Lane, timeout: float | None) -> None:
        self._connection = connection
        self._lane: _Lane | None = lane
        self._timeout = timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._connection.body(self._timeout):
            yield chunk

    async def aclose(self) -> None:
        lane, self._lane = self._lane, None
        if lane is None:
            return
        try:
            if not self._connection.reusable:
                await self._connection.aclose()
        finally:
            lane.release()


class DigestAuth(httpx.Auth):
    """httpx auth flow answering the Store's Digest challenge (draft §5, RFC 7616).

    Uses :class:`~sipcert.proto.digest.DigestClient` (SHA-256 preferred over MD5). After a
    first exchange it answers pre-emptively with the next nonce count; a 401 with
    ``stale=true`` is answered once more with the new nonce, without asking the user again.
    A plain 401 to an answer is retried once with the next algorithm the server offers:
    a registrar row holding only an MD5 HA1 (Kamailio's ``ha1`` column) cannot check a
    SHA-256 answer, and the server cannot know that before it sees the user name. When no
    algorithm is left the 401 goes back to the caller: the credentials are wrong.
    """

    def __init__(self, username: str, password: str) -> None:
        self._client = DigestClient(username, password)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        uri = request.url.raw_path.decode("ascii")
        value = self._client.authorization(method=request.method, uri=uri)
        if value is not None:
            request.headers["Authorization"] = value
        response = yield request
        tried: list[Algorithm] = []
        stale_retried = False
        while response.status_code == 401:
            offered = response.headers.get_list("www-authenticate")
            challenges = parse_challenges(offered)
            stale = any(challenge.stale for challenge in challenges)
            if not challenges or (stale and stale_retried):
                return
            try:
                request.headers["Authorization"] = self._client.answer(
                    offered,
                    method=request.method,
                    uri=uri,
                    exclude=tried[:-1] if stale else tried,
                )
            except AuthenticationError:
                return  # every offered algorithm was refused: hand the 401 back
            if stale:
                stale_retried = True
            elif self._client.challenge is not None:
                algorithm = self._client.challenge.supported_algorithm
                if algorithm is not None:
                    tried.append(algorithm)
            response = yield request
