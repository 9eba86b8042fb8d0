"""crib-netd: settings, then logging, then create_app, then serve on the UNIX socket."""

from __future__ import annotations

import sys

# structlog imports rich, when it is installed (the CLI draws with it), for console
# tracebacks; a daemon logs JSON lines and would carry ~3 MiB of it (issue 14). This runs
# before anything imports structlog.
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

from crib_common.server import run_daemon

from .app import create_app


def main() -> None:
    run_daemon("netd", create_app, lambda s: s.netd.socket)


if __name__ == "__main__":
    main()
