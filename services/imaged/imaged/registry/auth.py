"""Registry credentials and the WWW-Authenticate challenge (RFC 7235, distribution token
spec `docs/spec/auth/token.md` and `oauth.md`)."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from crib_common.errors import InvalidArgument

__all__ = ["Challenge", "Credentials", "parse_challenges"]

_PARAM = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class Credentials:
    """What CRI's AuthConfig carries (api.proto `AuthConfig`)."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""

    @classmethod
    def from_auth_config(cls, username: str = "", password: str = "", auth: str = "",
                         identity_token: str = "", registry_token: str = "") -> Credentials:
        if auth and not username:
            # `auth` is base64("user:password"), as in Docker's config.json.
            try:
                decoded = base64.b64decode(auth, validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise InvalidArgument("AuthConfig.auth is not base64 of user:password") from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise InvalidArgument("AuthConfig.auth is not base64 of user:password")
        return cls(username, password, identity_token, registry_token)

    @property
    def anonymous(self) -> bool:
        return not (self.username or self.identity_token or self.registry_token)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic" or "bearer"
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """Split a WWW-Authenticate value into challenges (scheme plus auth-params)."""
    out: list[Challenge] = []
    pos = 0
    text = header.strip()
    scheme_re = re.compile(r"\s*([A-Za-z][\w-]*)\s*")
    while pos < len(text):
        m = scheme_re.match(text, pos)
        if not m:
            break
        scheme = m.group(1).lower()
        pos = m.end()
        params: dict[str, str] = {}
        while pos < len(text):
            pm = _PARAM.match(text, pos)
            if not pm:
                break
            value = pm.group(2) if pm.group(2) is not None else pm.group(3)
            params[pm.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = pm.end()
            while pos < len(text) and text[pos] in ", ":
                pos += 1
        out.append(Challenge(scheme, params))
        if not params:
            while pos < len(text) and text[pos] in ", ":
                pos += 1
    return out
