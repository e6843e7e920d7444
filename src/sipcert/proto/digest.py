"""HTTP Digest authentication, both sides (RFC 7616, compatible with RFC 2617).

Draft §5.1: the Store "MUST digest challenge" an enrollment PUT and the UA answers with the
credentials it uses for SIP registration. This module is the whole Digest protocol for both:

* server: :class:`DigestServer` issues challenges with stateless nonces (any process holding
  the same secret verifies them), verifies ``Authorization`` headers and refuses replays
  through a pluggable :class:`NonceCounter`;
* client: :func:`parse_challenges`, :func:`choose_challenge`, :func:`build_authorization` and
  the small stateful :class:`DigestClient`;
* a strict parser for both header kinds (RFC 7235 §2.1 / RFC 7230 §3.2.6 grammar).

Sans-IO: no sockets, files or clock; callers pass ``now`` (Unix time, seconds).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NoReturn, Protocol
from urllib.parse import quote, unquote_to_bytes

from sipcert.errors import (
    AuthenticationError,
    ConfigError,
    DigestHeaderError,
    HeaderTooLargeError,
    InputTooLargeError,
    StaleNonceError,
)

__all__ = [
    "DEFAULT_NONCE_LIFETIME",
    "MAX_HEADER_LENGTH",
    "Algorithm",
    "AsyncNonceCounter",
    "Challenge",
    "DigestClient",
    "DigestResponse",
    "DigestServer",
    "MemoryNonceCounter",
    "NonceCounter",
    "StoredCredential",
    "VerifiedAnswer",
    "build_authorization",
    "choose_challenge",
    "compute_ha1",
    "compute_response",
    "format_authorization",
    "parse_authorization",
    "parse_challenges",
    "verify_digest",
]

#: Longest header value we parse. Header values are Latin-1 on the wire, so characters are bytes.
MAX_HEADER_LENGTH = 4096
#: Most ``WWW-Authenticate`` field lines :func:`parse_challenges` accepts in one call.
MAX_CHALLENGE_VALUES = 32
#: Default nonce lifetime in seconds; after it a correct answer gets ``stale=true``.
DEFAULT_NONCE_LIFETIME = 300.0
#: How far in the future a nonce timestamp may lie (clock skew between Store processes).
DEFAULT_MAX_CLOCK_SKEW = 60.0


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

    password: str | None = field(default=None, repr=False)
    ha1: Mapping[Algorithm, str] = field(default_factory=dict, repr=False)

    def ha1_for(self, algorithm: Algorithm, username: str, realm: str) -> str | None:
        """HA1 for ``algorithm``, or ``None`` when this credential cannot serve it."""
        if self.password is not None:
            return compute_ha1(algorithm, username, realm, self.password)
        return self.ha1.get(algorithm)


def compute_response(
    algorithm: Algorithm,
    ha1: str,
    *,
    nonce: str,
    nc: int,
    cnonce: str,
    qop: str,
    method: str,
    uri: str,
) -> str:
    """The request-digest ``KD(HA1, nonce:nc:cnonce:qop:H(method:uri))`` (RFC 7616 §3.4.1).

    ``qop=auth`` only: ``auth-int`` is never offered, so A2 is ``method:uri`` (§3.4.3).
    """
    ha2 = _hash(algorithm, f"{method}:{uri}")
    return _hash(algorithm, f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}")


def _algorithm_named(name: str) -> Algorithm | None:
    """The :class:`Algorithm` called ``name`` (case-insensitive), or ``None`` (e.g. ``-sess``)."""
    for algorithm in Algorithm:
        if algorithm.value.lower() == name.lower():
            return algorithm
    return None


# --------------------------------------------------------------------------------------------
# Header grammar (RFC 7235 §2.1, §4.1, §4.2; RFC 7230 §3.2.6 tokens and quoted-strings; §7 lists)
# --------------------------------------------------------------------------------------------

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LEADING_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_OWS = " \t"
_OWS_RUN = re.compile(r"[ \t]*")
# A quoted-string's rest with no quoted-pair: qdtext (see _qdtext) up to the closing quote.
# What it does not match goes through the character loop, which names the problem.
_PLAIN_QUOTED_REST = re.compile(r'[\t !\x23-\x5b\x5d-\x7e\x80-\xff]*"')
# One whole ``name = value`` directive and the OWS after it, in the common spelling (a token,
# or a quoted-string without quoted-pairs); anything else takes the step-by-step path.
_PLAIN_DIRECTIVE = re.compile(
    r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+)[ \t]*=[ \t]*"
    r'(?:([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)|"([\t !\x23-\x5b\x5d-\x7e\x80-\xff]*)")[ \t]*'
)
# A whole header value in the usual spelling: one scheme, then directives as above joined by
# commas with OWS, nothing else (issue 13: the Store parses one per enrollment). What it does
# not match, or a duplicate directive, takes the general path, which names any problem.
_PLAIN_ITEM = re.compile(
    r"[ \t]*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)[ \t]+"
    r"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+[ \t]*=[ \t]*"
    r'(?:[!#$%&\'*+\-.^_`|~0-9A-Za-z]+|"[\t !\x23-\x5b\x5d-\x7e\x80-\xff]*")[ \t]*(?:,[ \t]*|\Z))+'
)
_NC = re.compile(r"[0-9a-f]{8}")
# RFC 8187 §3.2.1 ext-value, charset fixed to UTF-8 as RFC 7616 §3.4.4 requires.
_EXT_VALUE = re.compile(
    r"(?P<charset>[A-Za-z0-9!#$%&+\-^_`{}~]+)'(?P<lang>[A-Za-z0-9\-]*)'"
    r"(?P<chars>(?:%[0-9A-Fa-f]{2}|[A-Za-z0-9!#$&+\-.^_`|~])*)"
)
# RFC 8187 attr-char minus ALPHA / DIGIT (which urllib.parse.quote never escapes).
_ATTR_SAFE = "!#$&+-.^_`|~"


def _qdtext(char: str) -> bool:
    """RFC 7230 §3.2.6 qdtext: HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text."""
    code = ord(char)
    return char in "\t !" or 0x23 <= code <= 0x5B or 0x5D <= code <= 0x7E or 0x80 <= code <= 0xFF


def _quoted_pair_char(char: str) -> bool:
    """RFC 7230 §3.2.6 quoted-pair: ``\\`` followed by HTAB / SP / VCHAR / obs-text."""
    code = ord(char)
    return char == "\t" or 0x20 <= code <= 0x7E or 0x80 <= code <= 0xFF


def _from_wire(value: str) -> str:
    """Read obs-text (Latin-1 decoded wire bytes) as UTF-8 when it is valid UTF-8.

    Header values arrive as Latin-1 text, but clients that put non-ASCII in a quoted-string
    send UTF-8 (the only charset RFC 7616 §4 names); anything else is kept as received.
    """
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


@dataclass
class _Item:
    """One challenge or one credentials value: scheme plus either token68 or auth-params."""

    scheme: str
    token68: str | None = None
    params: dict[str, str] = field(default_factory=dict)


class _Scanner:
    """A cursor over one header value that reports errors with the offset they occur at."""

    def __init__(self, text: str, header: str) -> None:
        self.text = text
        self.pos = 0
        self.header = header

    def fail(self, problem: str, pos: int | None = None) -> NoReturn:
        where = self.pos if pos is None else pos
        raise DigestHeaderError(f"malformed {self.header} header: {problem} (at offset {where})")

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def shown(self) -> str:
        """The character under the cursor, for messages."""
        return repr(self.peek()) if not self.at_end() else "end of header"

    def skip_ows(self) -> int:
        start = self.pos
        match = _OWS_RUN.match(self.text, start)
        self.pos = match.end() if match else start
        return self.pos - start

    def skip_empty_elements(self) -> None:
        """Skip OWS and empty list elements (RFC 7230 §7: recipients MUST accept ``a, , b``)."""
        while True:
            self.skip_ows()
            if self.peek() != ",":
                return
            self.pos += 1

    def token(self) -> str | None:
        # One regex per token, not a loop per character: an Authorization header has a
        # dozen of them and the Store parses one per enrollment (issue 13).
        match = _LEADING_TOKEN.match(self.text, self.pos)
        if match is None:
            return None
        self.pos = match.end()
        return match.group()

    def quoted_string(self, name: str) -> str:
        opening = self.pos
        plain = _PLAIN_QUOTED_REST.match(self.text, opening + 1)
        if plain is not None:
            self.pos = plain.end()
            return _from_wire(self.text[opening + 1 : plain.end() - 1])
        self.pos += 1
        out: list[str] = []
        while True:
            if self.at_end():
                self.fail(f"unterminated quoted-string in directive {name!r}", opening)
            char = self.text[self.pos]
            if char == '"':
                self.pos += 1
                return _from_wire("".join(out))
            if char == "\\":
                self.pos += 1
                if self.at_end():
                    self.fail(f"backslash at end of quoted-string in directive {name!r}")
                char = self.text[self.pos]
                if not _quoted_pair_char(char):
                    self.fail(f"character {char!r} cannot be escaped in directive {name!r}")
            elif not _qdtext(char):
                self.fail(
                    f"character {char!r} is not allowed in quoted-string of directive {name!r}"
                )
            out.append(char)
            self.pos += 1

    def next_is_param(self) -> bool:
        """After a comma: does an auth-param (``token BWS "="``) follow, or a new challenge?"""
        start = self.pos
        try:
            if self.token() is None:
                return True  # neither; let the directive parser name the problem
            self.skip_ows()
            return self.peek() == "="
        finally:
            self.pos = start

    def token68_follows(self) -> str | None:
        """A token68 (RFC 7235 §2.1) that makes up the whole rest of this list element."""
        match = _TOKEN68.match(self.text, self.pos)
        if match is None:
            return None
        end = match.end()
        while end < len(self.text) and self.text[end] in _OWS:
            end += 1
        if end < len(self.text) and self.text[end] != ",":
            return None
        self.pos = end
        return match.group()


def _parse_items(text: str, header: str) -> list[_Item]:
    """Split a header value into challenges/credentials (RFC 7235 §4.1 and §4.2 grammar)."""
    plain = _parse_plain_item(text)
    if plain is not None:
        return [plain]
    scan = _Scanner(text, header)
    items: list[_Item] = []
    scan.skip_empty_elements()
    while not scan.at_end():
        scheme = scan.token()
        if scheme is None:
            scan.fail(f"expected an auth-scheme, found {scan.shown()}")
        item = _Item(scheme)
        items.append(item)
        spaces = scan.skip_ows()
        if scan.at_end() or scan.peek() == ",":
            scan.skip_empty_elements()
            continue
        if spaces == 0:
            scan.fail(f"expected a space after auth-scheme {scheme!r}, found {scan.shown()}")
        token68 = scan.token68_follows()
        if token68 is not None:
            item.token68 = token68
            scan.skip_empty_elements()
            continue
        _parse_params(scan, item)
    return items


def _parse_plain_item(text: str) -> _Item | None:
    """The one item of ``text`` in the usual spelling (``_PLAIN_ITEM``), else ``None``."""
    whole = _PLAIN_ITEM.fullmatch(text)
    if whole is None:
        return None
    item = _Item(whole[1])
    params = item.params
    for name, token, quoted in _PLAIN_DIRECTIVE.findall(text, whole.end(1)):
        key = name.lower()
        if key in params:
            return None  # the general path names the duplicate
        params[key] = token if token else _from_wire(quoted)
    return item


def _parse_params(scan: _Scanner, item: _Item) -> None:
    """Parse ``#auth-param`` into ``item.params``; stop at the end or before a new challenge."""
    while True:
        name_pos = scan.pos
        plain = _PLAIN_DIRECTIVE.match(scan.text, name_pos)
        if plain is not None:
            name, token, quoted = plain.groups()
            value = token if token is not None else _from_wire(quoted)
            scan.pos = plain.end()
        else:
            name, value = _parse_param_slowly(scan)
        key = name.lower()
        if key in item.params:
            scan.fail(f"duplicate directive {name!r}", name_pos)
        item.params[key] = value
        scan.skip_ows()
        if scan.at_end():
            return
        if scan.peek() != ",":
            scan.fail(f"expected ',' after directive {name!r}, found {scan.shown()}")
        scan.skip_empty_elements()
        if scan.at_end() or not scan.next_is_param():
            return


