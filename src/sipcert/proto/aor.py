"""Addresses of record (``user@host``) and the rules for comparing them.

The draft keys everything on the AOR: the Store is found from its host (draft §4.1, §4.5),
retrieved certificates must name exactly this user and host in every SubjectAltName URI
(draft §4.5) and enrolled ones must name the Digest user and TLS domain (draft §5.1). Those
checks are only as good as the comparison, so parsing here is strict and canonicalising:

* the host is compared case-insensitively (RFC 3261 §19.1.4) and stored lower-cased; it must
  be a DNS domain name (LDH labels), because the draft matches it against a TLS server
  certificate's dNSName (draft §4.3) -- IP literals and ports have no place in an AOR; an
  internationalised host is given as IDNA2008 A-labels (``xn--...``), each checked
  (RFC 5891 §5.4);
* the user is compared case-sensitively (RFC 3261 §19.1.4) after canonicalising escapes:
  ``%HH`` of an unreserved character is decoded (it is equivalent to the character), every
  other escape is kept with upper-case hex;
* anything that would make two readings of the same text possible (URI parameters, headers,
  passwords, display names, whitespace) is rejected rather than ignored.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import idna

from sipcert.errors import AORError, InputTooLargeError

__all__ = [
    "AOR",
    "AOR_SCHEMES",
    "MAX_AOR_LENGTH",
    "MAX_DOMAIN_LENGTH",
    "MAX_USER_LENGTH",
    "aor_from_uri",
    "canonical_user",
    "digest_username",
    "escape_user",
    "normalize_domain",
    "parse_aor",
    "plain_aor",
    "plain_aor_text",
]

#: Longest text ``parse_aor`` / ``aor_from_uri`` / ``normalize_domain`` look at.
MAX_AOR_LENGTH = 512
#: Longest user part (after escaping) we accept.
MAX_USER_LENGTH = 256
#: Longest domain name (RFC 1035 §2.3.4, without the trailing dot).
MAX_DOMAIN_LENGTH = 253

#: URI schemes ``parse_aor`` accepts as a spelling of an AOR (lower-case).
AOR_SCHEMES = frozenset({"sip", "sips", "im", "pres", "mailto"})

# RFC 3261 §25.1: unreserved = alphanum / mark; user-unreserved for the user part.
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-_.!~*'()")
_USER_UNRESERVED = frozenset("&=+$,;?/")
_USER_LITERAL = _UNRESERVED | _USER_UNRESERVED
_HEX = frozenset(string.hexdigits)
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?")
_IPV4_RE = re.compile(r"[0-9]+(?:\.[0-9]+){3}")
#: A user part of letters, digits, ``.``, ``_`` and ``-`` only: canonical as it stands, and
#: free of everything :func:`_check_text` refuses (see :func:`plain_aor`).
_PLAIN_USER_RE = re.compile(r"[A-Za-z0-9._-]+")
_PLAIN_HOST_RE = re.compile(r"[A-Za-z0-9.-]+")


@dataclass(frozen=True)
class AOR:
    """An address of record, held canonically so that ``==`` is RFC 3261 §19.1.4 equality.

    Constructing one directly canonicalises and validates the parts too, so
    ``AOR("b%6fb", "Example.COM") == AOR("bob", "example.com")``.
    """

    user: str
    host: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "user", canonical_user(self.user))
        object.__setattr__(self, "host", _check_host(self.host))

    def __str__(self) -> str:
        return f"{self.user}@{self.host}"

    @property
    def sip_uri(self) -> str:
        """``sip:user@host``, the SAN URI we put in certificates (draft §1, §4.5)."""
        return f"sip:{self}"

    @property
    def im_uri(self) -> str:
        """``im:user@host``, the second SAN URI the draft's example shows (draft §4.5)."""
        return f"im:{self}"


