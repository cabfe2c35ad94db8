"""The `halluc` command: a Typer front door that hands each subcommand to its Hydra app.

`halluc pretrain model=lstm train.max_steps=100` runs the Hydra app of `conf/pretrain.yaml`
with the remaining arguments, exactly as `python pretrain.py model=lstm ...` would, so
overrides, `-m` sweeps, `--cfg job`, `--help` and launchers all behave as Hydra documents.
One addition: a user's `hydra.searchpath=[...]` adds their config dirs to the command's own
search path instead of replacing it.
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import typer
from rich.console import Console

from halluc_cli.errors import UserError

# Hydra parses these arguments, Typer must not: unknown options and `--help` pass through.
HYDRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}

app = typer.Typer(
    name="halluc",
    help="Study and mitigate the hallucinations that fine-tuning causes in language models.\n\n"
    "Each command is a Hydra app: add key=value overrides, -m for sweeps, --cfg job to print "
    "the config, --help for its config groups.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, soft_wrap=True)  # an error stays one line, however long


@app.command(context_settings=HYDRA_ARGS)
def pretrain(ctx: typer.Context) -> None:
    """Train a language model (LSTM or Transformer) from scratch on a corpus."""
    from halluc_cli.commands import pretrain as command

    run_hydra_app("pretrain", command.run, ctx.args)


@app.command(context_settings=HYDRA_ARGS)
def finetune(ctx: typer.Context) -> None:
    """Fine-tune a pretrained run on QA data with a frozen-layer strategy."""
    from halluc_cli.commands import finetune as command

    run_hydra_app("finetune", command.run, ctx.args)


@app.command(context_settings=HYDRA_ARGS)
def generate(ctx: typer.Context) -> None:
    """Answer questions or continue prompts with a trained run (batched decoding)."""
    from halluc_cli.commands import generate as command

    run_hydra_app("generate", command.run, ctx.args)


@app.command(context_settings=HYDRA_ARGS)
def score(ctx: typer.Context) -> None:
    """Score predictions for hallucination against a knowledge base (with optional KB verification)."""
    from halluc_cli.commands import score as command

    run_hydra_app("score", command.run, ctx.args)


class _TaskState:
    """Whether Hydra got as far as calling the command (else a failure was the config's), and
    the runs of a sweep in this process that failed (the sweep goes on without them)."""

    started = False
    sweeping_here = False  # set by the process that launches Hydra; a submitit job's is not
    failed_runs: list[str] = []
    command_start = 0.0  # time.time() when the command began: the run dirs Hydra made are newer
    hydra_messages: _HeldStderr | None = None  # what Hydra writes while it composes the config


class _HeldStderr:
    """Holds back stderr while Hydra composes the config: a config it cannot compose is
    reported in several lines (message, full_key, object_type, a hint), which `run_hydra_app`
    turns into one. Once a command starts, stderr is the terminal's again."""

    def __init__(self) -> None:
        self.real, self.buffer = sys.stderr, io.StringIO()
        sys.stderr = self.buffer

    def release(self) -> str:
        """Give stderr back; what was held since the last release, as written."""
        if sys.stderr is self.buffer:
            sys.stderr = self.real
        held = self.buffer.getvalue()
        self.buffer.seek(0)
        self.buffer.truncate()
        return held

    def one_line(self) -> str:
        """Hydra's report as one line, without its hint about HYDRA_FULL_ERROR (--debug says it)."""
        lines = [line.strip() for line in self.release().splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
        if any(line.startswith("Traceback") for line in lines):
            return _exception_line(lines[-1])  # raised while Hydra set the run up: the exception says it
        if lines and lines[0].startswith("usage:"):
            return lines[-1].partition(" error: ")[2] or lines[-1]  # the argument parser's own line
        parts: list[str] = []
        listing = False  # inside "Available options in 'mitigation':" and its one-word lines
        for line in lines:
            if line.startswith("Config search path"):
                break  # where Hydra looked: --debug shows it
            if listing and " " not in line:
                parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line
                continue
            listing = line.endswith(":")
            parts.append(line)
        return "; ".join(parts)


_UNLOADABLE = re.compile(r"Could not load '(?P<group>[\w/]+)/[^']+'\.?")


def _with_options(message: str, command: str) -> str:
    """`message` with the options of the group it names as missing: Hydra lists them for a bad
    choice (`logger=tensorbord`) but not for a bad one in a list (`logger=[tensorbord]`)."""
    from halluc_cli.config import CONF_DIR

    match = _UNLOADABLE.search(message)
    if match is None:
        return message
    group = match["group"]
    folders = (CONF_DIR / group, CONF_DIR / command / group)  # shared, and the command's own
    options = sorted({path.stem for folder in folders for path in folder.glob("*.yaml")})
    if not options:
        return message
    return f"{message[: match.end()].rstrip('.')}; Available options in '{group}': {', '.join(options)}{message[match.end():]}"


def _exception_line(line: str) -> str:
    """The last line of a traceback; an OS error there is Hydra failing to create the run dir."""
    kind = line.partition(":")[0]
    if kind in ("NotADirectoryError", "FileExistsError", "PermissionError", "IsADirectoryError", "OSError"):
        return f"the run dir cannot be created ({line}); choose another hydra.run.dir (hydra.sweep.dir with -m)"
    return line


@dataclass
class _GuardedTask:
    """`task` as Hydra calls it: a missing value or a `UserError` ends with one line, exit 2;
    a stop signal (`Preempted`, after its checkpoint) ends as the scheduler expects.

    A module-level class rather than a closure: submitit launchers (hydra/launcher=slurm)
    pickle the task into each job, and a closure would take this module's console, which
    holds a lock, along by value.
    """

    task: Callable
    debug: bool

    def __call__(self, cfg) -> None:
        from halluc_cli.training.preemption import Preempted, exit_preempted

        from halluc_cli import rundir
        from halluc_cli.config import check_settings

        _TaskState.started = True
        if _TaskState.hydra_messages is not None:
            sys.stderr.write(_TaskState.hydra_messages.release())  # warnings, not errors: pass them on
        try:
            _require_values(cfg)
            check_settings(cfg)
            self.task(cfg)
        except UserError as error:
            if not error.keep_run_dir:
                rundir.discard_failed_start(_run_dir(), _TaskState.command_start)
            if self.debug:
                raise
            run = _sweep_run_name()
            err.print(f"error{f' in run {run}' if run else ''}: {error}", highlight=False, markup=False)
            if run is None:
                sys.exit(error.exit_code)
            _TaskState.failed_runs.append(run)  # one bad setting does not cost the sweep's other runs
        except Preempted as stopped:
            exit_preempted(stopped)
        finally:
            rundir.release()


def _run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def run_hydra_app(name: str, task: Callable, args: list[str]) -> None:
    """Run `task` as the Hydra app of `conf/<name>.yaml` with `args` as its command line.

    A user's mistake ends with one line on stderr and exit status 2: a `UserError` from the
    task, or a config Hydra could not compose (bad override, misspelled key, unknown group
    option). `--debug` (or HYDRA_FULL_ERROR=1) shows the full traceback instead.
    """
    import hydra

    from halluc_cli.config import CONF_DIR, register_configs

    debug = "--debug" in args
    if debug:
        args = [arg for arg in args if arg != "--debug"]
        os.environ["HYDRA_FULL_ERROR"] = "1"
    debug = debug or os.environ.get("HYDRA_FULL_ERROR") == "1"
    register_configs()
    _quiet_libraries()
    args = _keep_own_searchpath(name, args)

    if int(os.environ.get("RANK", "0")) > 0:
        # A process other than the main one of a multi-process run (torchrun) writes no
        # Hydra files: no .hydra/ config copies, no job log.
        args = [*args, "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    _TaskState.started, _TaskState.sweeping_here, _TaskState.failed_runs = False, True, []
    _TaskState.command_start = time.time() - 1  # a file system's timestamps may be coarser
    guarded = _GuardedTask(task, debug)
    main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=name)(guarded)
    sys.argv = [f"halluc {name}", *args]
    held = _TaskState.hydra_messages = None if debug else _HeldStderr()
    try:
        main()
    except SystemExit as exit_:
        # Hydra reports a config it cannot compose (exit 1), its argument parser a bad option
        # (exit 2), before the task starts.
        if exit_.code in (1, 2) and not _TaskState.started:
            _fail_before_start(_with_options(held.one_line(), name) if held else "")
        raise
    except Exception as error:  # Hydra's own rules on its arguments (-m with --cfg)
        if _TaskState.started or debug:
            raise
        if held is not None:
            held.release()
        _fail_before_start(str(error))
    finally:
        _TaskState.sweeping_here = False
        if held is not None:
            sys.stderr.write(held.release())  # a sweep's launcher output, after the runs
            _TaskState.hydra_messages = None
    if _TaskState.failed_runs:
        failed = _TaskState.failed_runs
        err.print(f"error: {len(failed)} run(s) of the sweep failed (see above): {'; '.join(failed)}",
                  highlight=False, markup=False)
        raise SystemExit(UserError.exit_code)


def _fail_before_start(message: str) -> None:
    """End a command whose config could not be composed: one line, exit 2."""
    err.print(f"error: {message or 'the config could not be composed'} (--debug shows the traceback)",
              highlight=False, markup=False)
    raise SystemExit(UserError.exit_code) from None


def _keep_own_searchpath(name: str, args: list[str]) -> list[str]:
    """`args` with the command's own search path added to a user's `hydra.searchpath=[...]`.

    Hydra lets that override replace the list of `conf/<name>.yaml`, whose entry
    (`conf/<name>/`) is where `experiment=` looks; a user who adds their config dirs
    (`kb/mykb.yaml`, ...) keeps it this way. Theirs are searched first, as a `--config-dir` is.
    """
    from omegaconf import OmegaConf

    from halluc_cli.config import CONF_DIR

    own = OmegaConf.select(OmegaConf.load(CONF_DIR / f"{name}.yaml"), "hydra.searchpath", default=None)
    if own is None:
        return args
    own = OmegaConf.to_container(own, resolve=True)  # ${halluc_conf:...} resolved to a path
    return [_extend_searchpath(arg, own) if arg.startswith("hydra.searchpath=") else arg for arg in args]


def _extend_searchpath(override: str, own: list[str]) -> str:
    """`hydra.searchpath=[user's entries, own entries]`; an override that is not a list of
    strings stays as it is, for Hydra to report."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Quote, QuotedString
    from hydra.errors import OverrideParseException

    try:
        (parsed,) = OverridesParser.create().parse_overrides([override])
    except OverrideParseException:
        return override
    user = parsed.value()
    if not isinstance(user, list) or not all(isinstance(entry, str) for entry in user):
        return override
    entries = [*user, *(entry for entry in own if entry not in user)]
    quoted = ",".join(QuotedString(text=entry, quote=Quote.single).with_quotes() for entry in entries)
    return f"hydra.searchpath=[{quoted}]"


def _sweep_run_name() -> str | None:
    """"#3 (freeze=lora seed=1)" for a run of a multirun sweep launched in this process, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not _TaskState.sweeping_here or not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return f"#{hydra_cfg.job.num} ({' '.join(hydra_cfg.overrides.task)})"


def _require_values(cfg) -> None:
    """Refuse to start while a value the user must give (`???` in the config) is missing."""
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        given = " ".join(f"{key}=..." for key in missing)
        raise UserError(f"missing required value(s) {', '.join(missing)}: add {given} to the command")


def _quiet_libraries() -> None:
    """Keep library chatter (weight-loading bars, hub hints) out of the command's output."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def main() -> None:
    """Console-script entry point."""
    app()
