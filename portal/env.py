"""Reading configuration from the environment.

Every setting may be given as `NAME=value` or, for Docker secrets, as `NAME_FILE=/path` whose
contents are the value. A malformed value stops start-up with an error that names the variable.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def get(name: str, default: str | None = None) -> str | None:
    """The value of `name`, read from `name` or from the file named by `name_FILE`."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(
                f"{name}_FILE points at {path!r}, which cannot be read: {exc.strerror}"
            ) from None
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def get_bool(name: str, default: bool) -> bool:
    value = get(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name} must be a boolean (true/false, 1/0, yes/no, on/off), not {value!r}"
    )


def get_int(name: str, default: int, minimum: int = 0) -> int:
    value = get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}")
    return number


def get_list(name: str, default: str = "") -> list[str]:
    value = get(name, default) or ""
    return [item.strip() for item in value.split(",") if item.strip()]


def get_addresses(name: str, default: str) -> list[str]:
    """Comma-separated IP addresses (not networks: gunicorn 23 compares exactly), or `*`."""
    addresses = get_list(name, default)
    for address in addresses:
        if address == "*":
            continue
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ImproperlyConfigured(
                f"{name} must list IP addresses (or *), comma-separated, not {address!r}"
            ) from None
    return addresses


def get_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (get(name) or default).lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def dev_secret(var_dir: Path, filename: str, generate: Callable[[], str]) -> str:
    """A development-only secret kept in `var/`, generated on first use."""
    path = var_dir / filename
    if not path.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(generate())
        path.chmod(0o600)
    return path.read_text().strip()
