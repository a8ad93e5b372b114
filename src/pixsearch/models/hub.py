"""Finding model checkpoints on this machine: local folders and the local Hugging Face cache, strictly offline.

pixsearch never downloads weights behind the user's back. A checkpoint is a local folder, or a repo id looked up in
the Hugging Face hub cache (huggingface_hub's layout: <cache>/models--org--name/snapshots/<revision>/, with
refs/<branch> naming the revision) with `local_files_only=True`. Only when the environment explicitly says
HF_HUB_OFFLINE=0 may a missing repo be fetched. Whatever is missing is reported with ModelNotAvailableError naming
the exact files, the folder looked in, and the one `hf download` command that fetches them on a connected machine.

Also here: content digests of weights files, so a model id names the weights themselves (not their path or mtime)
and an index built on one machine is queried with the same id on another. Importing this module imports neither
torch nor huggingface_hub.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .base import ModelNotAvailableError

# A Hugging Face repo id: "name" or "org/name", optionally "@revision" (branch, tag or commit).
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.\-]*/)?[A-Za-z0-9][\w.\-]*(?:@[\w.\-/]+)?$")
# LFS blobs in the HF cache are named by the sha256 of their content (small git files by a git sha1 instead).
_LFS_BLOB_NAME = re.compile(r"^[0-9a-f]{64}$")
# Files at least this big get their digest cached (by path, size, mtime) instead of being re-read on every load.
_CACHE_DIGEST_ABOVE = 1 << 20
_digest_lock = threading.Lock()


@dataclass(frozen=True)
class Need:
    """One required file, satisfied by the first of `alternatives` present (e.g. model.safetensors or a .bin)."""

    what: str  # human description: "weights", "tokenizer"
    alternatives: tuple[str, ...]


@dataclass(frozen=True)
class Located:
    """A checkpoint folder on disk and how it was named: repo_id is None for a plain local folder."""

    folder: Path
    repo_id: str | None = None
    revision: str | None = None

    @property
    def display(self) -> str:
        """Short human name for model ids and messages: the repo id, or the folder's name."""
        return self.repo_id or self.folder.name


def downloads_allowed() -> bool:
    """True only when the environment explicitly opts in with HF_HUB_OFFLINE=0 (or false/no/off)."""
    value = os.environ.get("HF_HUB_OFFLINE")
    return value is not None and value.strip().lower() in ("0", "false", "no", "off")


def force_offline_env() -> None:
    """Make transformers/huggingface_hub/open_clip refuse network access unless the user opted in."""
    if not downloads_allowed():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment *now* (huggingface_hub reads it once at import):
    HF_HUB_CACHE > HUGGINGFACE_HUB_CACHE > HF_HOME/hub > XDG_CACHE_HOME/huggingface/hub > ~/.cache/huggingface/hub."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.path.expanduser(os.environ[var])))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def looks_like_repo_id(argument: str) -> bool:
    """"org/name" (no leading '/', '.', '~') and not an existing path."""
    if not argument or argument.startswith(("/", ".", "~")) or Path(argument).exists():
        return False
    return bool(_REPO_ID.match(argument))


def download_command(repo_id: str | None, files: Iterable[str], *, revision: str | None = None,
                     local_dir: Path | None = None) -> str:
    """The `hf download` command (huggingface_hub's CLI) that fetches `files` on a connected machine."""
    parts = ["hf", "download", repo_id or "ORG/NAME", *dict.fromkeys(files)]
    if revision:
        parts += ["--revision", revision]
    if local_dir is not None:
        parts += ["--local-dir", str(local_dir)]
    return " ".join(shlex.quote(p) for p in parts)


def missing_files(folder: Path, needs: Sequence[Need]) -> list[Need]:
    return [need for need in needs if not any((folder / name).is_file() for name in need.alternatives)]


