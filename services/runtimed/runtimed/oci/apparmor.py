"""AppArmor: which profile a container runs under, and crib's default profile.

On a host where AppArmor is enabled (securityfs has `apparmor/`), RuntimeDefault, and a
container that names no profile, run under crib's default profile, rendered from
`runtimed/data/apparmor-default.profile` and loaded with `apparmor_parser` when the
kernel does not hold it yet (as containerd and CRI-O load their own). A Localhost
profile must already be loaded (the kernel lists it in `apparmor/profiles`); crib never
loads an operator's profile. Unconfined and privileged containers run without one.
Where AppArmor is disabled nothing is applied, and a Localhost profile is refused: it
cannot be honoured.

The OCI runtime applies the profile (`process.apparmorProfile`) at the container's exec.
"""

from __future__ import annotations

import os
import string
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import structlog

from crib_common.errors import FailedPrecondition, InvalidArgument

__all__ = [
    "SECURITYFS",
    "TEMPLATE",
    "AppArmor",
    "AppArmorStatus",
    "ParserError",
    "render_default_profile",
]

log = structlog.get_logger("runtimed.apparmor")

SECURITYFS = Path("/sys/kernel/security/apparmor")
TEMPLATE = "apparmor-default.profile"  # in runtimed/data
APPARMOR_PARSER = "/sbin/apparmor_parser"
# Compiling the profile takes well under a second; a parser stuck this long is broken.
PARSER_TIMEOUT = 30.0


class ParserError(Exception):
    """apparmor_parser refused a profile or could not be run."""


def render_default_profile(name: str) -> str:
    """crib's default profile under `name`, as apparmor.d(5) text."""
    text = resources.files("runtimed").joinpath("data", TEMPLATE).read_text()
    return string.Template(text).substitute(name=name)


def run_parser(text: str, *args: str, parser: str = APPARMOR_PARSER,
               timeout: float = PARSER_TIMEOUT) -> bytes:
    """Feed a profile to apparmor_parser with `args` (e.g. `--replace`, or
    `--skip-kernel-load` to only compile it); its output, or ParserError."""
    with tempfile.NamedTemporaryFile("w", prefix="crib-apparmor-", suffix=".profile") as f:
        f.write(text)
        f.flush()
        argv = [parser, "--skip-cache", *args, f.name]
        log.debug("running apparmor_parser", argv=argv)
        try:
            done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ParserError(f"{parser}: {exc}") from None
    if done.returncode != 0:
        raise ParserError(f"{parser} exited {done.returncode}: "
                          f"{done.stderr.decode(errors='replace').strip()}")
    return done.stdout


@dataclass(frozen=True)
class AppArmorStatus:
    """What Status/health can say about AppArmor on this node."""

    enabled: bool
    default_profile: str
    default_loaded: bool

    @property
    def message(self) -> str:
        if not self.enabled:
            return "AppArmor is not enabled on this host: containers run without a profile"
        if self.default_loaded:
            return f"AppArmor in force: RuntimeDefault is profile {self.default_profile}"
        return f"AppArmor enabled but profile {self.default_profile} is not loaded"


class AppArmor:
    """The host's AppArmor, read from securityfs (a fake directory laid out as the
    kernel's in tests: `profiles` holds one `name (mode)` line per loaded profile)."""

    def __init__(self, default_profile: str = "crib-default",
                 securityfs: Path = SECURITYFS, parser: str = APPARMOR_PARSER) -> None:
        self.default_profile = default_profile
        self.securityfs = securityfs
        self.parser = parser

    def enabled(self) -> bool:
        return self.securityfs.is_dir()

    def loaded(self, name: str) -> bool:
        """Whether the kernel holds a profile called `name`."""
        try:
            lines = (self.securityfs / "profiles").read_text().splitlines()
        except OSError:
            return False
        # "name (enforce)"; a name may itself hold spaces, the mode is the last word.
        return any(line.rsplit(" (", 1)[0] == name for line in lines)

    def ensure_default_loaded(self) -> bool:
        """Load crib's default profile if AppArmor is on and the kernel lacks it. True
        when it is loaded now; ParserError when loading failed."""
        if not self.enabled():
            return False
        if self.loaded(self.default_profile):
            return True
        run_parser(render_default_profile(self.default_profile), "--replace",
                   parser=self.parser)
        log.info("apparmor profile loaded", profile=self.default_profile)
        return True

    def status(self) -> AppArmorStatus:
        on = self.enabled()
        return AppArmorStatus(enabled=on, default_profile=self.default_profile,
                              default_loaded=on and self.loaded(self.default_profile))

    def profile_for(self, kind: str, localhost_ref: str, privileged: bool) -> str | None:
        """`process.apparmorProfile` for a container, or None for none. `kind` is
        "runtime/default", "unconfined", "localhost" or "" (nothing said: as
        RuntimeDefault, which is what containerd applies too)."""
        if kind == "localhost":
            name = localhost_ref.removeprefix("localhost/")
            if not name:
                raise InvalidArgument("AppArmor Localhost profile without a name")
            if not self.enabled():
                raise InvalidArgument(f"AppArmor profile {name!r}: AppArmor is not enabled "
                                      "on this host")
            if not self.loaded(name):
                raise InvalidArgument(f"AppArmor profile {name!r} is not loaded (load it "
                                      "with apparmor_parser first)")
            return name
        if kind == "unconfined" or privileged or not self.enabled():
            return None
        if kind not in ("", "runtime/default"):
            raise InvalidArgument(f"unknown AppArmor profile {kind!r}")
        if not self.loaded(self.default_profile):
            # Unloaded behind our back (apparmor.service reload): load it again rather
            # than run the container unconfined.
            try:
                self.ensure_default_loaded()
            except ParserError as exc:
                raise FailedPrecondition(f"AppArmor profile {self.default_profile} cannot "
                                         f"be loaded: {exc}") from None
        return self.default_profile


def check_parser_available(parser: str = APPARMOR_PARSER) -> bool:
    """Whether apparmor_parser can be run (Debian's `apparmor` package)."""
    return os.access(parser, os.X_OK)
