"""The lean CMS reader against the asn1crypto path: the check, and the corpus it runs on.

:func:`check_envelope` and :func:`check_signed` run one input through both readers of
:mod:`sipcert.proto.cms`: the lean one (``_lean_decrypt``, ``_lean_parse_signed``) must give
exactly what the asn1crypto path gives, or defer to it -- never accept what that path
refuses. The interoperability tests (tests/integration/cms) call :func:`record` on every
envelope and signature a peer made: it runs the checks and, when ``SIPCERT_CMS_CORPUS``
names a directory, keeps the input there as a self-contained JSON vector (DER, key and
certificates) for tests/unit/proto/test_cms_lean.py. tests/unit/proto/vectors/cms/README.md
says how the stored corpus was made.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sipcert.errors import SipCertError
from sipcert.proto import cms
from sipcert.proto.der import NotLean

DEFER = "defer"


def _outcome(action: Callable[[], Any]) -> Any:
    try:
        return ("ok", action())
    except SipCertError as exc:
        return (type(exc).__name__, str(exc))


@contextmanager
def _general_path_only() -> Iterator[None]:
    """Both lean readers switched off: what the asn1crypto path alone answers."""
    with (
        mock.patch.object(cms, "_lean_decrypt", side_effect=NotLean),
        mock.patch.object(cms, "_lean_parse_signed", side_effect=NotLean),
    ):
        yield


@contextmanager
def _fixed_random() -> Iterator[None]:
    """RFC 3218's random key made fixed, so both paths decrypt with the same wrong key."""
    with mock.patch.object(cms, "_random", side_effect=lambda size: bytes(size)):
        yield


def lean_decrypt(der: bytes, key: cms.DecryptionKey, cert: x509.Certificate) -> Any:
    """The lean reader's answer: the plaintext, or :data:`DEFER`."""
    with _fixed_random():
        try:
            return cms._lean_decrypt(der, key, cert)
        except cms._LEAN_FALLBACK:
            return DEFER


def check_envelope(der: bytes, key: cms.DecryptionKey, cert: x509.Certificate) -> Any:
    """Assert the lean reader agrees with the asn1crypto path; return the lean answer."""
    lean = lean_decrypt(der, key, cert)
    with _fixed_random(), _general_path_only():
        general = _outcome(lambda: cms.decrypt_enveloped(der, key, cert))
    if lean != DEFER:
        assert general == ("ok", lean), (
            f"lean reader accepted what the general path gives as {general}"
        )
    # and the public function (lean first, then general) answers as the general path does
    with _fixed_random():
        assert _outcome(lambda: cms.decrypt_enveloped(der, key, cert)) == general
    return lean


def _signers(parsed: tuple[bytes | None, list[Any]]) -> tuple[bytes | None, list[Any]]:
    embedded, signers = parsed
    shown = [s if not isinstance(s, SipCertError) else (type(s).__name__, str(s)) for s in signers]
    return embedded, shown


def _report(result: cms.SignedContent) -> Any:
    return (
        result.content,
        [
            (
                None
                if r.certificate is None
                else r.certificate.public_bytes(serialization.Encoding.DER),
                None if r.error is None else (type(r.error).__name__, str(r.error)),
                r.capabilities,
            )
            for r in result.signers
        ],
    )


def check_signed(
    der: bytes, content: bytes | None, certificates: Sequence[x509.Certificate] = ()
) -> Any:
    """Assert the lean SignedData reader agrees with the asn1crypto path; its answer."""
    try:
        lean: Any = _signers(cms._lean_parse_signed(der, certificates))
    except cms._LEAN_FALLBACK:
        lean = DEFER
    with _general_path_only():
        general = _outcome(lambda: _signers(cms._parse_signed(der, certificates)))
        verified = _outcome(
            lambda: _report(cms.verify_signed(der, content, certificates=certificates))
        )
    if lean != DEFER:
        assert general == ("ok", lean), (
            f"lean reader accepted what the general path gives as {general}"
        )
    assert (
        _outcome(lambda: _report(cms.verify_signed(der, content, certificates=certificates)))
        == verified
    )
    return lean


# --- the corpus ----------------------------------------------------------------------------


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def record(
    name: str,
    der: bytes,
    *,
    key: Any = None,
    cert: x509.Certificate | None = None,
    content: bytes | None = None,
    certificates: Sequence[x509.Certificate] = (),
) -> None:
    """Check a peer's envelope (``key`` and ``cert`` given) or SignedData; keep it if asked."""
    if key is not None:
        assert cert is not None
        check_envelope(der, key, cert)
    else:
        check_signed(der, content, certificates)
    directory = os.environ.get("SIPCERT_CMS_CORPUS")
    if directory:
        _store(Path(directory), name, der, key, cert, content, certificates)


def _store(
    directory: Path,
    name: str,
    der: bytes,
    key: Any,
    cert: x509.Certificate | None,
    content: bytes | None,
    certificates: Sequence[x509.Certificate],
) -> None:
    """Write one vector; an envelope's devices share one file, keys are kept once each."""
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_")
    path = directory / f"{slug}.json"
    vector: dict[str, Any] = {"der": base64.b64encode(der).decode()}
    if key is not None and cert is not None:
        cert_der = cert.public_bytes(serialization.Encoding.DER)
        key_id = hashlib.sha256(cert_der).hexdigest()[:16]
        (directory / "keys").mkdir(exist_ok=True)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ) + cert.public_bytes(serialization.Encoding.PEM)
        (directory / "keys" / f"{key_id}.pem").write_bytes(pem)
        recipients = []
        if path.exists():
            old = json.loads(path.read_text())
            assert old["der"] == vector["der"], f"{name}: two envelopes under one name"
            recipients = old["recipients"]
        vector["kind"] = "envelope"
        vector["recipients"] = sorted({*recipients, key_id})
    else:
        vector["kind"] = "signed"
        vector["content"] = None if content is None else base64.b64encode(content).decode()
        vector["certificates"] = [_pem(c) for c in certificates]
    path.write_text(json.dumps(vector, indent=1, sort_keys=True) + "\n")


@dataclass(frozen=True)
class Vector:
    """One stored input of the corpus."""

    name: str
    kind: str
    der: bytes
    key: Any = None
    cert: x509.Certificate | None = None
    content: bytes | None = None
    certificates: tuple[x509.Certificate, ...] = ()


def load_corpus(directory: Path) -> list[Vector]:
    """Every vector stored in ``directory``: one per (envelope, recipient) or SignedData."""
    vectors = []
    for path in sorted(directory.glob("*.json")):
        raw = json.loads(path.read_text())
        der = base64.b64decode(raw["der"])
        if raw["kind"] == "envelope":
            for key_id in raw["recipients"]:
                pem = (directory / "keys" / f"{key_id}.pem").read_bytes()
                key = serialization.load_pem_private_key(pem, password=None)
                cert = x509.load_pem_x509_certificate(pem[pem.index(b"-----BEGIN CERT") :])
                name = f"{path.stem}/{key_id}"
                vectors.append(Vector(name, "envelope", der, key=key, cert=cert))
        else:
            content = None if raw["content"] is None else base64.b64decode(raw["content"])
            extra = tuple(x509.load_pem_x509_certificate(p.encode()) for p in raw["certificates"])
            vectors.append(Vector(path.stem, "signed", der, content=content, certificates=extra))
    return vectors