def parse_aor(text: str) -> AOR:
    """Parse ``user@host`` or a ``sip:``/``sips:``/``im:``/``pres:``/``mailto:`` URI of one.

    Raises :class:`AORError` with a message naming the problem, or
    :class:`InputTooLargeError` when the text is longer than :data:`MAX_AOR_LENGTH`.
    Results are remembered (a pure function the Store calls several times per request,
    issue 13); refusals are not.
    """
    if isinstance(text, str):
        return _parse_aor_remembered(text)
    return _parse_aor(text)


@functools.lru_cache(maxsize=4096)
def _parse_aor_remembered(text: str) -> AOR:
    return _parse_aor(text)


def _parse_aor(text: str) -> AOR:
    _check_text(text, "AOR")
    scheme, rest = _split_scheme(text)
    if scheme is None:
        return _parse_user_host(text)
    if scheme.lower() in AOR_SCHEMES:
        return _parse_user_host(rest)
    if "@" in rest and not rest.startswith("//"):
        # ``user:password@host`` reads like ``scheme:user@host``: both are refused, and the
        # message must not echo what may be a password.
        raise AORError(
            f"a password (user:password@host) or an unsupported URI scheme ({scheme!r}) "
            "is not allowed in an AOR"
        )
    allowed = ", ".join(sorted(AOR_SCHEMES))
    raise AORError(f"unsupported URI scheme {scheme!r} in AOR (allowed: {allowed})")


def plain_aor(user: str, host: str) -> AOR | None:
    """``parse_aor(f"{user}@{host}")`` for the everyday spelling, without its per-character work.

    Issue 13: the Store parses the AOR of every GET, and with many AORs a memo of whole
    query strings misses. When ``user`` holds only letters, digits, ``.``, ``_`` and ``-``
    and ``host`` only letters, digits, ``.`` and ``-``, every check of :func:`parse_aor` on
    the text and the user part passes and changes nothing, so only the host is checked
    (memoised per host: a Store serves a few domains). Returns ``None`` whenever the text
    is anything else (or the host is invalid): the caller then takes :func:`parse_aor`'s
    path, which gives the precise error. ``tests/unit/proto/test_plain_aor.py`` checks that
    both paths agree.
    """
    checked = _plain_host(user, host)
    if checked is None:
        return None
    aor = object.__new__(AOR)  # both parts are canonical already: skip __post_init__
    object.__setattr__(aor, "user", user)
    object.__setattr__(aor, "host", checked)
    return aor


@functools.lru_cache(maxsize=256)
def _memo_check_host(host: str) -> str:
    return _check_host(host)  # an invalid host raises, and failures are not memoised


def _plain_host(user: str, host: str) -> str | None:
    """The checked host of the everyday spelling ``user@host``, or ``None`` (see plain_aor)."""
    if (
        len(user) + 1 + len(host) > MAX_AOR_LENGTH
        or len(user) > MAX_USER_LENGTH
        or not _PLAIN_USER_RE.fullmatch(user)
        or not _PLAIN_HOST_RE.fullmatch(host)
    ):
        return None
    try:
        return _memo_check_host(host)
    except AORError:
        return None


def plain_aor_text(user: str, host: str) -> tuple[str, str] | None:
    """``(str(aor), aor.host)`` of ``plain_aor(user, host)``, or ``None`` where it is ``None``.

    The hot GET needs only the AOR's text (its storage key) and host (the draft §4.3
    check), so no :class:`AOR` is made (issue 13). ``tests/unit/proto/test_plain_aor.py``
    checks both agree.
    """
    checked = _plain_host(user, host)
    return None if checked is None else (f"{user}@{checked}", checked)


def aor_from_uri(uri: str) -> AOR:
    """The AOR named by a certificate SubjectAltName URI of any scheme (draft §4.5).

    The draft accepts schemes other than SIP ("im:alice@example.com"), so the scheme is only
    checked for syntax (RFC 3986 §3.1); the ``user@host`` after it gets the same strict
    parsing as :func:`parse_aor`. A URI with an authority (``scheme://``) or without a
    ``user@host`` does not name an AOR and is rejected. Results are remembered (a pure
    function; each certificate a UA fetches or a Store enrolls asks it twice, issue 13);
    refusals are not.
    """
    if isinstance(uri, str):
        return _aor_from_uri_remembered(uri)
    return _aor_from_uri(uri)


