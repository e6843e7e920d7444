"""Location with SIP (draft §4.2) end to end: a real Kamailio answers OPTIONS for its users.

Kamailio runs ``contrib/kamailio/kamailio.cfg`` with ``-A STORE_EXAMPLE_COM=...`` (see its
README, "Location with SIP"): an OPTIONS for ``sip:bob@example.com`` that accepts
``message/external-body`` is answered by the proxy itself with an RFC 4483 reference to
``https://<Store>/search-cgi?sip=bob%40example.com``. Alice's UA sends that OPTIONS through
Kamailio with :class:`~sipcert.sip.ua.UserAgent`, then fetches from the URL with
:meth:`~sipcert.client.AsyncUA.fetch_url`: TLS to the URL's address, but the certificate
must name example.com -- the AOR's domain -- before any HTTP byte (draft §4.3, §4.5).

The Store is a real ``sipcert serve`` reading Kamailio's ``subscriber`` table, so Bob enrolls
with his SIP password (draft §5). For the refused case the URL points at a TLS server that
presents a certificate for example.net and records every byte it receives (a real Store
never presents another domain's certificate; an attacker forging the OPTIONS answer would).
No DNS is used anywhere: the resolver given to the client fails the test if asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sipcert.client import AsyncUA, ClientConfig, Credentials
from sipcert.errors import LocationError, NameMismatchError
from sipcert.proto.aor import parse_aor
from sipcert.proto.ca import TestCA
from sipcert.proto.certs import sha256_fingerprint
from sipcert.sip.locate import fetch_by_sip, locate_by_sip
from sipcert.sip.transport import Hop, Transport
from sipcert.sip.ua import Timers, UserAgent
from tests.integration.client.peers import TLSServer, server_context
from tests.integration.kamailio.conftest import (  # noqa: F401 - fixtures used by name
    ALICE,
    BOB,
    KamailioFactory,
    ca,
    ca_file,
    start_kamailio,
    store,
    subscriber_db,
)
from tests.integration.kamailio.peers import Kamailio, SipcertStore, SipEndpoint

pytestmark = pytest.mark.peer("kamailio")

T = TypeVar("T")
TIMERS = Timers(t1=0.1, t2=0.8)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 60)

    return asyncio.run(main())


class NoDNS:
    """The client's resolver: location here is by SIP, so any DNS query is a failure."""

    async def resolve(self, qname: str, rdtype: str, *, search: bool | None = None) -> Any:
        raise AssertionError(f"unexpected DNS query {rdtype} {qname}")


def store_define(port: int) -> str:
    """The -A define pointing Kamailio's example.com at a Store on 127.0.0.1:``port``."""
    return f'STORE_EXAMPLE_COM="https://127.0.0.1:{port}"'


def caller(kamailio: Kamailio, transport: Transport = Transport.UDP) -> UserAgent:
    """Alice's SIP UA with Kamailio as outbound proxy (OPTIONS needs no registration)."""
    proxy = Hop(transport, "127.0.0.1", kamailio.port)
    return UserAgent(
        ALICE.aor, password=ALICE.password, proxy=proxy, transport=transport, timers=TIMERS
    )


def client(trusted: Path, home: Path) -> AsyncUA:
    """Alice's certificate client: trusts the test CA only, and has no use for DNS."""
    return AsyncUA(ClientConfig(ca_file=trusted, home=home, cache_ttl=60), resolver=NoDNS())


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
def test_options_through_kamailio_then_strict_fetch_from_the_store(
    start_kamailio: KamailioFactory,  # noqa: F811
    store: SipcertStore,  # noqa: F811
    ca_file: Path,  # noqa: F811
    tmp_path: Path,
    transport: Transport,
) -> None:
    bob_store = ClientConfig(store=f"127.0.0.1:{store.port}", ca_file=ca_file, home=tmp_path / "b")

    async def enroll_bob() -> str:
        async with AsyncUA(bob_store) as bob:  # Bob's registration password (draft §5)
            enrolled = await bob.enroll(BOB.aor, Credentials(BOB.password))
            assert enrolled.status == 201
            return sha256_fingerprint(enrolled.certificate)

    bobs = run(enroll_bob())
    kamailio = start_kamailio([store_define(store.port)])
    url = f"https://127.0.0.1:{store.port}/search-cgi?sip=bob%40example.com"

    async def main() -> None:
        async with caller(kamailio, transport) as alice, client(ca_file, tmp_path / "a") as ua:
            location, result = await fetch_by_sip(alice, ua, BOB.aor)
            assert location.status == 200, kamailio.describe()
            assert location.urls == (url,)
            assert location.references[0].content_id == "<bob.cert@example.com>"
            assert location.problems == ()
            # Bob's certificate, fetched over TLS that proved example.com, validated, kept.
            assert [sha256_fingerprint(c) for c in result.kept] == [bobs]
            assert result.discarded == ()
            assert result.url == url
            cached = ua.cache.get(parse_aor(BOB.aor))
            assert cached is not None and cached.kept == result.kept
            verified = [e for e in ua.events if e.kind == "tls-verified"]
            assert len(verified) == 1 and verified[0].domain == "example.com"
            assert verified[0].address == "127.0.0.1" and verified[0].target.port == store.port

    run(main())
    assert store.log_contains('"GET /search-cgi?sip=bob%40example.com HTTP/1.1" 200'), (
        store.describe()
    )
    assert "OPTIONS for bob@example.com: certificates at " + url in kamailio.log()


