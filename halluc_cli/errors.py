"""User-facing errors: one clear line and exit status 2, never a traceback by default."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad path, malformed file, wrong checkpoint...).

    The message names the problem and, where possible, the fix. The CLI prints it on one
    line and exits with status 2; `--debug` or `HYDRA_FULL_ERROR=1` shows the traceback.
    """

    exit_code = 2

    def __init__(self, message: str, *, keep_run_dir: bool = False) -> None:
        super().__init__(message)
        # A failed start removes what the run wrote, unless the message points the user at it.
        self.keep_run_dir = keep_run_dir
