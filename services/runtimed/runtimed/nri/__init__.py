"""NRI (containerd/nri): node resource plugins on runtimed's lifecycle.

    mux.py        frames of the multiplexed plugin socket
    ttrpc.py      ttrpc messages, client and server on a multiplexed connection
    plugin.py     one plugin: registration, its Plugin client and our Runtime service
    registry.py   socket, pre-registered plugins, handshake, synchronisation
    adaptation.py `Nri`: every lifecycle event to the plugins, in index order
    cdi.py        CDI devices plugins inject, resolved from the CDI spec files
    adjust.py     adjustments and updates merged with owners, laid on the OCI config
    convert.py    records and OCI config as NRI messages, NRI resources as OCI

Why inside runtimed rather than a daemon of its own: every event sits inside a
runtimed transition (a create's undo, the record's "creating" state, an exit), and
adjustments change the config.json runtimed writes; a separate daemon would put a
socket hop and a second copy of the pod and container state in each of them.
"""

from .adaptation import Nri

__all__ = ["Nri"]