@functools.lru_cache(maxsize=4096)
def _aor_from_uri_remembered(uri: str) -> AOR:
    if len(uri) <= MAX_AOR_LENGTH:
        plain = _PLAIN_URI_RE.fullmatch(uri)
        if plain is not None:
            found = plain_aor(plain[1], plain[2])
            if found is not None:
                return found
    return _aor_from_uri(uri)


#: ``scheme:user@host`` with the plain user and host of :func:`plain_aor` (issue 13): a
#: certificate's SAN URIs are spelled so, and each enrollment reads them once, so the memo
#: above misses. Such a text has nothing :func:`_check_text` refuses, its scheme is
#: everything before the first ``:`` and passes ``_SCHEME_RE``, it holds one ``@``, no
#: ``//``, port, parameters or headers: every check of :func:`_aor_from_uri` but the host's
#: passes and changes nothing, and :func:`plain_aor` checks the host (or declines, and the
#: full parser gives its error). tests/unit/proto/test_plain_aor.py compares both paths.
_PLAIN_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:([A-Za-z0-9._-]+)@([A-Za-z0-9.-]+)")


def _aor_from_uri(uri: str) -> AOR:
    _check_text(uri, "URI")
    scheme, rest = _split_scheme(uri)
    if scheme is None:
        raise AORError("URI has no scheme (expected e.g. sip:user@host)")
    # In sip:, im:, ... a user part may start with "//" (RFC 3261 §25.1 user-unreserved "/"):
    # "sip://x@host" is user "//x", not an authority, and is what such an AOR's SAN holds.
    if rest.startswith("//") and scheme.lower() not in AOR_SCHEMES:
        raise AORError(f"{scheme}: URI with an authority component does not name an AOR")
    return _parse_user_host(rest)


def normalize_domain(text: str) -> str:
    """Lower-case and validate a DNS domain name (LDH labels, no IP literal, no trailing dot).

    Used for AOR hosts, the Store's TLS domain and names from TLS certificates, so that the
    case-insensitive comparison of draft §4.3 is a plain ``==``. Valid names are remembered
    (a pure function; the Store asks it for its own domain on every enrollment, issue 13).
    """
    if isinstance(text, str):
        return _normalize_domain_remembered(text)
    _check_text(text, "domain")  # raises: not text
    return _check_host(text)


@functools.lru_cache(maxsize=1024)
def _normalize_domain_remembered(text: str) -> str:
    _check_text(text, "domain")
    return _check_host(text)  # an invalid name raises, and failures are not remembered


#: A user part of literal characters only, within the length limit: its own canonical form
#: and its own escaping (an enrollment checks four spellings of its user this way).
_LITERAL_USER_RE = re.compile(
    "[" + "".join(re.escape(c) for c in sorted(_USER_LITERAL)) + f"]{{1,{MAX_USER_LENGTH}}}"
)


def canonical_user(user: str) -> str:
    """Canonical form of an escaped RFC 3261 user part (RFC 3261 §19.1.4).

    ``%HH`` of an unreserved character becomes the character, other escapes get upper-case
    hex, literal characters must be unreserved or user-unreserved.
    """
    if _LITERAL_USER_RE.fullmatch(user):
        return user
    return _canonical_user_by_character(user)


