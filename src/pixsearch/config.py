"""One Settings object. Precedence: keyword arguments > environment (PIXSEARCH_*) > config file > defaults."""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import platformdirs

DEFAULT_INDEX = "photos"


def default_home() -> Path:
    return Path(platformdirs.user_data_dir("pixsearch", appauthor=False))


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str | None = None
    index: str = DEFAULT_INDEX
    model: str = "offline"
    batch_size: int = 16
    decode_workers: int = 2

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def config_file(self) -> Path:
        return self.home / "config.toml"

    @classmethod
    def load(cls, **overrides: Any) -> "Settings":
        """Build settings from defaults, then the config file, then PIXSEARCH_* variables, then `overrides`.

        Overrides whose value is None are ignored, so CLI options that were not given fall through.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        home = Path(given.get("home") or os.environ.get("PIXSEARCH_HOME") or default_home()).expanduser()
        values: dict[str, Any] = {}
        config_file = home / "config.toml"
        if config_file.is_file():
            with config_file.open("rb") as fh:
                values.update(_known(tomllib.load(fh), source=str(config_file)))
        for f in fields(cls):
            env = os.environ.get(f"PIXSEARCH_{f.name.upper()}")
            if env not in (None, "") and f.name != "home":
                values[f.name] = env
        values.update(given)
        values["home"] = home
        return replace(cls(home=home), **_coerce(values))


def _known(raw: dict[str, Any], source: str) -> dict[str, Any]:
    names = {f.name for f in fields(Settings)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return raw


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for name in ("batch_size", "decode_workers"):
        if name in out:
            try:
                out[name] = int(out[name])
            except (TypeError, ValueError):
                raise ValueError(f"setting {name} must be an integer, got {out[name]!r}") from None
            if out[name] < 1:
                raise ValueError(f"setting {name} must be at least 1, got {out[name]}")
    return out
