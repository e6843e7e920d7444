"""Edge mode without I/O (issue 13): a Store answer as files nginx serves, and back.

The publisher renders each AOR's answer with the Store's own function
(:func:`~sipcert.proto.store.certificates_response`) and keeps it as an *object*: a
directory whose path spells the headers nginx cannot read from a file, holding the body::

    <domain>/o/<etag>-<kind>|<disposition>|<description>/body
    <domain>/a/<user>  ->  ../o/<etag>-<kind>|<disposition>|<description>   (a symlink)

One path component for the whole object: nginx's ``realpath()`` reads every component.

That ``realpath()`` costs a system call per component of the path on every GET (nine in a
typical tree). So the publisher also writes an nginx ``map`` of the whole tree (the *map
generation*, :func:`map_line`) and has nginx reload it: a GET of the ``email=`` spelling of
a mapped AOR then costs one hash lookup and the ``open`` of the body, as a static file
does. When an AOR changes, the object its old answer was is removed once its symlink
names the new one; nginx, finding no body where a generation said, takes the symlink as
above, so a change is served at once and a reload only makes it fast again::

    map/live.map   "<domain>|email=<user>%40<domain>" "<user>|<object>";

nginx resolves the AOR's symlink once (``$realpath_root``), takes ETag, Content-Type,
Content-Disposition and Content-Description from that path with ``map`` regexes
(:mod:`sipcert.server.nginx`), and serves ``body`` from the same resolved directory, so
headers and body always belong to one answer even while the symlink is being replaced.

Only what nginx can match exactly is served from files: the query spelling sipcert clients
send (``email=`` or ``sip=`` then the percent-encoded ``user@domain``, see
:func:`sipcert.client.locate.query_string`) for a user made of the characters that spelling
leaves unencoded. Every other spelling goes to the Python Store, which parses it
(:func:`~sipcert.proto.store.parse_query`) and answers the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sipcert.proto.aor import AOR
from sipcert.proto.store import PKIX_CERT, Response

__all__ = [
    "ABSENT_FIELD",
    "BODY_NAME",
    "CLIENT_HEADER",
    "DOMAIN_HEADER",
    "FILE_USER_PATTERN",
    "LABEL_MARK",
    "MAP_FILE",
    "MAP_FOLDER",
    "NONE_OBJECT",
    "PROXY_OBJECT",
    "EdgeObject",
    "FeedCursor",
    "edge_object",
    "file_user",
    "map_line",
    "parse_map_line",
]

#: The header naming the TLS server name of a request nginx proxies to the Store; the Store
#: believes it on its unix socket only (``sipcert serve --unix-socket``).
DOMAIN_HEADER = "X-Sipcert-Domain"
#: The header naming the client address of such a request (for the guessing limiter).
CLIENT_HEADER = "X-Sipcert-Client"
#: A user part served from a file: the characters ``urllib.parse.quote(safe='')`` keeps,
#: not starting with a dot (so never ``.`` or ``..``), at most 64 of them. The same regex
#: is written into the nginx configuration.
FILE_USER_PATTERN = r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,63}"
_FILE_USER_RE = re.compile(FILE_USER_PATTERN)
#: The object an AOR without certificates points to: nginx answers the Store's 404.
NONE_OBJECT = "none"
#: The object of an answer whose headers cannot be spelled as a path: nginx proxies.
PROXY_OBJECT = "proxy"
#: The file holding the body inside an object directory.
BODY_NAME = "body"
#: The folder of the map generation under the publish folder, and the file nginx includes
#: (its configuration includes ``map/*.map``: none at all is an empty map).
MAP_FOLDER = "map"
MAP_FILE = "live.map"
#: An object name's field for a header the answer does not have (nginx maps it to "").
ABSENT_FIELD = "_"
#: What starts an object name's label field (its Content-Description follows).
LABEL_MARK = "="
_ETAG_RE = re.compile(r'"([0-9a-f]{32})"')
_BOUNDARY_RE = re.compile(r'multipart/mixed; boundary="sipcert-([0-9a-f]{32})(?:-([0-9]{1,9}))?"')
_MAX_COMPONENT = 255  # NAME_MAX of Linux file systems, in bytes


def file_user(aor: AOR) -> str | None:
    """The file name of ``aor``'s answer, or None when nginx must proxy its queries.

    The client's spelling of such a user is the user itself (``quote`` leaves these
    characters alone), so the name nginx captures from the query is the canonical user.
    """
    return aor.user if _FILE_USER_RE.fullmatch(aor.user) else None


def _component(value: str) -> str | None:
    """``value`` as one path component, or None when it cannot be one as it is."""
    if (
        not value
        or "/" in value
        or value in (".", "..")
        or not value.isascii()
        or not value.isprintable()
        or len(value) > _MAX_COMPONENT
    ):
        return None
    return value


@dataclass(frozen=True, slots=True)
class EdgeObject:
    """One published answer: the path components under ``o/`` and the body.

    ``parts`` is ``(NONE_OBJECT,)``, ``(PROXY_OBJECT,)`` or ``(etag, kind, disposition,
    description)``; :meth:`headers` is what nginx sends for it, read back from the path
    the same way the generated ``map`` blocks do.
    """

    parts: tuple[str, ...]
    body: bytes = field(default=b"", repr=False)

    @property
    def path(self) -> str:
        """The object's directory name in ``o/`` (one component)."""
        if len(self.parts) != 4:
            return self.parts[0]
        etag, kind, disposition, description = self.parts
        return f"{etag}-{kind}|{disposition}|{description}"

    def headers(self, max_age: int) -> tuple[tuple[str, str], ...]:
        """The headers nginx derives from :attr:`parts` (none for the 404 and proxy objects)."""
        if len(self.parts) != 4:
            return ()
        etag, kind, disposition, description = self.parts
        if kind == "1":
            content_type = PKIX_CERT
        else:
            salt = kind[1:]
            boundary = f"sipcert-{etag}" + (f"-{salt}" if salt else "")
            content_type = f'multipart/mixed; boundary="{boundary}"'
        headers = [("Content-Type", content_type)]
        if description != ABSENT_FIELD:
            headers.append(("Content-Description", description.removeprefix(LABEL_MARK)))
        if disposition != ABSENT_FIELD:
            headers.append(("Content-Disposition", disposition))
        headers += [("ETag", f'"{etag}"'), ("Cache-Control", f"max-age={max_age}")]
        return tuple(headers)