def _parse_param_slowly(scan: _Scanner) -> tuple[str, str]:
    """One ``name = value`` step by step, naming the problem of a malformed one."""
    name = scan.token()
    if name is None:
        scan.fail(f"expected a directive name, found {scan.shown()}")
    scan.skip_ows()
    if scan.peek() != "=":
        scan.fail(f"expected '=' after directive {name!r}, found {scan.shown()}")
    scan.pos += 1
    scan.skip_ows()
    if scan.peek() == '"':
        return name, scan.quoted_string(name)
    token = scan.token()
    if token is None:
        scan.fail(
            f"expected a token or quoted-string value for directive {name!r}, found {scan.shown()}"
        )
    return name, token


def _check_length(value: str, header: str) -> None:
    if len(value) > MAX_HEADER_LENGTH:
        raise HeaderTooLargeError(
            f"{header} header is {len(value)} characters, over the {MAX_HEADER_LENGTH} limit"
        )


def _quote(value: str, name: str) -> str:
    """``value`` as a quoted-string; non-ASCII goes out as UTF-8 obs-text (RFC 7616 §4)."""
    wire = value if value.isascii() else value.encode("utf-8").decode("latin-1")
    out = ['"']
    for char in wire:
        if char in '"\\':
            out.append("\\" + char)
        elif _qdtext(char):
            out.append(char)
        else:
            raise DigestHeaderError(
                f"directive {name!r} contains {char!r}, which no quoted-string can carry"
            )
    out.append('"')
    return "".join(out)


