"""The CRI ImageService, one module per RPC; `register_all` puts them on a CriTable."""

from __future__ import annotations

from crib_common.server import CriTable

from ..service import ImageService
from . import image_fs_info, image_list, image_pull, image_remove, image_status, image_stream


def register_all(table: CriTable, svc: ImageService) -> None:
    for module in (image_list, image_stream, image_status, image_pull, image_remove,
                   image_fs_info):
        module.register(table, svc)