def edge_object(answer: Response) -> EdgeObject:
    """The object for a GET answer of the Store (for a canonical query, no If-None-Match).

    A 404 becomes :data:`NONE_OBJECT`; an answer whose headers are not all expressible
    as path components (a label with ``/``, say) becomes :data:`PROXY_OBJECT`, so nginx
    hands such AORs to the Store rather than answering differently.
    """
    if answer.status == 404:
        return EdgeObject((NONE_OBJECT,))
    proxy = EdgeObject((PROXY_OBJECT,))
    if answer.status != 200:
        return proxy
    headers = dict(answer.headers)
    if len(headers) != len(answer.headers):
        return proxy
    etag_match = _ETAG_RE.fullmatch(headers.pop("ETag", ""))
    headers.pop("Cache-Control", None)
    content_type = headers.pop("Content-Type", "")
    if etag_match is None:
        return proxy
    etag = etag_match.group(1)
    if content_type == PKIX_CERT:
        kind = "1"
    else:
        boundary = _BOUNDARY_RE.fullmatch(content_type)
        if boundary is None or boundary.group(1) != etag:
            return proxy
        kind = "m" + (boundary.group(2) or "")
    disposition = headers.pop("Content-Disposition", None)
    description = headers.pop("Content-Description", None)
    if headers:  # a header this layout does not carry
        return proxy
    parts = [etag, kind]
    for value, prefix in ((disposition, ""), (description, LABEL_MARK)):
        parts.append(ABSENT_FIELD if value is None else prefix + value)
    if "|" in parts[2]:  # the separator may appear in the description only (it is last)
        return proxy
    obj = EdgeObject(tuple(parts), answer.body)
    return obj if _component(obj.path) is not None else proxy


@dataclass
class FeedCursor:
    """A follower's position in the change feed, tolerant of rows that commit late.

    PostgreSQL hands out ``bigserial`` numbers at INSERT, so a transaction that took 41
    may commit after the one that took 42: a follower that jumped to 42 would never see
    41. The cursor therefore advances ``low`` only over a contiguous run and remembers the
    numbers above it already handled; a gap older than ``gap_timeout`` seconds (a rolled
    back transaction, or a deleted row) is given up. Handling an AOR twice is harmless.
    """

    low: int = 0
    gap_timeout: float = 10.0
    _seen: set[int] = field(default_factory=set)
    _gap_since: float | None = None

    def take(self, seqs: Iterable[int], now: float) -> list[int]:
        """The numbers of ``seqs`` not handled yet; ``low`` moves over what is complete."""
        new = sorted({s for s in seqs if s > self.low and s not in self._seen})
        self._seen.update(new)
        while self.low + 1 in self._seen:
            self.low += 1
            self._seen.discard(self.low)
        if not self._seen:
            self._gap_since = None
        elif self._gap_since is None:
            self._gap_since = now
        elif now - self._gap_since >= self.gap_timeout:  # give the gap up
            self.low = min(self._seen) - 1
            self._gap_since = None
            while self.low + 1 in self._seen:
                self.low += 1
                self._seen.discard(self.low)
            if self._seen:
                self._gap_since = now
        return new

    @property
    def waiting(self) -> bool:
        """True while a gap below a handled number may still be filled."""
        return bool(self._seen)


def distinct(items: Sequence[str]) -> list[str]:
    """``items`` without repeats, in first-seen order."""
    return list(dict.fromkeys(items))


#: What a map line holds: nginx's double-quoted strings with ``\\`` and ``\"`` escapes.
_MAP_LINE_RE = re.compile(r'"([^"|\\/]+)\|email=([^"%]+)%40\1" "\2\|((?:[^"\\]|\\.)+)";')


def map_line(domain: str, user: str, obj_path: str) -> str | None:
    """The map entry of ``user@domain`` served from ``obj_path``, or None if it has none.

    The key is what nginx matches, ``"$ssl_server_name|$args"`` of the canonical query
    (:func:`sipcert.client.locate.query_string`); the value is the user (nginx checks the
    query against it: map keys compare without case) and the object. The 404 and proxy
    objects and a path with ``$`` (which nginx would read as a
    variable) stay out: their AORs take the symlink.
    """
    if obj_path in (NONE_OBJECT, PROXY_OBJECT) or "$" in obj_path or "$" in domain:
        return None
    value = f"{user}|{obj_path}".replace("\\", "\\\\").replace('"', '\\"')
    return f'"{domain}|email={user}%40{domain}" "{value}";'


def parse_map_line(line: str) -> tuple[str, str, str] | None:
    """``(domain, user, object)`` of a line :func:`map_line` wrote, or None."""
    match = _MAP_LINE_RE.fullmatch(line.rstrip("\n"))
    if match is None:
        return None
    domain, user, escaped = match.groups()
    return domain, user, re.sub(r"\\(.)", r"\1", escaped)