def _token_or_quoted(value: str, name: str) -> str:
    return value if value and all(c in _TCHAR for c in value) else _quote(value, name)


# --------------------------------------------------------------------------------------------
# Authorization (credentials)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigestResponse:
    """The directives of a Digest ``Authorization`` header (RFC 7616 §3.4).

    ``username`` is already decoded when the client sent ``username*``. ``algorithm`` is the
    name as sent (``None`` when absent, which means MD5); ``nc`` is the decoded nonce count.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str | None = None
    cnonce: str | None = None
    nc: int | None = None
    qop: str | None = None
    opaque: str | None = None


def _decode_username_star(value: str) -> str:
    """RFC 7616 §3.4.4 ``username*``: an RFC 8187 ext-value whose charset must be UTF-8."""
    match = _EXT_VALUE.fullmatch(value)
    if match is None:
        raise DigestHeaderError(
            f"username* {value!r} is not an RFC 8187 ext-value (charset'language'value)"
        )
    if match["charset"].upper() != "UTF-8":
        raise DigestHeaderError(
            f"username* uses charset {match['charset']!r}; RFC 7616 §3.4.4 requires UTF-8"
        )
    try:
        return unquote_to_bytes(match["chars"]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DigestHeaderError("username* does not percent-decode to valid UTF-8") from exc


def parse_authorization(value: str) -> DigestResponse:
    """Parse one ``Authorization: Digest ...`` value (RFC 7616 §3.4).

    Raises :class:`DigestHeaderError` for anything malformed, including another scheme (use
    :meth:`DigestServer.authenticate` to answer ``Basic`` with a challenge rather than 400),
    and :class:`HeaderTooLargeError` (431) over :data:`MAX_HEADER_LENGTH`. Unknown directives are
    ignored (§3.4); ``nc``/``cnonce`` without ``qop`` or vice versa are malformed (§3.4).
    """
    _check_length(value, "Authorization")
    items = _parse_items(value, "Authorization")
    if not items:
        raise DigestHeaderError("Authorization header is empty")
    if len(items) > 1:
        raise DigestHeaderError(
            f"Authorization header carries {len(items)} credentials; expected one"
        )
    item = items[0]
    if item.scheme.lower() != "digest":
        raise DigestHeaderError(f"Authorization scheme is {item.scheme!r}, not Digest")
    if item.token68 is not None:
        raise DigestHeaderError("Digest credentials must be directives, not a token68 value")
    params = item.params
    if not params:
        raise DigestHeaderError("Digest credentials carry no directives")

    userhash = params.get("userhash")
    if userhash is not None and userhash.lower() == "true":
        raise DigestHeaderError(
            "userhash=true is not supported: this server never offers userhash (RFC 7616 §3.4.4)"
        )
    if userhash is not None and userhash.lower() != "false":
        raise DigestHeaderError(f"userhash must be true or false, not {userhash!r}")

    if "username" in params and "username*" in params:
        raise DigestHeaderError(
            "Authorization has both username and username* (RFC 7616 §3.4.4 forbids it)"
        )
    if "username*" in params:
        username = _decode_username_star(params["username*"])
    elif "username" in params:
        username = params["username"]
    else:
        raise DigestHeaderError("Authorization lacks the 'username' directive (RFC 7616 §3.4)")
    for required in ("realm", "nonce", "uri", "response"):
        if required not in params:
            raise DigestHeaderError(
                f"Authorization lacks the {required!r} directive (RFC 7616 §3.4)"
            )

    nc: int | None = None
    raw_nc = params.get("nc")
    if raw_nc is not None:
        if _NC.fullmatch(raw_nc) is None:
            raise DigestHeaderError(
                f"nc {raw_nc!r} is not 8 lowercase hex digits (RFC 7616 §3.4: nc-value = 8LHEX)"
            )
        nc = int(raw_nc, 16)
    qop = params.get("qop")
    cnonce = params.get("cnonce")
    if qop is not None and (nc is None or cnonce is None):
        missing = "nc" if nc is None else "cnonce"
        raise DigestHeaderError(
            f"Authorization has qop but lacks the {missing!r} directive (RFC 7616 §3.4)"
        )
    if qop is None and (nc is not None or cnonce is not None):
        raise DigestHeaderError("Authorization has nc/cnonce but no qop directive (RFC 7616 §3.4)")
    return DigestResponse(
        username=username,
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"],
        algorithm=params.get("algorithm"),
        cnonce=cnonce,
        nc=nc,
        qop=qop,
        opaque=params.get("opaque"),
    )


def format_authorization(response: DigestResponse) -> str:
    """Serialize ``response`` as an ``Authorization`` value that :func:`parse_authorization`
    reads back unchanged; a non-ASCII username goes out as ``username*`` (RFC 7616 §3.4.4)."""
    username = response.username
    if username.isascii() and all(_qdtext(c) or c in '"\\' for c in username):
        parts = [f"username={_quote(username, 'username')}"]
    else:
        encoded = quote(username.encode("utf-8"), safe=_ATTR_SAFE)
        parts = [f"username*=UTF-8''{encoded}"]
    parts.append(f"realm={_quote(response.realm, 'realm')}")
    parts.append(f"uri={_quote(response.uri, 'uri')}")
    if response.algorithm is not None:
        parts.append(f"algorithm={_token_or_quoted(response.algorithm, 'algorithm')}")
    parts.append(f"nonce={_quote(response.nonce, 'nonce')}")
    if response.nc is not None:
        if not 0 <= response.nc <= 0xFFFFFFFF:
            raise DigestHeaderError(f"nc {response.nc} does not fit in 8 hex digits")
        parts.append(f"nc={response.nc:08x}")
    if response.cnonce is not None:
        parts.append(f"cnonce={_quote(response.cnonce, 'cnonce')}")
    if response.qop is not None:
        parts.append(f"qop={_token_or_quoted(response.qop, 'qop')}")
    parts.append(f"response={_quote(response.response, 'response')}")
    if response.opaque is not None:
        parts.append(f"opaque={_quote(response.opaque, 'opaque')}")
    return "Digest " + ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------

#: The one message for unknown user, wrong password and "no HA1 for this algorithm", so the
#: answer never tells which usernames exist.
_BAD_CREDENTIALS = "Digest authentication failed: wrong username or password"

#: Unknown users are checked against this password, which exists only in this process, so
#: their verification costs the same hashing as a wrong password and can never succeed.
_DUMMY_PASSWORD = secrets.token_hex(32)

_DEFAULT_ALGORITHMS = (Algorithm.SHA256, Algorithm.MD5)


@dataclass(frozen=True)
class _Shape:
    algorithm: Algorithm
    nc: int
    cnonce: str
    qop: str


def _check_shape(
    response: DigestResponse,
    *,
    realm: str,
    algorithms: Sequence[Algorithm],
    request_uri: str,
) -> _Shape:
    """Everything that does not need the nonce or the password, in RFC 7616 §3.4 order."""
    if response.realm != realm:
        raise AuthenticationError(
            f"Digest realm {response.realm!r} is not this server's realm {realm!r}"
        )
    name = response.algorithm if response.algorithm is not None else "MD5"  # §3.4 default
    algorithm = _algorithm_named(name)
    if algorithm is None or algorithm not in algorithms:
        offered = ", ".join(a.value for a in algorithms)
        raise AuthenticationError(f"Digest algorithm {name!r} was not offered ({offered})")
    if response.qop is None:
        raise AuthenticationError(
            "Digest response lacks qop: RFC 2069 compatibility is not offered, qop=auth is "
            "required (RFC 7616 §3.4)"
        )
    if response.qop != "auth":
        raise AuthenticationError(f"Digest qop {response.qop!r} was not offered; only 'auth' is")
    if response.nc is None or response.cnonce is None:
        raise DigestHeaderError("Digest response with qop=auth lacks nc or cnonce (RFC 7616 §3.4)")
    if response.uri != request_uri:
        # RFC 7616 §3.4.6 (RFC 2617 §3.2.2.5): a mismatch SHOULD be answered with 400.
        raise DigestHeaderError(
            f"Digest uri {response.uri!r} does not match the request target {request_uri!r} "
            "(RFC 7616 §3.4.6)"
        )
    return _Shape(algorithm, response.nc, response.cnonce, response.qop)


def _check_digest(
    response: DigestResponse, credential: StoredCredential | None, shape: _Shape, method: str
) -> str:
    """Compare the request-digest; unknown users are hashed against a dummy HA1 (timing)."""
    algorithm = shape.algorithm
    ha1 = None
    if credential is not None:
        ha1 = credential.ha1_for(algorithm, response.username, response.realm)
    usable = ha1 is not None
    if ha1 is None:
        ha1 = compute_ha1(algorithm, response.username, response.realm, _DUMMY_PASSWORD)
    expected = compute_response(
        algorithm,
        ha1.lower(),
        nonce=response.nonce,
        nc=shape.nc,
        cnonce=shape.cnonce,
        qop=shape.qop,
        method=method,
        uri=response.uri,
    )
    matches = hmac.compare_digest(expected.encode("ascii"), response.response.lower().encode())
    if not (matches and usable):
        raise AuthenticationError(_BAD_CREDENTIALS)
    return response.username


def verify_digest(
    response: DigestResponse,
    credential: StoredCredential | None,
    *,
    method: str,
    request_uri: str,
    realm: str,
    algorithms: Sequence[Algorithm] = _DEFAULT_ALGORITHMS,
) -> str:
    """Check that ``response`` proves knowledge of the password; return the username.

    This checks realm, algorithm, qop, uri and the request-digest, but NOT that the nonce is
    ours, fresh or unreplayed: it exists for externally supplied nonces (the RFC examples).
    Servers use :meth:`DigestServer.verify`, which adds those checks.
    """
    shape = _check_shape(response, realm=realm, algorithms=algorithms, request_uri=request_uri)
    return _check_digest(response, credential, shape, method)


# --------------------------------------------------------------------------------------------
# Replay protection
# --------------------------------------------------------------------------------------------


class NonceCounter(Protocol):
    """Where the highest ``nc`` seen per nonce is kept (RFC 7616 §3.4: nc detects replays).

    Shared by all Store processes when the nonces are, e.g. a table; see
    :class:`MemoryNonceCounter` for one process.
    """

    def advance(self, nonce: str, nc: int, now: float) -> bool:
        """Record ``nc`` and return True iff it is greater than every nc seen for ``nonce``."""


@dataclass(frozen=True)
class VerifiedAnswer:
    """A Digest answer that passed every check but the nonce count (:meth:`DigestServer.check`)."""

    username: str
    nonce: str
    nc: int


class AsyncNonceCounter(Protocol):
    """A :class:`NonceCounter` behind a network round trip (a table of the certificate
    database that every frontend shares, issue 10): the Store awaits it instead of blocking
    its event loop."""

    async def advance(self, nonce: str, nc: int, now: float) -> bool:
        """Record ``nc`` and return True iff it is greater than every nc seen for ``nonce``."""


def replay_error(nc: int) -> AuthenticationError:
    """The refusal of a nonce count already used (RFC 7616 §3.4), to raise."""
    return AuthenticationError(
        f"Digest nonce count {nc:08x} was already used for this nonce (replay)"
    )


class MemoryNonceCounter:
    """A bounded in-process :class:`NonceCounter`.

    A nonce is forgotten ``retention`` seconds after its first use; that is safe when
    ``retention`` is at least the nonce lifetime plus clock skew, because by then the nonce
    is stale and refused before its count is looked at. When ``max_entries`` nonces are live
    it fails closed (refuses new nonces) rather than evicting one that could be replayed.
    Thread-safe; assumes ``now`` is roughly monotonic.
    """

    def __init__(
        self,
        retention: float = DEFAULT_NONCE_LIFETIME + DEFAULT_MAX_CLOCK_SKEW,
        max_entries: int = 100_000,
    ) -> None:
        if not retention > 0 or max_entries < 1:
            raise ConfigError("MemoryNonceCounter needs retention > 0 and max_entries >= 1")
        self._retention = retention
        self._max_entries = max_entries
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)

    def advance(self, nonce: str, nc: int, now: float) -> bool:
        with self._lock:
            self._forget(now)
            entry = self._seen.get(nonce)
            if entry is None:
                if nc < 1 or len(self._seen) >= self._max_entries:
                    return False
                self._seen[nonce] = (now, nc)
                return True
            first_seen, highest = entry
            if nc <= highest:
                return False
            self._seen[nonce] = (first_seen, nc)
            return True

    def _forget(self, now: float) -> None:
        while self._seen:
            nonce, (first_seen, _) = next(iter(self._seen.items()))
            if now - first_seen <= self._retention:
                return
            del self._seen[nonce]


# --------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------

_NONCE_LABEL = b"sipcert digest nonce v1\x00"
_OPAQUE_LABEL = b"sipcert digest opaque v1\x00"
_STAMP_LEN = 8  # big-endian milliseconds since the epoch
_RANDOM_LEN = 16
_MAC_LEN = 16  # HMAC-SHA256 truncated to 128 bits
_NONCE_BYTES = _STAMP_LEN + _RANDOM_LEN + _MAC_LEN
_NONCE_CHARS = 54  # unpadded base64url of 40 bytes
_NONCE_SHAPE = re.compile(rf"[A-Za-z0-9_-]{{{_NONCE_CHARS}}}")
_NOT_OUR_NONCE = "Digest nonce was not issued by this server for this realm"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class DigestServer:
    """The Store's side of Digest (draft §5.1: the server MUST digest challenge the PUT).

    Nonces are stateless: ``base64url(ms-timestamp || 16 random bytes || HMAC(secret, ...))``
    with the realm under the MAC, so every process sharing ``secret`` accepts them, nothing
    else forges them, and their age is readable for ``stale=true`` (RFC 7616 §3.3). Replays
    are refused by ``nonce_counter``. Challenges list ``algorithms`` in order; SHA-256 first,
    because clients such as httpx and curl answer the first Digest challenge.
    """

    def __init__(
        self,
        secret: bytes,
        realm: str,
        *,
        nonce_lifetime: float = DEFAULT_NONCE_LIFETIME,
        algorithms: Sequence[Algorithm] = _DEFAULT_ALGORITHMS,
        nonce_counter: NonceCounter | None = None,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if len(secret) < 16:
            raise ConfigError("the Digest nonce secret must be at least 16 bytes")
        wire_realm = realm.encode("utf-8").decode("latin-1")
        if not realm or not all(_qdtext(c) or c in '"\\' for c in wire_realm):
            raise ConfigError("the Digest realm must be non-empty text without control characters")
        if not nonce_lifetime > 0 or not max_clock_skew >= 0:
            raise ConfigError("nonce_lifetime must be > 0 and max_clock_skew >= 0")
        if not algorithms or len(set(algorithms)) != len(algorithms):
            raise ConfigError("algorithms must be a non-empty list without repetitions")
        self._secret = secret
        self.realm = realm
        self.nonce_lifetime = nonce_lifetime
        self.max_clock_skew = max_clock_skew
        self.algorithms: tuple[Algorithm, ...] = tuple(algorithms)
        self.nonce_counter: NonceCounter = (
            nonce_counter
            if nonce_counter is not None
            else MemoryNonceCounter(retention=nonce_lifetime + max_clock_skew)
        )
        self._random_bytes = random_bytes
        #: Echoed by clients (RFC 7616 §3.3); fixed per secret and realm, so any process agrees.
        self.opaque = _b64url(
            hmac.digest(secret, _OPAQUE_LABEL + realm.encode("utf-8"), "sha256")[:18]
        )
        #: The challenges' text before the nonce, per algorithm, and what it was made from.
        self._made: tuple[tuple[str, tuple[Algorithm, ...], str], tuple[str, ...]] | None = None

    def _mac(self, stamp: bytes, random: bytes) -> bytes:
        data = _NONCE_LABEL + stamp + random + self.realm.encode("utf-8")
        return hmac.digest(self._secret, data, "sha256")[:_MAC_LEN]

    def new_nonce(self, now: float) -> str:
        """A fresh nonce stamped with ``now``."""
        if not (math.isfinite(now) and 0 <= now < 2**53 / 1000):
            raise ConfigError(f"now={now!r} is not a usable Unix time")
        stamp = int(now * 1000).to_bytes(_STAMP_LEN, "big")
        random = self._random_bytes(_RANDOM_LEN)
        if len(random) != _RANDOM_LEN:
            raise ConfigError(f"random_bytes returned {len(random)} bytes, not {_RANDOM_LEN}")
        return _b64url(stamp + random + self._mac(stamp, random))

    def nonce_issued_at(self, nonce: str) -> float:
        """When this server (any process with the secret) issued ``nonce``; Unix time.

        Raises :class:`AuthenticationError` for a nonce that is not ours: forged, altered,
        from another secret or realm, or in a non-canonical encoding.
        """
        if _NONCE_SHAPE.fullmatch(nonce) is None:
            raise AuthenticationError(_NOT_OUR_NONCE)
        try:
            raw = base64.urlsafe_b64decode(nonce + "==")
        except (binascii.Error, ValueError) as exc:
            raise AuthenticationError(_NOT_OUR_NONCE) from exc
        # Canonical form only, so one nonce has one spelling (the replay cache keys on it).
        if len(raw) != _NONCE_BYTES or _b64url(raw) != nonce:
            raise AuthenticationError(_NOT_OUR_NONCE)
        stamp = raw[:_STAMP_LEN]
        random = raw[_STAMP_LEN : _STAMP_LEN + _RANDOM_LEN]
        if not hmac.compare_digest(raw[_STAMP_LEN + _RANDOM_LEN :], self._mac(stamp, random)):
            raise AuthenticationError(_NOT_OUR_NONCE)
        return int.from_bytes(stamp, "big") / 1000

    def challenges(self, now: float, *, stale: bool = False) -> list[str]:
        """``WWW-Authenticate`` values, one per algorithm in preference order (RFC 7616 §3.3).

        All share one nonce. ``stale=True`` after :class:`StaleNonceError`, so that clients
        retry with the new nonce without asking the user again.
        """
        nonce = self.new_nonce(now)
        # Every 401 has them: the quoted realm and the rest before the nonce are made once.
        source = (self.realm, self.algorithms, self.opaque)
        made = self._made
        if made is None or made[0] != source:
            realm = _quote(self.realm, "realm")
            heads = tuple(
                f'Digest realm={realm}, qop="auth", algorithm={algorithm.value}, nonce="'
                for algorithm in self.algorithms
            )
            made = self._made = (source, heads)
        tail = f'", opaque="{self.opaque}"' + (", stale=true" if stale else "")
        return [head + nonce + tail for head in made[1]]

    def verify(
        self,
        response: DigestResponse,
        credential: StoredCredential | None,
        *,
        method: str,
        request_uri: str,
        now: float,
    ) -> str:
        """Authenticate one request; return the username.

        Order: realm, algorithm, qop/nc/cnonce, uri (400 on mismatch, RFC 7616 §3.4.6),
        nonce genuineness, opaque, request-digest, nonce age, nonce count. Age comes after
        the digest so that ``stale`` is only claimed for otherwise correct answers
        (RFC 7616 §3.3): :class:`StaleNonceError`. ``credential`` is ``None`` for an unknown
        user, which fails exactly like a wrong password.
        """
        answer = self.check(response, credential, method=method, request_uri=request_uri, now=now)
        if not self.nonce_counter.advance(answer.nonce, answer.nc, now):
            raise replay_error(answer.nc)
        return answer.username

    def check(
        self,
        response: DigestResponse,
        credential: StoredCredential | None,
        *,
        method: str,
        request_uri: str,
        now: float,
    ) -> VerifiedAnswer:
        """Every check of :meth:`verify` but the last, the nonce count, which the caller
        records itself in an :class:`AsyncNonceCounter` (and refuses with
        :func:`replay_error` when ``advance`` says False)."""
        shape = _check_shape(
            response, realm=self.realm, algorithms=self.algorithms, request_uri=request_uri
        )
        issued_at = self._check_nonce(response, now)
        username = _check_digest(response, credential, shape, method)
        if now - issued_at > self.nonce_lifetime:
            raise StaleNonceError(
                f"Digest nonce expired {now - issued_at - self.nonce_lifetime:.0f} s ago; "
                "retry with the new nonce"
            )
        return VerifiedAnswer(username, response.nonce, shape.nc)

    def _check_nonce(self, response: DigestResponse, now: float) -> float:
        """When our nonce was issued; refuses a forged one, a changed opaque, a future stamp."""
        issued_at = self.nonce_issued_at(response.nonce)
        if response.opaque is not None and not hmac.compare_digest(
            response.opaque.encode(), self.opaque.encode()
        ):
            raise AuthenticationError("Digest opaque was not returned unchanged (RFC 7616 §3.4)")
        if issued_at - now > self.max_clock_skew:
            raise AuthenticationError("Digest nonce is stamped in the future; check the clocks")
        return issued_at

    def authenticate(
        self,
        authorization: str | None,
        lookup: Callable[[str], StoredCredential | None],
        *,
        method: str,
        request_uri: str,
        now: float,
    ) -> str:
        """Verify a raw ``Authorization`` value; ``lookup(username)`` gives the credential.

        Missing credentials and other schemes raise :class:`AuthenticationError` (answer 401
        with :meth:`challenges`); malformed Digest raises :class:`DigestHeaderError` (400).
        """
        if authorization is None or not authorization.strip(_OWS):
            raise AuthenticationError("no Authorization header: Digest credentials required")
        scheme = _LEADING_TOKEN.match(authorization.lstrip(_OWS))
        if scheme is None or scheme.group().lower() != "digest":
            shown = scheme.group()[:32] if scheme is not None else authorization.lstrip(_OWS)[:1]
            raise AuthenticationError(f"Authorization scheme {shown!r} is not accepted; use Digest")
        response = parse_authorization(authorization)
        return self.verify(
            response,
            lookup(response.username),
            method=method,
            request_uri=request_uri,
            now=now,
        )


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """One Digest challenge from a ``WWW-Authenticate`` header (RFC 7616 §3.3).

    ``algorithm`` is the name as offered (``MD5`` when absent); :attr:`supported_algorithm`
    says whether we can answer it.
    """

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    userhash: bool = False
    charset: str | None = None

    @property
    def supported_algorithm(self) -> Algorithm | None:
        """The :class:`Algorithm` to answer with, or ``None`` (SHA-512-256, ``-sess``, ...)."""
        return _algorithm_named(self.algorithm)


def parse_challenges(values: Sequence[str]) -> list[Challenge]:
    """The Digest challenges in ``WWW-Authenticate`` values, in order (RFC 7235 §4.1).

    A value may hold several comma-separated challenges; other schemes (``Basic``,
    ``Negotiate`` ...) are skipped, Digest challenges with unknown algorithms are kept (see
    :func:`choose_challenge`). A malformed value raises :class:`DigestHeaderError`.
    """
    if isinstance(values, str):
        values = [values]
    if len(values) > MAX_CHALLENGE_VALUES:
        raise InputTooLargeError(
            f"{len(values)} WWW-Authenticate values, over the {MAX_CHALLENGE_VALUES} limit"
        )
    challenges: list[Challenge] = []
    for value in values:
        _check_length(value, "WWW-Authenticate")
        for item in _parse_items(value, "WWW-Authenticate"):
            if item.scheme.lower() != "digest":
                continue
            if item.token68 is not None:
                raise DigestHeaderError("a Digest challenge must be directives, not token68")
            params = item.params
            for required in ("realm", "nonce"):
                if required not in params:
                    raise DigestHeaderError(
                        f"Digest challenge lacks the {required!r} directive (RFC 7616 §3.3)"
                    )
            qop = tuple(q.strip(_OWS) for q in params.get("qop", "").split(",") if q.strip(_OWS))
            challenges.append(
                Challenge(
                    realm=params["realm"],
                    nonce=params["nonce"],
                    algorithm=params.get("algorithm", "MD5"),
                    qop=qop,
                    opaque=params.get("opaque"),
                    stale=params.get("stale", "false").lower() == "true",
                    userhash=params.get("userhash", "false").lower() == "true",
                    charset=params.get("charset"),
                )
            )
    return challenges


def choose_challenge(
    challenges: Sequence[Challenge], *, exclude: Collection[Algorithm] = ()
) -> Challenge:
    """The challenge to answer: SHA-256 over MD5, then server order (RFC 7616 §3.7).

    Only challenges offering ``qop=auth`` with an algorithm we implement and that is not in
    ``exclude`` qualify; raises :class:`AuthenticationError` when none does.
    """
    preference = list(Algorithm)
    usable: list[tuple[int, int, Challenge]] = []
    for position, challenge in enumerate(challenges):
        algorithm = challenge.supported_algorithm
        if algorithm is not None and algorithm not in exclude and "auth" in challenge.qop:
            usable.append((preference.index(algorithm), position, challenge))
    if not usable:
        offered = ", ".join(f"{c.algorithm} qop={'/'.join(c.qop) or '-'}" for c in challenges)
        raise AuthenticationError(
            "no usable Digest challenge (need SHA-256 or MD5 with qop=auth; "
            f"got {offered or 'none'})"
        )
    return min(usable, key=lambda entry: entry[:2])[2]


def build_authorization(
    challenge: Challenge,
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    nc: int,
    cnonce: str,
) -> str:
    """The ``Authorization`` value answering ``challenge`` with ``qop=auth`` (RFC 7616 §3.4).

    ``uri`` must be the request target exactly as sent (path and query).
    """
    algorithm = challenge.supported_algorithm
    if algorithm is None:
        raise AuthenticationError(f"Digest algorithm {challenge.algorithm!r} is not supported")
    if "auth" not in challenge.qop:
        raise AuthenticationError("the Digest challenge does not offer qop=auth")
    if not 1 <= nc <= 0xFFFFFFFF:
        raise DigestHeaderError(f"nc {nc} is outside 1..ffffffff")
    if not cnonce:
        raise DigestHeaderError("cnonce must not be empty")
    ha1 = compute_ha1(algorithm, username, challenge.realm, password)
    digest = compute_response(
        algorithm,
        ha1,
        nonce=challenge.nonce,
        nc=nc,
        cnonce=cnonce,
        qop="auth",
        method=method,
        uri=uri,
    )
    return format_authorization(
        DigestResponse(
            username=username,
            realm=challenge.realm,
            nonce=challenge.nonce,
            uri=uri,
            response=digest,
            algorithm=algorithm.value,
            cnonce=cnonce,
            nc=nc,
            qop="auth",
            opaque=challenge.opaque,
        )
    )


def _random_cnonce() -> str:
    return secrets.token_hex(16)


class DigestClient:
    """Answers Digest challenges for one user, counting ``nc`` per nonce (RFC 7616 §3.4).

    Call :meth:`answer` with the 401's ``WWW-Authenticate`` values; afterwards
    :meth:`authorization` gives pre-emptive headers for further requests with the same
    nonce until the server sends a new challenge (e.g. ``stale=true``).
    """

    def __init__(
        self,
        username: str,
        password: str,
        *,
        cnonce_factory: Callable[[], str] = _random_cnonce,
    ) -> None:
        self.username = username
        self._password = password
        self._cnonce_factory = cnonce_factory
        self._challenge: Challenge | None = None
        self._nc = 0

    @property
    def challenge(self) -> Challenge | None:
        """The challenge being answered, if any."""
        return self._challenge

    def answer(
        self,
        www_authenticate: Sequence[str],
        *,
        method: str,
        uri: str,
        exclude: Collection[Algorithm] = (),
    ) -> str:
        """Pick the best challenge (not using ``exclude``) and return an ``Authorization``."""
        chosen = choose_challenge(parse_challenges(www_authenticate), exclude=exclude)
        if self._challenge is None or chosen.nonce != self._challenge.nonce:
            self._nc = 0  # a new nonce counts from 1; the same nonce keeps counting
        self._challenge = chosen
        return self._next(chosen, method=method, uri=uri)

    def authorization(self, *, method: str, uri: str) -> str | None:
        """The next ``Authorization`` value for the current nonce, or ``None`` before any."""
        if self._challenge is None:
            return None
        return self._next(self._challenge, method=method, uri=uri)

    def _next(self, challenge: Challenge, *, method: str, uri: str) -> str:
        self._nc += 1
        return build_authorization(
            challenge,
            method=method,
            uri=uri,
            username=self.username,
            password=self._password,
            nc=self._nc,
            cnonce=self._cnonce_factory(),
        )
