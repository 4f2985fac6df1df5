"""Atomic file writes, stable hashing of settings, cache directory."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from reflowbench.errors import ConfigError


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Have ``write(tmp)`` fill a temporary file beside ``path``, then move it over ``path``, so readers see either
    the old or the whole new file; the file gets the permissions of a plain ``open(path, "w")`` (0666 less the
    umask), not mkstemp's private 0600, so a results folder shared by a team stays readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_write`), flushed to disk before the move."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, write)


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def stable_hash(payload: Any, length: int = 10) -> str:
    """Hex digest of the canonical JSON of ``payload`` (key order does not matter)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_listing(path: Path) -> List[Tuple[str, int, int]]:
    """The sorted (relative path, size in bytes, modification time in ns) of every file below ``path``: a folder's
    identity (hashing every byte of an ImageNet tree would take hours). A file edited in place, even to the same size,
    changes its modification time and so the listing."""
    path = Path(path)
    return sorted((str(p.relative_to(path)), st.st_size, st.st_mtime_ns) for p in path.rglob("*") if p.is_file() for st in [p.stat()])


def content_sha256(path: Path) -> str:
    """SHA-256 identity of a data source: the file's bytes (computed once per (path, size, modification time) and
    remembered in the user cache folder), or for a folder the hash of its :func:`tree_listing` (computed every time: a
    folder's own modification time does not change when a file in it is edited in place)."""
    path = Path(path).resolve()
    if path.is_dir():
        return "tree-" + stable_hash(tree_listing(path), 64)
    stat = path.stat()
    memo_key = stable_hash([str(path), stat.st_size, stat.st_mtime_ns, path.is_dir()], 32)
    memo = cache_dir() / "content-hashes" / memo_key
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    digest = file_sha256(path)
    atomic_write_text(memo, digest + "\n")
    return digest


def cache_dir() -> Path:
    """User cache folder: ``$REFLOWBENCH_CACHE``, else ``$XDG_CACHE_HOME/reflowbench``, else ``~/.cache/reflowbench``."""
    explicit = os.environ.get("REFLOWBENCH_CACHE")
    if explicit:
        root = Path(explicit)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "reflowbench"
    root.mkdir(parents=True, exist_ok=True)
    return root


class DuplicateKeyError(ValueError):
    """A JSON object names one key twice (``json`` would keep the last value without a word)."""


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    seen: Dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKeyError(f"key {key!r} appears twice in one object: keep one")
        seen[key] = value
    return seen


def loads_settings(text: str) -> Any:
    """``json.loads`` for files a person writes (settings, suites, grids): a key repeated in one object raises
    :class:`DuplicateKeyError` instead of keeping the last value."""
    return json.loads(text, object_pairs_hook=_no_duplicates)


def read_settings_file(path: Path, label: str) -> Any:
    """The settings in the JSON file a person wrote at ``path`` (see :func:`loads_settings`); a one-line ConfigError
    starting with ``label`` (e.g. ``--config FILE``) when it cannot be read or is not JSON. Its shape is the caller's to check."""
    try:
        return loads_settings(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read the file ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}" if isinstance(exc, DuplicateKeyError) else f"{label}: not valid JSON ({exc})") from None


def read_keyed_json(path: Path, key: str, list_field: str) -> Dict[str, Any]:
    """The JSON object in ``path`` when its ``key`` equals ``key`` and its ``list_field`` is a list (a resumable
    results file written under the same settings); ``{}`` for a missing, unreadable or foreign file."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and record.get("key") == key and isinstance(record.get(list_field), list) else {}
