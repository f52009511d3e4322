"""API keys for ``causalclip serve``, importable without the ``serve`` extra (the command line checks them before
it loads a model).

A server that listens beyond loopback answers anyone who can reach its port, so it needs a key there: from
``--api-key-file`` or the ``CAUSALCLIP_API_KEY`` environment variable, or an explicit ``--no-auth`` (e.g. behind a
proxy that authenticates). Clients send ``Authorization: Bearer <key>``; the comparison is constant-time.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["API_KEY_ENV", "MIN_KEY_LENGTH", "AuthConfigError", "is_loopback", "key_matches", "resolve_api_key"]

API_KEY_ENV = "CAUSALCLIP_API_KEY"
MIN_KEY_LENGTH = 16  # a guessable key is no key: secrets.token_urlsafe(32) gives 43 characters
_HOW_TO_MAKE = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))' > KEYFILE"


class AuthConfigError(ValueError):
    """The key options do not fit together or the key is unusable; the message says what to do."""


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: 127.0.0.0/8, ::1 and the name ``localhost``. Any other
    name counts as reachable from elsewhere (it may resolve to a public address)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_key(key: str, where: str) -> str:
    if len(key) < MIN_KEY_LENGTH:
        raise AuthConfigError(
            f"{where}: the API key has {len(key)} characters, at least {MIN_KEY_LENGTH} are needed; {_HOW_TO_MAKE}"
        )
    if any(c.isspace() for c in key) or not key.isprintable() or not key.isascii():
        raise AuthConfigError(
            f"{where}: the API key must be printable ASCII without spaces (it travels in an HTTP header)"
        )
    return key


def resolve_api_key(
    *, host: str, key_file: str | os.PathLike[str] | None, no_auth: bool, environ: Mapping[str, str] | None = None
) -> str | None:
    """The key the server must require, or None for no authentication.

    A key comes from ``key_file`` (its content, surrounding whitespace stripped) or from ``$CAUSALCLIP_API_KEY``;
    giving both is an error, as is giving one together with ``no_auth``. Without a key a server may only listen on
    loopback, unless ``no_auth`` says that is intended.
    """
    environ = os.environ if environ is None else environ
    from_env = environ.get(API_KEY_ENV) or None
    if key_file is not None and from_env is not None:
        raise AuthConfigError(f"an API key was given twice (--api-key-file and ${API_KEY_ENV}); give one")
    if no_auth and (key_file is not None or from_env is not None):
        source = "--api-key-file" if key_file is not None else f"${API_KEY_ENV}"
        raise AuthConfigError(f"--no-auth and an API key ({source}) contradict each other; drop one")
    if key_file is not None:
        path = Path(key_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthConfigError(f"{path}: cannot read the API key file: {exc}") from exc
        return _check_key(text.strip(), str(path))
    if from_env is not None:
        return _check_key(from_env.strip(), f"${API_KEY_ENV}")
    if not no_auth and not is_loopback(host):
        raise AuthConfigError(
            f"listening on {host!r} reaches beyond this machine, so the API needs a key: --api-key-file KEYFILE or "
            f"${API_KEY_ENV} ({_HOW_TO_MAKE}); or --no-auth if something in front of the server authenticates"
        )
    return None


def key_matches(expected: bytes, supplied: bytes) -> bool:
    """Constant-time comparison (hmac.compare_digest): how long it takes tells nothing about how much matched."""
    return hmac.compare_digest(expected, supplied)
