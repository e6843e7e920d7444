"""HTTP Digest authentication, both sides (RFC 7616, compatible with RFC 2617).

Seed: the shared vocabulary (algorithms, stored credentials, HA1). The rest of the module
(challenges, verification, nonces, client) is being written against it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Algorithm(StrEnum):
    """Digest algorithms we offer and accept, strongest first (RFC 7616 §3.3)."""

    SHA256 = "SHA-256"
    MD5 = "MD5"


def _hash(algorithm: Algorithm, data: str) -> str:
    name = "sha256" if algorithm is Algorithm.SHA256 else "md5"
    return hashlib.new(name, data.encode("utf-8"), usedforsecurity=False).hexdigest()


def compute_ha1(algorithm: Algorithm, username: str, realm: str, password: str) -> str:
    """``H(username:realm:password)`` as stored by registrars (RFC 7616 §3.4.2)."""
    return _hash(algorithm, f"{username}:{realm}:{password}")


@dataclass(frozen=True)
class StoredCredential:
    """What a credentials source holds for one user in one realm.

    Either the plaintext ``password`` (every algorithm works) or precomputed HA1 values per
    algorithm (only those algorithms work; e.g. Kamailio's ``ha1`` column is MD5 only).
    """

    password: str | None = None
    ha1: Mapping[Algorithm, str] = field(default_factory=dict)

    def ha1_for(self, algorithm: Algorithm, username: str, realm: str) -> str | None:
        """HA1 for ``algorithm``, or ``None`` when this credential cannot serve it."""
        if self.password is not None:
            return compute_ha1(algorithm, username, realm, self.password)
        return self.ha1.get(algorithm)