def _canonical_user_by_character(user: str) -> str:
    """:func:`canonical_user` of any input: the grammar, character by character."""
    if not user:
        raise AORError("empty user part")
    if len(user) > MAX_USER_LENGTH:
        raise InputTooLargeError(
            f"user part is {len(user)} characters, more than the limit of {MAX_USER_LENGTH}"
        )
    out: list[str] = []
    i = 0
    while i < len(user):
        char = user[i]
        if char == "%":
            pair = user[i + 1 : i + 3]
            if len(pair) != 2 or not all(c in _HEX for c in pair):
                raise AORError(f"malformed %-escape {user[i : i + 3]!r} in user part")
            decoded = chr(int(pair, 16))
            out.append(decoded if decoded in _UNRESERVED else "%" + pair.upper())
            i += 3
            continue
        if char not in _USER_LITERAL:
            raise AORError(f"invalid character {char!r} in user part (RFC 3261 user grammar)")
        out.append(char)
        i += 1
    return "".join(out)


def escape_user(raw: str) -> str:
    """Canonical escaped user part for an *unescaped* name, e.g. a Digest username.

    Every character the RFC 3261 user grammar does not allow literally (including ``%``) is
    %-escaped as UTF-8, so ``escape_user(name) == aor.user`` compares a Digest username with
    a SAN URI's user part (draft §5.1).
    """
    if _LITERAL_USER_RE.fullmatch(raw):
        return raw
    escaped = "".join(
        char if char in _USER_LITERAL else "".join(f"%{b:02X}" for b in char.encode("utf-8"))
        for char in raw
    )
    return canonical_user(escaped)


def digest_username(aor: AOR) -> str:
    """The Digest ``username`` that authenticates as ``aor``: its user part, unescaped.

    Draft §5.1 makes the Digest username the AOR's user part; a UA sends it unescaped
    (``zoë``, ``a b``) and the Store compares ``escape_user(username) == aor.user``. This is
    the inverse, and the one rule for which AORs can hold an account (the users file's
    writer and loader both apply it). Raises :class:`AORError` when no Digest username can
    name ``aor``: its escapes are not UTF-8, decode to a control or format character, or
    escape a character the user grammar allows literally (the username ``a;b`` names
    ``a;b@host``, never ``a%3Bb@host``; the message gives the spelling to use).
    """
    try:
        name = unquote_to_bytes(aor.user).decode("utf-8")
    except UnicodeDecodeError:
        raise AORError(
            f"user part {aor.user!r} does not unescape to UTF-8 text, so no Digest username "
            "can name it"
        ) from None
    for char in name:
        if unicodedata.category(char) in _NO_USERNAME:
            raise AORError(
                f"user part {aor.user!r} unescapes to control or format character "
                f"U+{ord(char):04X}, which a Digest username must not hold"
            )
    spelling = escape_user(name)
    if spelling != aor.user:
        raise AORError(
            f"user part {aor.user!r} escapes a character that the user grammar allows "
            f"literally; its Digest username {name!a} names {spelling}@{aor.host}"
        )
    return name


_NO_USERNAME = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _check_text(text: str, what: str) -> None:
    """Reject non-strings, empty and over-long text, and whitespace/control characters."""
    if not isinstance(text, str):
        raise AORError(f"{what} must be text, not {type(text).__name__}")
    if len(text) > MAX_AOR_LENGTH:
        raise InputTooLargeError(
            f"{what} is {len(text)} characters, more than the limit of {MAX_AOR_LENGTH}"
        )
    if not text:
        raise AORError(f"empty {what}")
    for position, char in enumerate(text):
        if char.isspace() or unicodedata.category(char) in {"Cc", "Cf", "Cs", "Zl", "Zp"}:
            raise AORError(
                f"whitespace or control character U+{ord(char):04X} at position {position} "
                f"in {what}"
            )
    if any(char in text for char in '<>"'):
        raise AORError(f"display names and angle brackets are not allowed in this {what}")


def _split_scheme(text: str) -> tuple[str | None, str]:
    """Split ``scheme:rest``; ``(None, text)`` when nothing scheme-like precedes the ``:``."""
    head, colon, rest = text.partition(":")
    if not colon or not _SCHEME_RE.fullmatch(head):
        return None, text
    return head, rest


