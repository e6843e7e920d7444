"""``sipcert selftest``: walk through the protocol core on embedded defaults.

Each step runs the real code of :mod:`sipcert.proto` (no network, no files) and checks
the outcome the draft requires, printing one line per check. Any failed check ends the run
with exit code 1 and the reason.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sipcert.errors import (
    AuthenticationError,
    DecryptionError,
    ForbiddenError,
    NameMismatchError,
    SipCertError,
)
from sipcert.proto.aor import parse_aor
from sipcert.proto.ca import TestCA
from sipcert.proto.certs import (
    DiscardReason,
    certificate_der,
    generate_identity,
    sha256_fingerprint,
    validate_retrieved,
)
from sipcert.proto.digest import DigestClient, DigestServer, StoredCredential
from sipcert.proto.mime import MimePart, parse_multipart
from sipcert.proto.names import check_server_certificate
from sipcert.proto.smime import decrypt_and_verify, sign_and_encrypt
from sipcert.proto.store import StorePolicy, authorize_upload, certificates_response


class CheckFailedError(SipCertError):
    """A self-test expectation did not hold."""

    exit_code = 1


def register(commands: Any) -> None:
    """Add the ``selftest`` subcommand."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "selftest",
        help="walk through the protocol core (certificates, Digest, S/MIME) offline",
        description=__doc__,
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object with every step and check"
    )
    parser.set_defaults(run=run)


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailedError(f"self-test check failed: {what}")


def _expect_raises(error: type[SipCertError], action: Callable[[], object], what: str) -> str:
    try:
        action()
    except error as exc:
        return str(exc)
    raise CheckFailedError(f"self-test check failed: {what} was not refused")


def run(args: argparse.Namespace) -> int:
    """Run every step; print a line per check (with ``--json``, one object at the end)."""
    now = datetime.now(UTC)
    alice = parse_aor("sip:alice@example.com")
    bob = parse_aor("bob@example.net")
    steps: list[dict[str, Any]] = []

    def heading(title: str) -> None:
        steps.append({"title": title, "checks": []})
        if not args.json:
            print(title)

    def say(line: str) -> None:
        steps[-1]["checks"].append(line)
        if not args.json:
            print(f"  ok  {line}")

    heading("Step 0 - each UA makes a key and a self-signed certificate (draft §1, §5.1)")
    alice_phone = generate_identity(alice, now=now)
    bob_phone = generate_identity(bob, now=now)
    bob_laptop = generate_identity(bob, now=now)
    say(f"{alice}: 1 device, {bob}: 2 devices, RSA-2048, 30-day certificates")

    heading("Step 0 - enrollment is Digest-challenged with the SIP secret (draft §5)")
    server = DigestServer(b"selftest-nonce-secret-0123456789", "example.net")
    password = secrets.token_urlsafe(12)  # Bob's SIP secret, shared with the registrar
    client = DigestClient("bob", password)
    target = "/search-cgi?sip=bob%40example.net"
    clock = time.time()
    authorization = client.answer(server.challenges(clock), method="PUT", uri=target)
    stored = StoredCredential(password=password)
    user = server.authenticate(
        authorization, lambda _: stored, method="PUT", request_uri=target, now=clock
    )
    _expect(user == "bob", "Digest authenticates bob")
    say(f"Digest {client.challenge.algorithm if client.challenge else '?'} accepted for bob")
    _expect_raises(
        AuthenticationError,
        lambda: server.authenticate(
            authorization, lambda _: stored, method="PUT", request_uri=target, now=clock
        ),
        "a replayed Digest answer",
    )
    say("the same Authorization replayed is refused (nonce count)")

    policy = StorePolicy()
    for device in (bob_phone, bob_laptop):
        authorize_upload(
            device.certificate,
            bob,
            digest_username="bob",
            tls_domain="example.net",
            now=now,
            policy=policy,
        )
    say("the Store accepts both of Bob's certificates: every SAN URI is bob@example.net")
    reason = _expect_raises(
        ForbiddenError,
        lambda: authorize_upload(
            alice_phone.certificate,
            bob,
            digest_username="bob",
            tls_domain="example.net",
            now=now,
            policy=policy,
        ),
        "Bob uploading Alice's certificate",
    )
    say(f"Bob uploading Alice's certificate is refused ({reason.split(' (')[0]})")

    heading("Step 1 - the caller checks the Store's TLS name, then retrieves (draft §4.3, §4.5)")
    ca = TestCA.create(now=now)
    check_server_certificate(ca.issue(["example.net"], now=now).certificate, "example.net")
    say("a server certificate naming example.net is accepted for bob@example.net")
    for names in (["*.example.net"], ["certificates.example.net"], ["example.net.evil.org"]):
        bad = ca.issue(names, now=now).certificate
        _expect_raises(
            NameMismatchError,
            lambda bad=bad: check_server_certificate(bad, "example.net"),  # type: ignore[misc]
            f"a Store certificate for {names[0]}",
        )
        say(f"a server certificate naming only {names[0]} is refused")

    answer = certificates_response(
        [certificate_der(d.certificate) for d in (bob_phone, bob_laptop)],
        [sha256_fingerprint(d.certificate) for d in (bob_phone, bob_laptop)],
        max_age=policy.max_age,
    )
    content_type = dict(answer.headers)["Content-Type"]
    bodies = [p.body for p in parse_multipart(content_type, answer.body).parts]
    expired = generate_identity(bob, now=now - timedelta(days=60))
    result = validate_retrieved(
        [*bodies, certificate_der(expired.certificate), certificate_der(alice_phone.certificate)],
        bob,
        now,
    )
    _expect(len(result.kept) == 2, "both of Bob's certificates are kept")
    reasons = {d.reason for d in result.discarded}
    _expect(
        reasons == {DiscardReason.EXPIRED, DiscardReason.SAN_MISMATCH},
        "the expired and the foreign certificate are discarded",
    )
    say(f"multipart/mixed answer: {len(result.kept)} kept; expired and foreign discarded")

    heading("Steps 2-4 - Alice signs with her key and encrypts to every Bob device (draft §4.4)")
    message = MimePart(content_type="text/plain; charset=utf-8", body=b"Hello Bob, it's Alice.")
    protected = sign_and_encrypt(
        message,
        alice_phone.key,
        alice_phone.certificate,
        list(result.kept),
    )
    say(f"{protected.content_type.split(';')[0]}, {len(protected.body)} bytes, 2 recipients")

    heading("Step 5 - each of Bob's devices decrypts and checks Alice's signature")
    for name, device in (("phone", bob_phone), ("laptop", bob_laptop)):
        verified = decrypt_and_verify(protected, device.key, device.certificate)
        _expect(verified.content.body == message.body, f"Bob's {name} reads the message")
        signer = validate_retrieved([verified.signer], alice, now)
        _expect(len(signer.kept) == 1, "the signer certificate names alice@example.com")
        say(f"Bob's {name} decrypted it; signature verified as {alice}")
    _expect_raises(
        DecryptionError,
        lambda: decrypt_and_verify(protected, alice_phone.key, alice_phone.certificate),
        "decryption by a non-recipient",
    )
    say("a key that was not a recipient cannot decrypt it")
    if args.json:
        print(json.dumps({"ok": True, "exit_code": 0, "steps": steps}, indent=2))
    else:
        print("selftest passed")
    return 0
