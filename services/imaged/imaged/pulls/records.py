"""The live records of imaged's pull table: one `Pull` per pull in flight, one `Transfer`
per layer blob being fetched, shared by every pull that needs it.

    Pull:     resolving ──manifest and config──> pulling ──image committed──> done
                  └──────────────────┴──── error, cancel, no progress ──────> failed

    Transfer: waiting ──download slot──> downloading ──all bytes──> verifying
                 (blob already stored) ──────────────────────────┐      │ digest ok
                                                                 v      v
                                                 done <── unpacking <───┘

    A pull's layer is `exists` when it is already unpacked here, `shared` while another
    pull owns the transfer it waits on (its bytes show in both), else its transfer's
    state; `done` once the pull has it.

The download path touches a record with plain integer additions only (`Transfer.done`):
everything derived (rates, stalls, metrics, what watchers see) is computed by the table's
ticker a few times a second, so tracking costs the bytes nothing. In memory only: a pull
in flight does not survive imaged (the kubelet retries, and the kept partial download of
the content store saves its bytes).
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

from crib_common.models.imaged import PullInfo, PullLayer, PullRequester

__all__ = ["LayerEntry", "Pull", "Transfer", "RATE_WINDOW"]

# Seconds of samples the rate is averaged over: long enough to smooth a registry's
# bursts, short enough that a stall shows within a few seconds.
RATE_WINDOW = 5.0


@dataclass(eq=False, slots=True)
class Transfer:
    """The fetch (and unpack) of one layer blob; every pull needing it reads these bytes."""

    digest: str
    size: int
    registry: str
    state: str = "waiting"
    done: int = 0
    owners: list[Pull] = field(default_factory=list)
    # Ticker bookkeeping: `done` at the last tick (metrics deltas), and when bytes last
    # arrived (or the download began: a stall is counted from there).
    seen: int = 0
    moved_at: float = 0.0

    def owner(self) -> Pull | None:
        """The pull that does the work: the first attached one still in flight."""
        for pull in self.owners:
            if pull.finished_at == 0:
                return pull
        return None


@dataclass(eq=False, slots=True)
class LayerEntry:
    """A layer of one pull: its own final state, or the transfer it follows."""

    digest: str
    size: int
    state: str = "waiting"  # waiting | exists | done; else the transfer's state shows
    transfer: Transfer | None = None

    def view(self, pull: Pull) -> PullLayer:
        tr = self.transfer
        if self.state in ("exists", "done") or tr is None:
            done = self.size if self.state in ("exists", "done") else 0
            return PullLayer(digest=self.digest, size=self.size, done=done, state=self.state)
        owner = tr.owner()
        if owner is not None and owner is not pull:
            return PullLayer(digest=self.digest, size=self.size, done=tr.done, state="shared",
                             shared_with=owner.id)
        return PullLayer(digest=self.digest, size=self.size, done=tr.done, state=tr.state)

    def bytes_done(self) -> int:
        if self.state in ("exists", "done"):
            return self.size
        return self.transfer.done if self.transfer is not None else 0


@dataclass(eq=False, slots=True)
class Pull:
    """One pull in flight (or just finished)."""

    id: str
    reference: str
    requester: PullRequester
    started_at: int  # unix ns
    started: float  # loop time
    state: str = "resolving"
    digest: str = ""
    image_id: str = ""
    layers: dict[str, LayerEntry] = field(default_factory=dict)
    error_kind: str = ""
    error: str = ""
    finished_at: int = 0
    finished: float = 0.0
    registry: str = ""
    # Bumped on every change of state a watcher should see besides bytes.
    version: int = 0
    # Ticker bookkeeping: (loop time, downloaded bytes) samples for the rate; what was
    # last published; when the last progress line was logged.
    samples: collections.deque[tuple[float, int]] = field(
        default_factory=lambda: collections.deque(maxlen=64))
    published: tuple[int, int] = (-1, -1)
    logged: float = 0.0
    # The no-progress timeout: the pull's cancel scope and, once tripped, why.
    deadline: asyncio.Timeout | None = None
    stall: str = ""

    def changed(self) -> None:
        self.version += 1

    def size(self) -> int:
        return sum(entry.size for entry in self.layers.values())

    def bytes_done(self) -> int:
        return sum(entry.bytes_done() for entry in self.layers.values())

    def transferred(self) -> int:
        """Bytes that came (or are coming) over the network: what the rate is made of."""
        return sum(entry.transfer.done for entry in self.layers.values()
                   if entry.transfer is not None and entry.state != "exists")

    def rate(self) -> float:
        """Bytes per second over the last RATE_WINDOW seconds of samples."""
        if len(self.samples) < 2:
            return 0.0
        t_last, b_last = self.samples[-1]
        for t, b in self.samples:
            if t_last - t <= RATE_WINDOW:
                break
        span = t_last - t
        return max(b_last - b, 0) / span if span > 0 else 0.0

    def info(self, now: float) -> PullInfo:
        """The pull as `GET /v1/pulls` shows it, at loop time `now`."""
        size, done = self.size(), self.bytes_done()
        rate = self.rate() if self.finished_at == 0 else 0.0
        eta = (size - done) / rate if rate > 0 and size >= done else None
        end = self.finished if self.finished_at else now
        return PullInfo(
            id=self.id, reference=self.reference, digest=self.digest,
            image_id=self.image_id, requester=self.requester, state=self.state,
            started_at=self.started_at, finished_at=self.finished_at,
            elapsed=round(max(end - self.started, 0.0), 3), size=size, done=done,
            rate=round(rate, 1), eta=round(eta, 1) if eta is not None else None,
            layers=[entry.view(self) for entry in self.layers.values()],
            error_kind=self.error_kind, error=self.error)