def _parse_user_host(text: str) -> AOR:
    """Parse the ``user@host`` after any scheme, rejecting everything else an URI may hold."""
    if "@" not in text:
        if not text:
            raise AORError("missing user@host after the URI scheme")
        raise AORError(f"not user@host: no '@' in {text!r}")
    if text.count("@") > 1:
        raise AORError("more than one '@' (escape '@' in a user part as %40)")
    user, _, host = text.partition("@")
    if not user:
        raise AORError("empty user part before '@'")
    if ":" in user:
        raise AORError("a password in the user part is not allowed in an AOR")
    if not host:
        raise AORError("missing host after '@'")
    return AOR(user, _strip_host_suffix(host))


def _strip_host_suffix(host: str) -> str:
    """Reject a port, URI parameters or headers after the host, naming the first one found."""
    if host.startswith("["):
        raise AORError(f"IP literal host {host!r} is not allowed: an AOR needs a domain name")
    for index, char in enumerate(host):
        if char == ":":
            raise AORError(f"a port is not allowed in an AOR ({host[index:]!r})")
        if char == ";":
            raise AORError(f"URI parameters are not allowed in an AOR ({host[index:]!r})")
        if char == "?":
            raise AORError(f"URI headers are not allowed in an AOR ({host[index:]!r})")
    return host


def _check_host(host: str) -> str:
    """Validate a host name as a DNS domain name and return it lower-cased."""
    if not host:
        raise AORError("empty host name")
    if not host.isascii():
        raise AORError(f"non-ASCII host name {host!r}: use the IDNA A-label form (xn--...)")
    lowered = host.lower()
    if lowered.startswith("[") or _IPV4_RE.fullmatch(lowered) or ":" in lowered:
        raise AORError(f"IP address host {host!r} is not allowed: an AOR needs a domain name")
    if len(lowered) > MAX_DOMAIN_LENGTH:
        raise AORError(f"host name is {len(lowered)} characters, longer than {MAX_DOMAIN_LENGTH}")
    if lowered.endswith("."):
        raise AORError(f"host name {host!r} must not end with a dot")
    labels = lowered.split(".")
    for label in labels:
        if not label:
            raise AORError(f"empty label in host name {host!r}")
        if len(label) > 63:
            raise AORError(f"label {label[:20]!r}... in host name is longer than 63 characters")
        if label.startswith("-") or label.endswith("-"):
            raise AORError(f"label {label!r} in host name starts or ends with a hyphen")
        if not _LABEL_RE.fullmatch(label):
            bad = next(c for c in label if not (c.isalnum() or c == "-"))
            raise AORError(f"invalid character {bad!r} in host name {host!r}")
    if labels[-1].isdigit():
        raise AORError(f"top-level label {labels[-1]!r} of host name is all-numeric")
    if any(label.startswith("xn--") for label in labels):
        _check_idna(lowered, labels)
    return lowered


def _check_idna(host: str, labels: list[str]) -> None:
    """Refuse an ``xn--`` label that is not a valid IDNA2008 A-label (RFC 5890 §2.3.2.1).

    RFC 5891 §5.3-§5.4: decode it, check the U-label, encode it again and compare. The name
    as a whole must then decode too: HTTP libraries decode every label of such a name (httpx
    does, and raised from deep inside on a bad one), so what passes here must pass there.
    """
    for label in labels:
        if not label.startswith("xn--"):
            continue
        try:
            valid = idna.alabel(idna.ulabel(label)).decode("ascii") == label
        except ValueError:  # idna.IDNAError and its InvalidCodepoint are UnicodeErrors
            valid = False
        if not valid:
            raise AORError(
                f"label {label[:63]!r} of host name {host[:80]!r} is not a valid IDNA2008 "
                "A-label (RFC 5891 §5.4)"
            )
    try:
        idna.decode(host)
    except ValueError as exc:
        raise AORError(
            f"host name {host[:80]!r} is not a valid IDNA2008 domain name: {exc}"
        ) from exc
