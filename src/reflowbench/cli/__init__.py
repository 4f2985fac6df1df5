"""The ``reflowbench`` command (top layer): parse the flags (:mod:`.parser`), run a command (:mod:`.commands`), print
one line for an error the user can fix, never a traceback.

Commands: run, prune, report, compare, suite, tune, ablate-reflow, train, list.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import List, Optional

from reflowbench.cli import commands
from reflowbench.cli.parser import build_parser
from reflowbench.errors import ReflowbenchError

__all__ = ["build_parser", "main"]


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``reflowbench`` with ``argv`` (default: the process's arguments); the exit status: 0 done, 1 a failed gate,
    2 an error named in one line, 130 interrupted, 141 a closed pipe."""
    from reflowbench.pruners.base import load_plugins

    try:
        load_plugins()
    except ReflowbenchError as exc:
        print(f"reflowbench: error: {exc}", file=sys.stderr)
        return 2
    try:
        parser = build_parser()
    except ReflowbenchError as exc:
        print(f"reflowbench: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        if args.command in ("run", "prune"):
            from reflowbench.harness.distributed import join_launched_group

            if not join_launched_group():  # under torchrun: rank 0 alone prints
                commands.quiet()
        return args.handler(args)
    except ReflowbenchError as exc:
        print(f"reflowbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reflowbench: interrupted; {getattr(args, 'interrupted', 'nothing was saved')}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" while writing {exc.filename}" if exc.filename else ""
        print(
            f"reflowbench: error: no space left on the disk{where} ({exc.strerror}); {getattr(args, 'interrupted', 'nothing was saved')}. "
            "Every file is written whole or not at all: free some space and run the same command again to go on",
            file=sys.stderr,
        )
        return 2
