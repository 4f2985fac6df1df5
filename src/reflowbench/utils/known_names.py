"""The one check of names against the names a settings class knows (sections, pruner options, command settings)."""

from __future__ import annotations

from typing import Iterable

from reflowbench.errors import ConfigError


def refuse_unknown(given: Iterable[str], known: Iterable[str], subject: str, noun: str = "setting") -> None:
    """A one-line ConfigError, ``<subject> has no <noun> 'x'; its <noun>s are [...]``, when a name in ``given`` is not
    in ``known``; nothing otherwise."""
    allowed = sorted(known)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise ConfigError(f"{subject} has no {noun}{plural} {names}; its {noun}s are {allowed or 'none'}")
