"""Every ``python`` example of docs/api.md and docs/sip.md runs, as written, against a real Store.

The examples are what UA developers copy, so they are executed rather than read: each file's
blocks run in order in one namespace (later blocks use names from earlier ones), in an empty
folder, against a real ``sipcert serve`` (tests/integration/store's :class:`StoreProcess`)
whose users have the passwords the docs use. The docs name the development Store of the
README through ``SIPCERT_STORE`` and ``SIPCERT_CA_FILE`` with that Store's defaults; this test
sets those two variables to its own Store, and nothing else differs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipcert.client.fetch import DigestAuth
from sipcert.server.credentials import FileCredentials
from tests.integration.store.conftest import StoreProcess, make_store_files

DOCS = Path(__file__).parents[3] / "docs"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
#: The users and passwords of the docs' examples (README: ``sipcert user add``).
PASSWORDS = {"alice@example.com": "alice-password", "bob@example.com": "bob-password"}


@pytest.fixture(scope="module")
def doc_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreProcess]:
    files = make_store_files(tmp_path_factory.mktemp("docs-store"))
    users = FileCredentials(files.users_file)
    for aor, password in PASSWORDS.items():
        users.set_password(aor, password)
    # The development Store's policy (StorePolicy defaults), not the strict test one.
    process = StoreProcess(files, extra=["--max-lifetime-days", "92", "--max-per-aor", "10"])
    process.start()
    try:
        yield process
    finally:
        process.stop()


def revoke_everything(store: StoreProcess) -> None:
    """Each file's examples start from an empty Store, as a reader's would."""
    with store.client("example.com") as client:
        for aor, password in PASSWORDS.items():
            user = aor.partition("@")[0]
            url = store.url("example.com", f"/search-cgi?email={user}%40example.com")
            answer = client.delete(url, auth=DigestAuth(user, password))
            assert answer.status_code in (204, 404), answer.text


def examples(name: str) -> list[str]:
    return _BLOCK.findall((DOCS / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["api.md", "sip.md"])
def test_every_python_example_runs(
    name: str, doc_store: StoreProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = examples(name)
    assert blocks, f"docs/{name} has no python examples"
    revoke_everything(doc_store)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIPCERT_STORE", f"127.0.0.1:{doc_store.port}")
    monkeypatch.setenv("SIPCERT_CA_FILE", str(doc_store.files.ca_file))
    namespace: dict[str, object] = {"__name__": f"docs_{name.replace('.', '_')}"}
    for number, block in enumerate(blocks, start=1):
        code = compile(block, f"docs/{name}, example {number}", "exec")
        exec(code, namespace)  # noqa: S102 - the documentation's own examples
