"""crib: the operator CLI for a crib node."""

from __future__ import annotations

import argparse
import asyncio
import sys

from crib_common.errors import CribError
from crib_common.settings import SettingsError, load_settings

from . import commands


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="crib", description="Operate a crib node.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in commands.load():
        module.register(sub)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"crib: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        code = asyncio.run(args.func(args, settings))
    except CribError as exc:
        print(f"crib: {exc.kind}: {exc.message}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)


if __name__ == "__main__":
    main()
