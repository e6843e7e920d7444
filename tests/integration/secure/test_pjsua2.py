"""Our protected MESSAGE through an independent SIP stack: pjsua2 (pjsip) behind Kamailio.

A pjsua2 account registers as bob@example.net at Kamailio; Alice's ``SecureUA`` fetches
Bob's certificate from his Store, signs and encrypts, and sends through Kamailio. pjsua2
hands the raw body to the application (its MESSAGE content-type check is compiled out);
the test then opens that body with ``openssl cms`` (not with our code): the binary DER
AuthEnvelopedData survived pjsua2's binding octet for octet, and openssl decrypts it with
Bob's key and verifies Alice's signature.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from sipcert.client import AsyncUA, Credentials
from sipcert.proto.aor import parse_aor
from sipcert.proto.mime import MimePart, parse_mime_part, parse_multipart
from sipcert.proto.sip import parse_message
from sipcert.sip.transport import Hop, Transport
from tests.conftest import IN_CI
from tests.integration.secure.conftest import ALICE, BOB, KamailioFactory, Network, run
from tests.integration.secure.test_secure_e2e import secure_device

pytestmark = [pytest.mark.peer("kamailio"), pytest.mark.peer("dnsmasq", "openssl")]
PEER = Path(__file__).with_name("pjsua2_peer.py")


def _openssl(*args: str | Path) -> bytes:
    result = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def test_pjsua2_receives_our_protected_message_through_kamailio(
    start_kamailio: KamailioFactory,
    network: Network,
    tmp_path: Path,
) -> None:
    try:
        import pjsua2  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail(
                "pjsua2 (PyPI pjsua2-python) is not installed (CI=true: peers are required)"
            )
        pytest.skip("pjsua2 (PyPI pjsua2-python) is not installed")

    kamailio = start_kamailio(())
    proxy = Hop(Transport.TCP, "127.0.0.1", kamailio.port)
    out = tmp_path / "pjsua2"
    out.mkdir()

    async def main() -> None:
        async with (
            AsyncUA(network.config(tmp_path / "alice-home")) as alice_client,
            AsyncUA(network.config(tmp_path / "bob-home")) as bob_client,
        ):
            for client, who in ((alice_client, ALICE), (bob_client, BOB)):
                await client.enroll(who.aor, Credentials(who.password), validity=timedelta(days=9))
            with subprocess.Popen(
                [
                    sys.executable,
                    PEER,
                    str(kamailio.port),
                    BOB.username,
                    BOB.domain,
                    BOB.password,
                    out,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ) as peer:
                try:
                    assert peer.stdout is not None and peer.stderr is not None
                    # pjlib prints its own start-up lines first; the script's verdict follows
                    lines = [peer.stdout.readline().strip()]
                    while lines[-1] not in (b"registered", b"not-registered", b""):
                        lines.append(peer.stdout.readline().strip())
                    assert lines[-1] == b"registered", (lines, kamailio.describe())
                    async with secure_device(alice_client, ALICE, "default", proxy) as alice:
                        sent = await alice.send_message(BOB.aor, "hello pjsua2")
                    assert sent.status == 200, (sent, kamailio.describe())
                    assert peer.wait(timeout=30) == 0, peer.stderr.read()
                finally:
                    if peer.poll() is None:
                        peer.kill()
            bob = bob_client.home.identity(parse_aor(BOB.aor))
            (tmp_path / "bob.key").write_bytes(
                bob.key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            (tmp_path / "bob.pem").write_bytes(
                bob.certificate.public_bytes(serialization.Encoding.PEM)
            )
            alice_cert = alice_client.home.certificate(parse_aor(ALICE.aor))
            (tmp_path / "alice.pem").write_bytes(
                alice_cert.public_bytes(serialization.Encoding.PEM)
            )

    run(main())
    # What pjsua2's onInstantMessage gives for a multipart body: the Content-Type without
    # its parameters (no boundary) and an empty msgBody. The whole message it also hands
    # over (rdata.wholeMsg) carries the body octet for octet.
    assert (out / "content-type").read_text() == "multipart/mixed"
    assert (out / "body").read_bytes() == b""
    message = parse_message((out / "message").read_bytes(), datagram=False)
    body = message.body
    content_type = message.get("Content-Type") or ""
    assert MimePart(content_type, body).media_type == "multipart/mixed"
    enveloped = next(
        p
        for p in parse_multipart(content_type, body).parts
        if p.media_type == "application/pkcs7-mime"
    )
    assert enveloped.params["smime-type"] == "authEnveloped-data"
    (tmp_path / "env.der").write_bytes(enveloped.body)
    signed = _openssl(
        "cms", "-decrypt", "-binary", "-inform", "DER", "-in", tmp_path / "env.der",
        "-recip", tmp_path / "bob.pem", "-inkey", tmp_path / "bob.key",
    )  # fmt: skip
    inner = parse_mime_part(signed)
    parts = parse_multipart(inner.content_type, inner.body)
    (tmp_path / "content.bin").write_bytes(parts.raw_parts[0])
    (tmp_path / "sig.der").write_bytes(parts.parts[1].body)
    text = _openssl(
        "cms", "-verify", "-binary", "-inform", "DER", "-in", tmp_path / "sig.der",
        "-content", tmp_path / "content.bin", "-CAfile", tmp_path / "alice.pem",
    )  # fmt: skip
    assert text.endswith(b"hello pjsua2")


def test_our_ua_verifies_an_openssl_body_that_pjsua2_sends_through_kamailio(
    start_kamailio: KamailioFactory,
    network: Network,
    tmp_path: Path,
) -> None:
    """openssl signs (Bob's enrolled key) and encrypts (to Alice, AES-128-GCM); pjsua2 sends.

    pjsua2's ``content`` is a ``str``, so the S/MIME part goes base64 inside a
    multipart/mixed (``Content-Transfer-Encoding: base64``, which RFC 8591 allows where a
    path is not binary-clean); our UA decodes it, decrypts, verifies and checks Bob's
    signer at Bob's Store (draft step 5).
    """
    try:
        import pjsua2  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail(
                "pjsua2 (PyPI pjsua2-python) is not installed (CI=true: peers are required)"
            )
        pytest.skip("pjsua2 (PyPI pjsua2-python) is not installed")
    kamailio = start_kamailio(())
    proxy = Hop(Transport.TCP, "127.0.0.1", kamailio.port)

    async def main() -> None:
        async with (
            AsyncUA(network.config(tmp_path / "alice-home")) as alice_client,
            AsyncUA(network.config(tmp_path / "bob-home")) as bob_client,
        ):
            for client, who in ((alice_client, ALICE), (bob_client, BOB)):
                await client.enroll(who.aor, Credentials(who.password), validity=timedelta(days=9))
            bob = bob_client.home.identity(parse_aor(BOB.aor))
            (tmp_path / "bob.key").write_bytes(
                bob.key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            (tmp_path / "bob.pem").write_bytes(
                bob.certificate.public_bytes(serialization.Encoding.PEM)
            )
            alice_cert = alice_client.home.certificate(parse_aor(ALICE.aor))
            (tmp_path / "alice.pem").write_bytes(
                alice_cert.public_bytes(serialization.Encoding.PEM)
            )
            (tmp_path / "inner.txt").write_bytes(
                b"Content-Type: text/plain; charset=utf-8\r\n\r\nhello Alice, from pjsua2"
            )
            _openssl(
                "cms", "-sign", "-binary", "-crlfeol", "-in", tmp_path / "inner.txt",
                "-signer", tmp_path / "bob.pem", "-inkey", tmp_path / "bob.key",
                "-outform", "SMIME", "-out", tmp_path / "signed.eml",
            )  # fmt: skip
            signed = parse_mime_part((tmp_path / "signed.eml").read_bytes())
            (tmp_path / "signed.mime").write_bytes(signed.to_bytes())
            _openssl(
                "cms", "-encrypt", "-binary", "-aes-128-gcm", "-in", tmp_path / "signed.mime",
                "-outform", "DER", "-out", tmp_path / "env.der", tmp_path / "alice.pem",
            )  # fmt: skip
            envelope = base64.encodebytes((tmp_path / "env.der").read_bytes()).replace(
                b"\n", b"\r\n"
            )
            boundary = "pjsua2-openssl-0"
            (tmp_path / "body.txt").write_bytes(
                f"--{boundary}\r\n".encode()
                + b"Content-Type: application/pkcs7-mime; smime-type=authEnveloped-data; "
                b"name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                + envelope
                + f"--{boundary}--\r\n".encode()
            )
            async with secure_device(alice_client, ALICE, "default", proxy) as alice:
                assert (await alice.register()).status == 200, kamailio.describe()
                with subprocess.Popen(
                    [sys.executable, PEER, str(kamailio.port), BOB.username, BOB.domain,
                     BOB.password, tmp_path, f"sip:{ALICE.aor}",
                     f"multipart/mixed; boundary={boundary}", tmp_path / "body.txt"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                ) as peer:  # fmt: skip
                    try:
                        received = await asyncio.wait_for(alice.received.get(), 30)
                        assert peer.wait(timeout=30) == 0, peer.communicate()
                    finally:
                        if peer.poll() is None:
                            peer.kill()
            assert received.kind == "message"
            assert str(received.outcome) == "verified as bob@example.net", received.outcome
            assert received.text == "hello Alice, from pjsua2"
            assert received.status == 200

    run(main())
