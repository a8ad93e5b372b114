"""One Settings object. Precedence: keyword arguments > environment (PIXSEARCH_*) > config file > defaults."""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import platformdirs

from pixsearch.limits import (
    DEFAULT_API_STATEMENT_TIMEOUT_S,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_POOL_SIZE,
    DEFAULT_THUMBNAIL_CACHE_BYTES,
)

DEFAULT_INDEX = "photos"
# Where local models run (pixsearch.models.device): the GPU when it works, else the CPU; the CPU; a GPU or an error.
DEVICES = ("auto", "cpu", "cuda")
# Who reads the photos of a Ray run (ingest/distributed.py): each node what it can, this process the rest; every node
# all of it, or an error; this process all of it. Those read here travel to the nodes through Ray's object store.
RAY_READS = ("auto", "workers", "driver")


def default_home() -> Path:
    return Path(platformdirs.user_data_dir("pixsearch", appauthor=False))



def available_cores() -> int:
    """Cores this process may run on (cgroup/affinity aware, unlike os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)

@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str | None = None
    index: str = DEFAULT_INDEX
    model: str = "offline"
    batch_size: int = 16
    device: str = "auto"  # where local models run: auto | cpu | cuda (models/device.py); per process, not per index
    decode_workers: int = 2
    max_file_mb: float = DEFAULT_MAX_FILE_BYTES / 1e6  # files larger than this are not read (per-file failure)
    max_image_megapixels: float = DEFAULT_MAX_IMAGE_PIXELS / 1e6  # checked from the header before decoding
    api_statement_timeout: float = DEFAULT_API_STATEMENT_TIMEOUT_S  # seconds per SQL statement of an API request
    thumbnail_cache_mb: float = DEFAULT_THUMBNAIL_CACHE_BYTES / 1e6
    pool_size: int = DEFAULT_POOL_SIZE  # database connections per process (the REST API's concurrency in SQL)
    distribute: bool = False  # on a Citus coordinator, new indexes are distributed across the workers
    shards: int = 0  # shards per distributed index (0: Citus' citus.shard_count, 32 by default)
    backup_every: str = ""  # `pixsearch serve` writes a backup this often ("24h", "30m"; empty: never)
    backup_keep: int = 7  # scheduled backups kept (the oldest are removed)
    backup_dir: str = ""  # where scheduled backups go (empty: PIXSEARCH_HOME/backups)
    # Hosted models (models/hosted.py). Keys: here or in AZURE_AI_VISION_KEY / OPENAI_API_KEY; never stored in an
    # index, never shown (repr=False keeps them out of any printed Settings).
    azure_vision_key: str | None = field(default=None, repr=False)
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str | None = None  # else OPENAI_BASE_URL, else https://api.openai.com/v1
    hosted_requests_per_minute: float | None = None  # a rate limit of ours (e.g. 20 on Azure's free tier)
    hosted_concurrency: int = 4  # requests in flight at once, per model
    hosted_timeout: float = 60.0  # seconds per request before it is retried
    # What a captioner (`pixsearch index --captioner openai:MODEL`) is asked; empty: models/captioner.py's
    # DEFAULT_PROMPT. An index given --caption-prompt keeps its own. Another prompt is another caption (bought again).
    caption_prompt: str = ""
    # Object store sources (az://, s3://): downloads in flight at once, and how often `index --watch` lists them.
    download_concurrency: int = 16
    watch_interval: float = 60.0
    # `pixsearch index --ray`: the image stage runs on this Ray cluster (host:port of its head, or "auto" for
    # RAY_ADDRESS); empty or "local": here. An index's own setting ray_address comes first.
    ray_address: str = ""
    # Who reads the photos on the cluster: auto, workers or driver (RAY_READS; README "Scaling the embedding").
    ray_reads: str = "auto"
    # Give a hosted model or captioner that can fetch photos itself (Azure AI Vision, OpenAI's chat) a short-lived
    # read-only URL of each object-store photo (a SAS, a presigned GET) instead of its bytes. Off by default: the
    # service must be able to reach the store, and the URL is a credential for that one photo for an hour.
    send_photo_urls: bool = False

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1e6)

    @property
    def max_image_pixels(self) -> int:
        return int(self.max_image_megapixels * 1e6)

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


_INTEGERS = ("batch_size", "decode_workers", "pool_size", "backup_keep", "hosted_concurrency", "download_concurrency")
_BOOLEANS = ("distribute", "send_photo_urls")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
_POSITIVE_NUMBERS = ("max_file_mb", "max_image_megapixels", "api_statement_timeout", "thumbnail_cache_mb",
                     "hosted_requests_per_minute", "hosted_timeout", "watch_interval")


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for name, choices in (("device", DEVICES), ("ray_reads", RAY_READS)):
        if name in out:
            choice = str(out[name]).strip().lower()
            if choice not in choices:
                raise ValueError(f"setting {name} must be one of {', '.join(choices)}, got {out[name]!r}")
            out[name] = choice
    for name in _BOOLEANS:
        if name in out and not isinstance(out[name], bool):
            text = str(out[name]).strip().lower()
            if text not in _TRUE + _FALSE:
                raise ValueError(f"setting {name} must be true or false, got {out[name]!r}")
            out[name] = text in _TRUE
    if "shards" in out:
        try:
            out["shards"] = int(out["shards"])
        except (TypeError, ValueError):
            raise ValueError(f"setting shards must be an integer, got {out['shards']!r}") from None
        if out["shards"] < 0:
            raise ValueError("setting shards cannot be negative")
    for name in _INTEGERS + _POSITIVE_NUMBERS:
        if name not in out:
            continue
        kind = int if name in _INTEGERS else float
        try:
            out[name] = kind(out[name])
        except (TypeError, ValueError):
            what = "an integer" if kind is int else "a number"
            raise ValueError(f"setting {name} must be {what}, got {out[name]!r}") from None
        if kind is int and out[name] < 1:
            raise ValueError(f"setting {name} must be at least 1, got {out[name]}")
        if kind is float and not out[name] > 0:
            raise ValueError(f"setting {name} must be a positive number, got {out[name]}")
    return out