def first_present(folder: Path, names: Iterable[str]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _describe_missing(missing: Sequence[Need]) -> str:
    return "; ".join(f"{need.what}: {' or '.join(need.alternatives)}" for need in missing)


def locate(argument: str, needs: Sequence[Need], *, optional: Sequence[str] = (), kind: str = "checkpoint"
           ) -> Located:
    """Resolve a local folder or a repo id in the local HF cache to a folder holding every file in `needs`.

    Raises ModelNotAvailableError naming the missing files, the folder looked in and the download command (which
    also fetches the `optional` files that are absent, e.g. tokenizer_config.json). With HF_HUB_OFFLINE=0 in the
    environment, a repo id whose files are missing is downloaded: those files only.
    """
    path = Path(os.path.expanduser(argument))
    if path.is_dir() or not looks_like_repo_id(argument):
        folder = path.resolve()
        if not folder.is_dir():
            raise ModelNotAvailableError(f"{kind} folder {folder} does not exist")
        missing = missing_files(folder, needs)
        if missing:
            repo = _repo_hint(folder)
            files = _fetch_list(folder, missing, optional)
            raise ModelNotAvailableError(
                f"{kind} folder {folder} lacks {_describe_missing(missing)}. On a connected machine: "
                f"{download_command(repo, files, local_dir=folder)}"
                + ("" if repo else " (ORG/NAME: the model's repo id)")
            )
        return Located(folder)

    repo_id, _, revision = argument.partition("@")
    revision = revision or None
    cache = hub_cache_dir()
    folder = _cached_snapshot(repo_id, revision, cache)
    looked_in = folder or cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / (revision or "<main>")
    missing = missing_files(folder, needs) if folder else list(needs)
    if missing and downloads_allowed():
        folder = _download(repo_id, revision, cache, needs, optional)
        missing = missing_files(folder, needs)
    if missing:
        files = _fetch_list(folder, missing, optional)
        raise ModelNotAvailableError(
            f"{kind} {repo_id} is not in the local Hugging Face cache: missing {_describe_missing(missing)} in "
            f"{looked_in} (HF_HUB_CACHE/HF_HOME pick the cache; downloads are off unless HF_HUB_OFFLINE=0). "
            f"On a connected machine: {download_command(repo_id, files, revision=revision)} "
            f"(then copy {cache} here, or pass the downloaded folder)"
        )
    return Located(folder, repo_id, revision)


def _fetch_list(folder: Path | None, missing: Sequence[Need], optional: Sequence[str]) -> list[str]:
    """The files to fetch: the usual name of each missing need, then the absent optional files."""
    files = [need.alternatives[0] for need in missing]
    files += [name for name in optional if folder is None or not (folder / name).is_file()]
    return list(dict.fromkeys(files))


def _repo_hint(folder: Path) -> str | None:
    """The repo id a local folder came from, when its config.json remembers it (transformers' _name_or_path)."""
    try:
        name = json.loads((folder / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and looks_like_repo_id(name) else None


def _cached_snapshot(repo_id: str, revision: str | None, cache: Path) -> Path | None:
    """The snapshot folder of repo_id@revision (default: refs/main) in the hub cache, without any network access."""
    try:
        from huggingface_hub import snapshot_download  # noqa: PLC0415
        from huggingface_hub.errors import LocalEntryNotFoundError  # noqa: PLC0415
    except ImportError:  # the cache layout is simple enough to read by hand
        return _snapshot_by_hand(repo_id, revision, cache)
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None


def _snapshot_by_hand(repo_id: str, revision: str | None, cache: Path) -> Path | None:
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    rev = revision or "main"
    ref = repo / "refs" / rev
    commit = ref.read_text().strip() if ref.is_file() else rev
    folder = repo / "snapshots" / commit
    return folder if folder.is_dir() else None


def _download(repo_id: str, revision: str | None, cache: Path, needs: Sequence[Need], optional: Sequence[str]
              ) -> Path:
    """Fetch the usual file of each need plus the optional ones, then other alternatives of still-missing needs
    (so a repo with both .safetensors and .bin weights costs one download); only with HF_HUB_OFFLINE=0."""
    from huggingface_hub import snapshot_download  # noqa: PLC0415

    def fetch(patterns: list[str]) -> Path:
        try:
            return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, allow_patterns=patterns))
        except Exception as exc:  # noqa: BLE001 - report as "not available", with the cause
            raise ModelNotAvailableError(f"downloading {repo_id} failed: {type(exc).__name__}: {exc}") from exc

    folder = fetch([need.alternatives[0] for need in needs] + list(optional))
    rest = missing_files(folder, needs)
    if rest:
        folder = fetch([name for need in rest for name in need.alternatives[1:]])
    return folder


# -- digests ---------------------------------------------------------------------------------------------------------


def file_digest(path: Path, cache_dir: Path | None = None) -> str:
    """sha256 of a file's content (hex), so equal files get equal ids wherever they live. Big files in the HF cache
    are symlinks to LFS blobs named by exactly that sha256, which is used as is; other big files are hashed once
    and the result cached in cache_dir by (path, size, mtime)."""
    target = Path(path).resolve()
    st = target.stat()
    if st.st_size < _CACHE_DIGEST_ABOVE or cache_dir is None:
        return _sha256(target)
    if target.parent.name == "blobs" and _LFS_BLOB_NAME.match(target.name):
        return target.name
    key = f"{target}|{st.st_size}|{st.st_mtime_ns}"
    store = Path(cache_dir) / "digests.json"
    with _digest_lock:
        known = _read_json(store)
        if key in known:
            return known[key]
        digest = _sha256(target)
        known = {k: v for k, v in _read_json(store).items() if not k.startswith(f"{target}|")}
        known[key] = digest
        write_text_atomically(store, json.dumps(known, sort_keys=True))
    return digest


def digest_of(parts: Iterable[object]) -> str:
    """Short stable hash of JSON-able parts (for model ids and cache keys)."""
    return hashlib.sha256(json.dumps(list(parts), sort_keys=True, default=str).encode()).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def write_text_atomically(path: Path, text: str) -> None:
    """Write via a temp file + os.replace, so concurrent readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
