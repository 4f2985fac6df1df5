"""Claim files: several sweeps (processes, cluster jobs) share one ``--out`` without running a run twice.

Before a run starts, its worker creates ``runs/<run file>.claim`` atomically and whole (its host, pid
and start time written to a temporary file first, then hard-linked into place, which fails when the
claim exists: another worker never sees a half-written claim), and keeps the claim's modification time fresh from a
background thread. Another worker skips a run with a live claim. A claim is stale, and is taken
over, when its process is gone (same host: the pid no longer runs) or its heartbeat stopped
(another host: not refreshed for ``STALE_AFTER_S``). The claim is removed when the run ends,
finished or failed.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

from reflowbench.utils.io import current_umask

HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0


def claim_path(run_file: Path) -> Path:
    return run_file.with_name(run_file.name + ".claim")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def age_of(path: Path, now: Optional[float] = None) -> float:
    """Seconds since ``path`` was last modified (0 when it is gone)."""
    try:
        return (now or time.time()) - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def claim_is_stale(path: Path, now: Optional[float] = None) -> bool:
    """True when the claim at ``path`` belongs to a dead process or stopped beating; False if it is live or gone."""
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return age_of(path, now) > HEARTBEAT_S  # unreadable (not written by this version): stale once nothing touched it for a heartbeat
    if owner.get("host") == socket.gethostname():
        return not _pid_alive(int(owner.get("pid", -1)))
    return age_of(path, now) > STALE_AFTER_S


class Claim:
    """A held claim; ``release()`` (or leaving the ``with`` block) removes it and stops the heartbeat."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"claim {path.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _link_or_create(filled: str, path: Path, owner: str) -> None:
    """Make ``path`` appear holding ``owner``: a hard link of the written ``filled`` (atomic, never seen half-written);
    on a filesystem without hard links, an exclusive create and write. FileExistsError when ``path`` exists."""
    try:
        os.link(filled, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network and FUSE filesystems)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        with os.fdopen(fd, "w") as handle:
            handle.write(owner)


def try_claim(run_file: Path) -> Optional[Claim]:
    """Claim the run whose result goes to ``run_file``; None when another live worker holds it."""
    path = claim_path(run_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
    fd, filled = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(owner)
        os.chmod(filled, 0o666 & ~current_umask())
        for _ in range(2):  # second try after removing a stale claim
            try:
                _link_or_create(filled, path, owner)
            except FileExistsError:
                if not claim_is_stale(path):
                    return None
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                continue
            return Claim(path)
        return None
    finally:
        os.unlink(filled)
