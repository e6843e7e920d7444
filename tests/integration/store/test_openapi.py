"""docs/openapi.yaml against a real ``sipcert serve``, with schemathesis (issue 9).

schemathesis generates requests for every operation of the document (valid and invalid
query strings, headers and bodies) and sends them over TLS with SNI ``example.com``,
trusting the test CA; every answer must be no server error and must conform to the
document: a documented status, its content type, its required headers and its schema.
The run is derandomized (Hypothesis, tests/conftest.py) and bounded in examples.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from requests.adapters import HTTPAdapter
from requests.auth import HTTPDigestAuth
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.store.conftest import USERS, StoreFiles, StoreProcess


@schemathesis.serializer("application/pkix-cert", "application/x-x509-user-cert")
def _der(ctx: Any, value: Any) -> bytes:
    """Certificate bodies go out as the bytes generated (the Store must refuse garbage)."""
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")


@schemathesis.serializer("application/x-pem-file")
def _pem(ctx: Any, value: Any) -> bytes:
    return str(value).encode("utf-8", "surrogatepass")


DOCUMENT = Path(__file__).parents[3] / "docs" / "openapi.yaml"
SCHEMA = schemathesis.openapi.from_path(DOCUMENT)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


class _SNIAdapter(HTTPAdapter):
    """Connect to 127.0.0.1 with SNI and certificate name ``example.com`` (draft §4.3)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs.update(
            ssl_context=self._context,
            server_hostname="example.com",
            assert_hostname="example.com",
        )
        super().init_poolmanager(*args, **kwargs)


@pytest.fixture(scope="module")
def openapi_store(store_files: StoreFiles) -> Iterator[StoreProcess]:
    config = store_files.root / "openapi.toml"
    # Generated PUTs answer 401; the guessing limiter must not turn them into 429s.
    config.write_text(
        "access_log = true\nauth_failures = 100000\nauth_failures_per_user = 200000\n"
        # The transparency log's /log/ resources are in the document too (issue 14).
        "[transparency]\ninterval = 0.5\n"
    )
    process = StoreProcess(store_files, extra=["--config", str(config)])
    process.start()
    try:
        yield process
    finally:
        process.stop()


def _session(store: StoreProcess) -> requests.Session:
    session = requests.Session()
    session.mount("https://", _SNIAdapter(ssl.create_default_context(cafile=store.files.ca_file)))
    session.headers["Host"] = "example.com"
    return session


@pytest.fixture(scope="module")
def sessions(openapi_store: StoreProcess) -> Iterator[list[requests.Session]]:
    """Anonymous, and alice's (requests answers the Digest challenge: PUT and DELETE get
    past the 401 to the body, query and enrollment checks, /account to its page)."""
    anonymous, alice = _session(openapi_store), _session(openapi_store)
    alice.auth = HTTPDigestAuth("alice", USERS["alice@example.com"])
    with anonymous, alice:
        yield [anonymous, alice]


@SCHEMA.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_every_answer_conforms_to_the_document(
    case: Any, openapi_store: StoreProcess, sessions: list[requests.Session]
) -> None:
    for session in sessions:
        case.call_and_validate(
            base_url=f"https://127.0.0.1:{openapi_store.port}",
            session=session,
            checks=CHECKS,
            timeout=10,
        )
