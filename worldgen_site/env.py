"""Typed readers for settings that come from the environment.

Every reader raises ``SettingsError`` with one line that names the variable,
so a bad deployment fails at start-up instead of at the first request.
"""

import base64
import binascii
import os
import re
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured


class SettingsError(ImproperlyConfigured):
    """A missing or malformed environment variable."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(name: str, default: str | None = None) -> str:
    value = _raw(name)
    if value is None:
        if default is None:
            raise SettingsError(f"{name} is required but not set")
        return default
    return value


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise SettingsError(f"{name} must be true or false, got {value!r}")


def env_int(name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {value!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        upper = "" if maximum is None else f" and at most {maximum}"
        raise SettingsError(f"{name} must be at least {minimum}{upper}, got {number}")
    return number


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {value!r}") from None
    if number < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {number}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_url(name: str, default: str, *, schemes: tuple[str, ...]) -> str:
    value = env_str(name, default)
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise SettingsError(f"{name} must be a {' or '.join(s + '://' for s in schemes)} URL, got {value!r}")
    return value


def env_host_port(name: str, default: str) -> str:
    """A ``host:port`` address, as Temporal and gRPC targets are written."""
    value = env_str(name, default)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{name} must be host:port, got {value!r}")
    return value


def env_database(name: str, default: str) -> dict:
    import dj_database_url

    value = env_str(name, default)
    if urlsplit(value).scheme not in ("sqlite", "postgres", "postgresql", "pgsql"):
        raise SettingsError(f"{name} must be a sqlite:// or postgres:// URL, got {value!r}")
    try:
        return dj_database_url.parse(value, conn_max_age=0)
    except Exception as exc:  # the library raises several types for a bad URL
        raise SettingsError(f"{name} is not a valid database URL: {exc}") from None


def env_key_ring(name: str) -> dict[str, bytes]:
    """``keyid:base64key[,keyid2:base64key2]``: AES-256 keys by ID, the first one first. Empty if unset.
    Errors name the entry and its key ID, never the key."""
    value = _raw(name)
    if value is None:
        return {}
    keys: dict[str, bytes] = {}
    form = f"{name} must be keyid:base64key[,keyid:base64key...] with 32-byte (AES-256) keys"
    for position, entry in enumerate(value.split(","), start=1):
        key_id, sep, encoded = entry.strip().partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", key_id):
            raise SettingsError(f"{form}; entry {position} has no key ID of letters, digits, '.', '_' or '-'")
        if key_id in keys:
            raise SettingsError(f"{form}; key ID {key_id!r} appears twice")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except binascii.Error:
            raise SettingsError(f"{form}; the key of {key_id!r} is not valid base64") from None
        if len(key) != 32:
            raise SettingsError(f"{form}; the key of {key_id!r} is {len(key)} bytes")
        keys[key_id] = key
    return keys
