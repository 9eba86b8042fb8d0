"""crib-imaged: settings, then logging, then create_app, then serve on the UNIX socket."""

from __future__ import annotations

from crib_common.server import run_daemon

from .app import create_app


def main() -> None:
    run_daemon("imaged", create_app, lambda s: s.imaged.socket)


if __name__ == "__main__":
    main()
