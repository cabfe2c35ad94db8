"""A run dir while a command uses it: one run at a time, and nothing left by a failed start.

Hydra creates the run dir before the command starts; `commands.common.start_run` then
`claim`s it: a lock that a second run into the same dir cannot take, and a note of whether the
dir was empty. A command that fails with a user's mistake before its first checkpoint
(`discard_failed_start`) leaves nothing behind: what it wrote into a dir that was empty is
removed. A dir that held a run before keeps it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from filelock import FileLock, Timeout

from halluc_cli.errors import UserError

LOCK_FILE = ".lock"  # held (an OS lock, gone with the process) while a run writes the dir
TRAINED = ("checkpoint", "best")  # what a run has once it trained: never removed

_claimed: dict[Path, FileLock] = {}
_fresh: set[Path] = set()  # claimed dirs that were empty: a failed start removes what it wrote


def claim(run_dir: Path) -> None:
    """Hold `run_dir` for this run; a second run into it ends with one line instead of
    interleaving its metrics and checkpoints with this one's."""
    run_dir.mkdir(parents=True, exist_ok=True)
    empty = not any(run_dir.iterdir())
    lock = FileLock(str(run_dir / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(
            f"{run_dir} is in use by another run; wait for it to end, or choose another hydra.run.dir"
        ) from None
    _claimed[run_dir] = lock
    if empty:
        _fresh.add(run_dir)


def release() -> None:
    """Let go of the run dirs this process holds (at the end of each run of a sweep)."""
    for lock in _claimed.values():
        lock.release()
    _claimed.clear()
    _fresh.clear()


def discard_failed_start(run_dir: Path, command_start: float) -> None:
    """After a user's mistake: remove what this run wrote if the dir was empty when it began
    and nothing was trained yet; an empty dir that Hydra made for the command (after
    `command_start`) goes too."""
    fresh = run_dir in _fresh
    release()
    try:
        if fresh and not any((run_dir / name).exists() for name in TRAINED):
            shutil.rmtree(run_dir)
        elif not any(run_dir.iterdir()) and run_dir.stat().st_ctime >= command_start:
            run_dir.rmdir()
    except OSError:
        pass  # gone already, or not ours to remove
