"""A per-worker cache of rendered GET answers, never stale after a write (issue 13).

Reading the rows and building the answer was a third of the CPU of a Store GET. This cache
keeps the finished :class:`~sipcert.proto.store.Response` of a lookup (made without
``If-None-Match``; :func:`~sipcert.proto.store.conditional` applies that per request), keyed
by what the answer depends on: the connection's domain, the AOR and the certHash filter.

Correctness before speed:

* **Writes anywhere.** Before every lookup the cache asks the database for its change
  counter (SQLite's ``PRAGMA data_version``, which changes whenever *another* connection --
  another worker, another process, this worker's own writer connection -- has committed).
  A different value empties the cache. A PUT or DELETE commits before its 201/204 is sent,
  so a request that starts after that answer reads the new counter and misses: no worker
  ever serves an answer older than a write it could have known about. The counter is read
  before the rows are, so a commit landing in between only empties the cache once more;
  and an answer is kept only if no request has seen a newer counter meanwhile (a backend
  that awaits while reading could otherwise put a pre-write answer into the new cache).
* **Expiry.** An entry is used only while ``now <= notAfter`` of every certificate in it
  (draft §4.4: "SHOULD not provide certificates that have become invalid"); past that the
  rows are read again, and the expired certificate is left out as always.
* **Size.** At most ``max_bytes`` (bodies plus a per-entry overhead); the oldest entries go
  first. Under a uniformly random load the hit rate is about the share of the AORs that fit.

Only a backend with such a counter can be cached; :func:`version_source` finds it (SQLite
now). Without one, every GET reads the database as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from sipcert.proto.store import Response

__all__ = ["ENTRY_OVERHEAD", "AnswerCache", "CacheKey", "version_source"]

#: Bytes counted per entry besides its body and headers (the Python objects around them).
ENTRY_OVERHEAD = 400
#: ``(domain, AOR or None, certHash or None)``: everything a GET answer depends on.
CacheKey = tuple[str, str | None, str | None]


#: ``(status, headers, body, valid_until, size)``: only atoms in tuples, which Python's
#: cyclic garbage collector stops tracking, so a cache of a hundred thousand answers adds
#: nothing to its full collections (a dataclass per entry made them pause a worker for
#: 100-400 ms: the p99 of the first measurement). ``valid_until``: the Unix time after
#: which a certificate of the answer has expired (``inf``: none in it).
_Entry = tuple[int, tuple[tuple[str, str], ...], bytes, float, int]


class AnswerCache:
    """Rendered answers of one worker, emptied whenever ``version()`` changes.

    ``version`` is called once per :meth:`get`; it must be cheap and synchronous and change
    after any committed write to the certificates (see :func:`version_source`).
    """

    def __init__(self, version: Callable[[], int], *, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("an answer cache needs a positive size")
        self._version = version
        self._seen: int | None = None
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: dict[CacheKey, _Entry] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey, now: float) -> tuple[Response | None, int]:
        """The cached answer for ``key`` at Unix time ``now`` (or None), and the version.

        On a miss, read the rows, then :meth:`put` the answer with that version.
        """
        version = self._version()
        if version != self._seen:
            self.clear()
            self._seen = version
        entry = self._entries.get(key)
        if entry is None or now > entry[3]:
            self.misses += 1
            return None, version
        self.hits += 1
        return Response(entry[0], entry[1], entry[2]), version

    def put(self, key: CacheKey, answer: Response, not_after: list[float], version: int) -> None:
        """Keep ``answer``, made from rows read after :meth:`get` returned ``version``.

        ``not_after``: the notAfter (Unix time) of each certificate in the answer. If the
        cache has seen another version since (a write landed while the rows were read, and
        another request noticed it first), the answer may predate that write: not kept.
        """
        if version != self._seen:
            return
        size = (
            len(answer.body)
            + sum(len(name) + len(value) for name, value in answer.headers)
            + ENTRY_OVERHEAD
        )
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.size -= old[4]
        entries = self._entries
        while entries and self.size + size > self.max_bytes:
            oldest = next(iter(entries))  # insertion order: the oldest entry first
            self.size -= entries.pop(oldest)[4]
        valid_until = min(not_after, default=math.inf)
        entries[key] = (answer.status, answer.headers, answer.body, valid_until, size)
        self.size += size

    def clear(self) -> None:
        """Forget every answer."""
        self._entries.clear()
        self.size = 0


def version_source(storage: object) -> Callable[[], int] | None:
    """The change counter of ``storage`` if it has one (``data_version``), else None."""
    method = getattr(storage, "data_version", None)
    return method if callable(method) else None
