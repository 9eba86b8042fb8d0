"""netd's persisted state: one record per attachment, in a `StateStore` (root/netd.db).

State machine of an attachment record (kind "attachment", key = pod id):

      POST /v1/networks
            |
            v                  ADD failed, rollback failed
       [creating] ---------------------------------------+
            | netns pinned, CNI ADD ok                   |
            v                                            v
         [ready] --- DELETE /v1/networks/{id} ---> [deleting] --- DEL ok, netns gone ---> (no record)
                                                         ^  |
                                                         +--+ DEL failed: kept, retried

The record is written *before* the namespace is made and before the first plugin runs,
and it carries the whole configuration list the ADD uses, so a kill -9 at any point
leaves enough on disk to undo it: at start, `creating` and `deleting` records are torn
down (CNI DEL with the cached configuration and whatever result was cached, then the pin
is removed); `ready` ones are kept. The record is deleted only after DEL succeeded, so a
lease is never forgotten while still held.

What may change while netd is down: the conf dir (DEL and CHECK keep using the cached
list), a namespace pin may be unmounted by hand (the record stays, `netns_present` says
so, DEL still runs without CNI_NETNS), plugins may be upgraded (looked up again per call).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Literal

from pydantic import Field

from crib_common.models.netd import PortMapping
from crib_common.state import Record, StateStore

__all__ = ["AttachmentRecord", "AttachmentStore", "KIND"]

KIND = "attachment"
State = Literal["creating", "ready", "deleting"]


class AttachmentRecord(Record):
    """One pod's namespace and CNI attachment."""

    SCHEMA_VERSION: ClassVar[int] = 1

    pod_id: str
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""
    state: State = "creating"
    netns_path: str
    ifname: str = "eth0"
    # The configuration list the ADD ran (as read from config_source) and the version.
    config: dict[str, Any]
    config_source: str = ""
    cni_version: str = ""
    cni_args: list[tuple[str, str]] = Field(default_factory=list)
    capabilities: dict[str, Any] = Field(default_factory=dict)
    port_mappings: list[PortMapping] = Field(default_factory=list)
    # The final ADD result; None until ADD finished.
    result: dict[str, Any] | None = None
    created_at: int = 0


class AttachmentStore:
    """Attachment records; writes go to a thread so an fsync never stalls the loop."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def get(self, pod_id: str) -> AttachmentRecord | None:
        return self._store.get(KIND, pod_id, AttachmentRecord)

    def list(self) -> list[AttachmentRecord]:
        return self._store.list(KIND, AttachmentRecord)

    async def put(self, record: AttachmentRecord) -> None:
        await asyncio.to_thread(self._store.put, KIND, record.pod_id, record)

    async def delete(self, pod_id: str) -> None:
        await asyncio.to_thread(self._store.delete, KIND, pod_id)

    def close(self) -> None:
        self._store.close()
