"""crib-runtimed: settings, then logging, then create_app, then serve on the UNIX socket."""

from __future__ import annotations

import sys

# structlog imports rich, when it is installed (the CLI draws with it), for console
# tracebacks; a daemon logs JSON lines and would carry ~3 MiB of it (issue 14). This runs
# before anything imports structlog.
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

from aiohttp import web

from crib_common.errors import FailedPrecondition
from crib_common.server import run_daemon
from crib_common.settings import CribSettings

from .app import create_app
from .propagation import check_propagation, state_directories


def _build(settings: CribSettings) -> web.Application:
    try:
        # Before anything is mounted: directories that do not propagate mounts to the
        # host would hide the pods' namespace pins from the next runtimed (issue 17).
        check_propagation(state_directories(settings.runtimed))
        return create_app(settings)
    except FailedPrecondition as exc:
        # A setting this host cannot honour (cgroup_driver = "systemd" without systemd,
        # directories on private mounts): one clear line and exit 2, not a traceback.
        print(f"crib-runtimed: cannot start: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    run_daemon("runtimed", _build, lambda s: s.runtimed.socket)


if __name__ == "__main__":
    main()
