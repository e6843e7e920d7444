"""The draft §5 revocation page in a real browser: headless Chromium driven by Selenium.

Draft §5: "The Service MUST provide some other authenticated, out of band mechanism for the
Subscriber to revoke certificates. A web page accessed over HTTPS with digest authentication
would work fine for this." This test is that sentence, end to end: a real ``sipcert serve``
(tests/integration/store's :class:`StoreProcess`), two certificates enrolled for alice, and
Debian's Chromium, which must do its own Digest, follow the 303, send ``Origin`` and obey
the page's headers.

How the browser is pointed at the Store without weakening it:

* **Name:** ``--host-resolver-rules=MAP example.com 127.0.0.1``, so the URL, SNI, ``Host``
  and ``Origin`` all say ``example.com`` while the connection goes to loopback.
* **Trust:** ``--ignore-certificate-errors-spki-list=<base64 SHA-256 of the Store's leaf
  SPKI>``. Only a certificate with *that* key is accepted despite its unknown issuer (the
  test CA); anything else still fails. ``--ignore-certificate-errors`` would accept every
  certificate and is not used. (An NSS database with the test CA would need ``certutil``
  from another package and a fake ``$HOME``; the SPKI pin needs nothing.)
* **Digest:** credentials in the URL (``https://alice:secret@example.com:PORT/account``).
  Chromium still uses them for a top-level navigation and answers the Digest challenge with
  them; the form POST and the redirect after it are answered from its HTTP auth cache, as a
  real user's browser would after the login prompt.

Chromium and chromedriver are Debian's (``apt-get install chromium chromium-driver``);
Selenium is told the driver's path, so Selenium Manager never runs and nothing is
downloaded.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sipcert.client.fetch import DigestAuth, parse_certificate_bodies
from sipcert.proto.store import format_description
from sipcert.storage import cert_hash_of
from tests.conftest import IN_CI
from tests.factories import make_cert, make_key
from tests.integration.store.conftest import USERS, StoreProcess, make_store_files

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - depends on the environment
    webdriver = None  # type: ignore[assignment]

pytestmark = pytest.mark.peer("chromium", "chromedriver")

ALICE = "alice@example.com"
PASSWORD = USERS[ALICE]
SEARCH = f"/search-cgi?email={quote(ALICE, safe='')}"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreProcess]:
    process = StoreProcess(make_store_files(tmp_path_factory.mktemp("browser-store")))
    process.start()
    try:
        yield process
    finally:
        process.stop()


def spki_pin(cert_file: Path) -> str:
    """Chromium's SPKI pin: base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


@pytest.fixture
def browser(store: StoreProcess, tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium that resolves example.com to the Store and trusts only its key."""
    if webdriver is None:
        message = "selenium is not installed (pip install selenium)"
        if IN_CI:
            pytest.fail(message + " (CI=true: peers are required)")
        pytest.skip(message)
    chromium = shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    assert chromium is not None and chromedriver is not None  # the peer marker checked
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI: Chromium's sandbox refuses to run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP example.com 127.0.0.1",
        f"--ignore-certificate-errors-spki-list={spki_pin(store.files.tls['example.com'][0])}",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,900",
    ):
        options.add_argument(argument)
    service = Service(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def start_over(store: StoreProcess) -> None:
    """Revoke whatever an earlier test left, with the Digest DELETE (204, or 404 for none)."""
    with store.client("example.com") as client:
        answer = client.delete(store.url("example.com", SEARCH), auth=DigestAuth("alice", PASSWORD))
    assert answer.status_code in (204, 404), answer.text


def enroll_two(store: StoreProcess, labels: tuple[str | None, ...] = (None, None)) -> list[str]:
    """Certificates for alice (one per device, draft §5), enrolled with the Digest PUT, each
    with its device label (``Content-Description``) when given."""
    start_over(store)
    now = datetime.now(UTC)
    hashes = []
    with store.client("example.com") as client:
        for slot, label in enumerate(labels):
            cert = make_cert(
                make_key("ec-p256", ALICE, slot),
                ALICE,
                not_before=now - timedelta(hours=1),
                not_after=now + timedelta(days=20),
            )
            der = cert.public_bytes(serialization.Encoding.DER)
            put = client.put(
                store.url("example.com", SEARCH),
                content=der,
                auth=DigestAuth("alice", PASSWORD),
                headers={"Content-Description": format_description(label)} if label else {},
            )
            assert put.status_code == 201, put.text
            hashes.append(cert_hash_of(der))
    return hashes


def served(store: StoreProcess) -> list[str]:
    """The certHashes a Caller's GET gets now (draft §4.3), sorted."""
    with store.client("example.com") as client:
        answer = client.get(store.url("example.com", SEARCH))
    if answer.status_code == 404:
        return []
    assert answer.status_code == 200
    ders = parse_certificate_bodies(answer.headers.get("content-type"), answer.content)
    return sorted(cert_hash_of(der) for der in ders)


def open_account_page(browser: Any, store: StoreProcess) -> None:
    """Navigate with the Digest credentials in the URL (what the login prompt would do)."""
    browser.get(f"https://alice:{quote(PASSWORD, safe='')}@example.com:{store.port}/account")
    assert browser.title == f"Certificates of {ALICE}"


def rows(browser: Any) -> list[Any]:
    return list(browser.find_elements(By.CSS_SELECTOR, "li[data-cert-hash]"))


def body_text(browser: Any) -> str:
    return str(browser.find_element(By.TAG_NAME, "body").text)


def test_revoke_one_certificate_in_chromium(
    store: StoreProcess, browser: Any, tmp_path: Path
) -> None:
    first, second = enroll_two(store)
    open_account_page(browser, store)
    assert sorted(r.get_attribute("data-cert-hash") for r in rows(browser)) == sorted(
        [first, second]
    )
    text = body_text(browser)
    assert "2 certificates enrolled" in text
    assert text.count("sip:alice@example.com") == 2
    assert text.count("expires in 19 days") == 2

    row = next(r for r in rows(browser) if r.get_attribute("data-cert-hash") == first)
    row.find_element(By.CSS_SELECTOR, "button.revoke").click()
    WebDriverWait(browser, 15).until(lambda d: "?revoked=" in d.current_url)

    # POST, 303, GET: each one answered with Digest from Chromium's auth cache.
    assert browser.current_url.endswith(f"example.com:{store.port}/account?revoked=1")
    assert browser.find_element(By.CSS_SELECTOR, "p.flash").text == "1 certificate revoked."
    assert [r.get_attribute("data-cert-hash") for r in rows(browser)] == [second]
    assert "1 certificate enrolled" in body_text(browser)
    assert served(store) == [second]

    shot = tmp_path / "revocation-page.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000


def test_a_cross_site_form_gets_digest_but_revokes_nothing(
    store: StoreProcess, browser: Any
) -> None:
    """Why the page needs CSRF protection, shown with the real browser.

    After alice has used the page, a page of another origin (here a ``data:`` URL, an
    opaque origin) posts a form to the Store. Chromium attaches her cached Digest
    credentials to that cross-site POST, so the request *authenticates*; even with a
    leaked valid token it is refused by the ``Origin`` check, and nothing is revoked.
    """
    enroll_two(store)
    before = served(store)
    open_account_page(browser, store)
    token = browser.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
    attacker = (
        "<!DOCTYPE html><title>attacker</title>"
        f'<form method="post" action="https://example.com:{store.port}/account/revoke">'
        '<input type="hidden" name="all" value="1">'
        f'<input type="hidden" name="csrf" value="{token}">'
        '<button id="go">win a prize</button></form>'
    )
    browser.get("data:text/html;base64," + base64.b64encode(attacker.encode()).decode())
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 15).until(lambda d: d.current_url.endswith("/account/revoke"))
    # "cross-origin" (403), not a 401: Digest succeeded, the Origin check refused.
    assert (
        body_text(browser) == "cross-origin: the form was not sent from this site's page (Origin)"
    )
    assert served(store) == before