def test_a_url_whose_server_does_not_prove_the_aor_domain_is_not_used(
    start_kamailio: KamailioFactory,  # noqa: F811
    ca: TestCA,  # noqa: F811
    ca_file: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    issued = ca.issue(["example.net"], now=datetime.now(UTC))
    impostor = TLSServer(server_context(issued, tmp_path))
    try:
        kamailio = start_kamailio([store_define(impostor.port)])

        async def main() -> None:
            async with caller(kamailio) as alice, client(ca_file, tmp_path / "a") as ua:
                with pytest.raises(NameMismatchError) as refused:
                    await fetch_by_sip(alice, ua, BOB.aor)
                assert refused.value.expected == "example.com"
                assert refused.value.presented == ["example.net"]
                assert [e.kind for e in ua.events] == ["connected", "tls-refused"]
                assert ua.cache.get(parse_aor(BOB.aor)) is None

        run(main())
    finally:
        impostor.close()  # joins its threads: every connection is fully recorded below
    # The client connected to the URL's address with SNI example.com (the AOR's domain), saw
    # example.net, and sent no HTTP request -- not a single byte of one (draft §4.5).
    assert impostor.connections, "the client never connected to the URL's server"
    assert [c.sni for c in impostor.connections] == ["example.com"] * len(impostor.connections)
    assert impostor.requests == []
    assert [bytes(c.received) for c in impostor.connections] == [b""] * len(impostor.connections)


def test_unknown_user_gets_404_and_no_certificate_location(
    start_kamailio: KamailioFactory,  # noqa: F811
    ca_file: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    kamailio = start_kamailio([store_define(9)])  # never reached

    async def main() -> None:
        async with caller(kamailio) as alice, client(ca_file, tmp_path / "a") as ua:
            location = await locate_by_sip(alice, "nobody@example.com")
            assert location.status == 404, kamailio.describe()
            assert not location.found
            assert location.explain() == (
                "no certificate location for nobody@example.com by SIP (draft §4.2): "
                "OPTIONS answered 404 Not Found: no such user"
            )
            with pytest.raises(LocationError, match="no certificate location for nobody@"):
                await fetch_by_sip(alice, ua, "nobody@example.com")
            assert ua.events == []  # nothing was fetched

            # Carol exists (an ha1-only row still is a subscriber): she gets a reference.
            carol = await locate_by_sip(alice, "carol@example.com")
            assert carol.urls == ("https://127.0.0.1:9/search-cgi?sip=carol%40example.com",)
            # example.net keeps its default Store, the draft §4.1 well-known host.
            net = await locate_by_sip(alice, "alice@example.net")
            assert net.urls == (
                "https://certificates.example.net/search-cgi?sip=alice%40example.net",
            )

    run(main())


def test_options_not_asking_for_external_body_still_goes_to_the_user(
    start_kamailio: KamailioFactory,  # noqa: F811
) -> None:
    """RFC 3261 §11: an OPTIONS for the UA's capabilities (no Accept of message/external-body)
    is not answered by the proxy; here Bob is not registered, so Kamailio says 404."""
    kamailio = start_kamailio([store_define(9)])
    with SipEndpoint() as endpoint:
        for cseq, accept in enumerate(["application/sdp", "message/external-body"], start=1):
            endpoint.send_request(
                kamailio.address,
                "OPTIONS",
                "sip:bob@example.com",
                from_uri="sip:caller@example.org",
                to_uri="sip:bob@example.com",
                call_id=f"caps-{cseq}",
                cseq=cseq,
                headers=[("Accept", accept)],
            )
            answer = endpoint.final_response(cseq)
            if accept == "application/sdp":
                assert answer.status == 404 and answer.body == b"", kamailio.describe()
            else:
                assert answer.status == 200, kamailio.describe()
                assert answer.get("Content-Type") == (
                    'message/external-body; access-type="URL"; '
                    'URL="https://127.0.0.1:9/search-cgi?sip=bob%40example.com"'
                )
