"""crib-netd: settings, then logging, then create_app, then serve on the UNIX socket."""

from __future__ import annotations

from crib_common.server import run_daemon

from .app import create_app


def main() -> None:
    run_daemon("netd", create_app, lambda s: s.netd.socket)


if __name__ == "__main__":
    main()
