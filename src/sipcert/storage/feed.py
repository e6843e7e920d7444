"""The change feed the edge publishers follow (issue 13).

Every transaction that adds or removes a certificate also appends one row naming the AOR
to an ordered table; a publisher on any host reads the rows after the last one it handled
and publishes those AORs again from the database. A row says only *which* AOR to look at,
never what changed, so handling a row twice or out of order is harmless: the answer is
always read afresh. The backends that keep such a table implement :class:`ChangeFeed`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

__all__ = ["Change", "ChangeFeed"]


@dataclass(frozen=True, slots=True)
class Change:
    """One row of the feed: the AOR ``aor`` may answer differently since ``seq``."""

    seq: int
    aor: str


@runtime_checkable
class ChangeFeed(Protocol):
    """What a publisher needs besides :class:`~sipcert.storage.base.CertificateStore`."""

    async def aors(self, now: datetime) -> list[str]:
        """Every AOR with an unexpired certificate, sorted (a full publication)."""

    async def changes_since(self, seq: int, limit: int = 1000) -> list[Change]:
        """The rows after ``seq`` in ascending order, at most ``limit`` of them."""

    async def feed_bounds(self) -> tuple[int, int]:
        """The oldest and newest sequence numbers kept (0, 0 for an empty feed).

        A follower whose position is below ``oldest - 1`` missed pruned rows and must
        publish everything again.
        """

    def wake_ups(self) -> AsyncIterator[None] | None:
        """An iterator that yields once when it listens, then soon after any frontend
        commits a change; or None when the backend can only be polled (the publisher then
        polls every few milliseconds)."""