#: Labels as people name their devices, and the worst case: 64 characters without a space.
LABELS = ("laptop", "Alice's phone (work)", "x" * 64)
#: Where the screenshots go: a temporary folder, or (to refresh the ones in docs/) the
#: folder in ``SIPCERT_SCREENSHOT_DIR``.
SCREENSHOTS = os.environ.get("SIPCERT_SCREENSHOT_DIR")


def emulate(browser: Any, width: int, height: int, *, mobile: bool) -> None:
    """Give the page a device's viewport; ``mobile`` also makes Chromium honour (or miss)
    the viewport meta element, as a phone's browser does."""
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


def reachable(browser: Any, button: Any) -> bool:
    """Scrolled into view, the button lies inside the viewport and is what a tap there hits."""
    return bool(
        browser.execute_script(
            """
            const button = arguments[0];
            button.scrollIntoView({block: "center", inline: "nearest"});
            const box = button.getBoundingClientRect();
            const inside = box.left >= 0 && box.top >= 0 && box.right <= innerWidth
                && box.bottom <= innerHeight && box.width > 0 && box.height > 0;
            const hit = document.elementFromPoint(box.left + box.width / 2,
                                                  box.top + box.height / 2);
            return inside && (hit === button || button.contains(hit));
            """,
            button,
        )
    )


@pytest.mark.parametrize(
    ("name", "width", "height", "mobile"),
    [("phone", 390, 844, True), ("desktop", 1280, 800, False)],
)
def test_page_fits_the_screen_and_every_revoke_button_is_reachable(
    store: StoreProcess,
    browser: Any,
    tmp_path: Path,
    name: str,
    width: int,
    height: int,
    mobile: bool,
) -> None:
    """No sideways scrolling at 390x844 or on a desktop, whatever the labels; every Revoke
    button can be scrolled to and tapped; labels, enrolled-on and fingerprints are shown."""
    hashes = enroll_two(store, LABELS)
    emulate(browser, width, height, mobile=mobile)
    open_account_page(browser, store)
    # The viewport meta element makes the layout as wide as the device, not 980 px.
    assert browser.execute_script("return innerWidth") == width
    scroll_width = browser.execute_script("return document.scrollingElement.scrollWidth")
    assert scroll_width <= width
    cards = rows(browser)
    assert sorted(card.get_attribute("data-cert-hash") for card in cards) == sorted(hashes)
    labels = [card.find_element(By.CSS_SELECTOR, "h2.label").text for card in cards]
    assert sorted(labels) == sorted(LABELS)
    text = body_text(browser)
    assert text.count("Enrolled on") == len(LABELS)
    with store.client("example.com") as client:
        answer = client.get(store.url("example.com", SEARCH))
    for der in parse_certificate_bodies(answer.headers.get("content-type"), answer.content):
        assert hashlib.sha256(der).hexdigest() in text  # the spelling of status and fetch
    buttons = browser.find_elements(By.CSS_SELECTOR, "button.revoke, button.revoke-all")
    assert len(buttons) == len(LABELS) + 1
    for button in buttons:
        assert reachable(browser, button), button.get_attribute("aria-label")
    browser.execute_script("scrollTo(0, 0)")
    folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    shot = folder / f"account-page-{name}.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes().startswith(PNG_MAGIC)
