"""One way to turn TOML into typed, validated options: the training recipes and the change thresholds.

Both used to have their own loader; now a typo in any config file gets the same message (the
unknown key, and the keys that exist) and lists become tuples the same way (frozen dataclasses).
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class TomlConfigError(ValueError):
    """A config file or section that cannot be used; the message names the file or ``[section]``."""


def read_toml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The parsed TOML file; a missing file or a syntax error is a one-line TomlConfigError naming it."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise TomlConfigError(f"{path}: {what} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise TomlConfigError(f"{path}: invalid TOML ({e})") from None


def dataclass_from(cls: type[T], data: dict[str, Any], where: str) -> T:
    """``cls(**data)`` with unknown keys refused (a typo must not fall back to a default silently),
    TOML arrays as tuples, and the dataclass's own validation errors prefixed with ``where``."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - known
    if unknown:
        raise TomlConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    except (TypeError, ValueError) as e:
        raise TomlConfigError(f"{where}: {e}") from None
