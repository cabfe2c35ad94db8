"""Steps every command shares: its run dir, resolved config, seeding, resume, the model it loads."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from halluc_cli import rundir
from halluc_cli.console import console
from halluc_cli.errors import UserError
from halluc_cli.io import atomic_write_text, complete_dir
from halluc_cli.models import LanguageModel, count_parameters
from halluc_cli.models.base import FAMILY_FILE
from halluc_cli.training.checkpoint import find_checkpoint
from halluc_cli.training.distributed import shared_run_dir

HF_CONFIG_FILE = "config.json"  # what every `save_pretrained` model dir holds
# A hub model id: a name, or owner/name (letters, digits, "-", "_", ".").
HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")


def start_run(cfg: DictConfig, accelerator: Accelerator | None = None, kept_on_resume: tuple[str, ...] = ()) -> Path:
    """Seed every generator (commands with a seed), claim the run dir, save the resolved
    config (and Hydra's record of the run in `.hydra/`) in it, and return the dir.

    Call it once the settings and inputs are checked: a failure before it leaves nothing.
    `kept_on_resume`: the config sections a resumed run must share with its checkpoint
    (a model of another shape, or other data, cannot continue it).
    Training commands pass their `accelerator`: of several processes (torchrun), all use the
    main process's run dir, and only the main one writes the config and prints.
    """
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    main = accelerator is None or accelerator.is_main_process
    if accelerator is not None:
        run_dir = shared_run_dir(run_dir, accelerator)
    console.quiet = not main
    if "seed" in cfg:
        set_seed(cfg.seed)
    if main:
        rundir.claim(run_dir)
        if kept_on_resume and str(cfg.resume).lower() != "false" and find_checkpoint(run_dir / rundir.CHECKPOINT_DIR):
            _check_resumable(run_dir / rundir.CONFIG_FILE, cfg, kept_on_resume)
        atomic_write_text(run_dir / rundir.CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
        _write_hydra_record(run_dir)
    console.print(f"[bold]run dir[/bold] {run_dir}", highlight=False)
    return run_dir


def _write_hydra_record(run_dir: Path) -> None:
    """What Hydra itself writes to `.hydra/` (the run's hydra settings and its overrides), so a
    run dir records how it was launched; halluc's resolved config is `config.yaml` beside it."""
    hydra_cfg = HydraConfig.get()
    record = run_dir / rundir.HYDRA_DIR
    atomic_write_text(record / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
    atomic_write_text(record / rundir.OVERRIDES_FILE, OmegaConf.to_yaml(hydra_cfg.overrides.task))


@dataclass(frozen=True)
class SweepJob:
    """Where a run stands in a -m sweep."""

    number: int  # from 1, Hydra's hydra.job.num + 1
    size: int | None  # the sweep's jobs; None where they cannot be counted


def sweep_job() -> SweepJob | None:
    """This run's place in its -m sweep; None for a run alone."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return SweepJob(hydra_cfg.job.num + 1, _sweep_size(hydra_cfg))


def _sweep_size(hydra_cfg: DictConfig) -> int | None:
    """The jobs of the sweep as Hydra's basic sweeper counts them: the product of each swept
    key's values, from the config's sweeper params and the command line (which Hydra records
    in the sweep dir's multirun.yaml, the job's own overrides being single values)."""
    record = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    params = hydra_cfg.sweeper.get("params") or {}
    try:
        command_line = list(OmegaConf.load(record).hydra.overrides.task) if record.is_file() else []
        overrides = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()]
                                                             + command_line)
        counts = {override.key_or_group: len(list(override.sweep_string_iterator())) if override.is_sweep_override()
                  else 1 for override in overrides}  # the command line's value of a key replaces the config's
    except Exception:  # an override this count cannot read: the progress line goes without a size
        return None
    size = 1
    for count in counts.values():
        size *= count
    return size


def _check_resumable(saved_config: Path, cfg: DictConfig, sections: tuple[str, ...]) -> None:
    """Refuse to resume a checkpoint under settings it was not trained with, naming the first
    setting that differs and both of its values."""
    if not saved_config.is_file():
        return
    saved = OmegaConf.load(saved_config)
    for section in sections:
        before, now = _leaves(_plain(saved.get(section)), section), _leaves(_plain(cfg[section]), section)
        # A different family (model.name) says the most; then a setting both runs have.
        telling = lambda key: (not key.endswith(".name"), key not in before or key not in now, key)  # noqa: E731
        for key in sorted(before.keys() | now.keys(), key=telling):
            if before.get(key) != now.get(key):
                raise UserError(
                    f"the run dir's checkpoint was trained with {key}={before.get(key)}, not {now.get(key)}; "
                    "resume with the run's settings, set resume=false to start over, or choose another hydra.run.dir"
                )


def _plain(node: Any) -> Any:
    """A config section as plain values (a single setting, like ckpt, as it is)."""
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True) if OmegaConf.is_config(node) else node


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    """{"model.hidden_dim": 32, ...}: the settings of a config section, by full key."""
    if not isinstance(node, dict):
        return {prefix: node}
    return {key: value for name, child in node.items() for key, value in _leaves(child, f"{prefix}.{name}").items()}


def checkpoint_to_resume(run_dir: Path, resume: str) -> Path | None:
    """The run dir's checkpoint to continue from, as `resume` (auto | true | false) asks."""
    mode = str(resume).lower()
    if mode not in ("auto", "true", "false"):
        raise UserError(f"resume must be auto, true or false, got {resume!r}")
    found = find_checkpoint(run_dir / rundir.CHECKPOINT_DIR)
    if mode == "true" and found is None:
        raise UserError(
            f"resume=true but {run_dir} holds no checkpoint; set hydra.run.dir=<the run dir to continue>"
        )
    if found is not None and mode != "false":
        console.print(f"resuming from {found}", highlight=False)
        return found
    return None


@dataclass(frozen=True)
class ModelSource:
    """Where a command's model comes from: a halluc run, or a model halluc did not train."""

    model_dir: str  # what weights and tokenizer load from: a local dir, or a hub name
    run_dir: Path | None  # the halluc run it belongs to (config, kb_split.json, qa/); None: a foreign model

    @property
    def foreign(self) -> bool:
        """True for a Hugging Face model halluc did not train (a local dir or a hub name)."""
        return self.run_dir is None


def resolve_model(path: str, weights: str = rundir.CHECKPOINT_DIR) -> ModelSource:
    """The model `ckpt=` names: a halluc run dir (its `weights` dir: checkpoint or best), a
    halluc model dir, a Hugging Face `save_pretrained` dir, or a hub name (users with internet)."""
    given = Path(path)
    if (given / FAMILY_FILE).is_file():
        return ModelSource(str(given), given.parent)
    found = complete_dir(given / weights)
    if found is not None and (found / FAMILY_FILE).is_file():
        return ModelSource(str(found), given)
    if (given / HF_CONFIG_FILE).is_file():
        return ModelSource(str(given), None)
    if given.exists() or not HUB_NAME.fullmatch(path):
        raise UserError(
            f"{path} is neither a halluc run dir (with a {weights}/ model), a model dir, nor a Hugging Face "
            f"model dir (with {HF_CONFIG_FILE}); point ckpt at one of them or at a hub name"
        )
    return ModelSource(path, None)  # a hub name: loading it says whether it exists


def describe_model(model: LanguageModel, notes: list[str] = ()) -> None:
    """Print the model's family, its trainable and total parameter counts, and any notes."""
    trainable, total = count_parameters(model)
    console.print(
        f"[bold]model[/bold] {model.family}: {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / max(total, 1):.1f}%)",
        highlight=False,
    )
    for note in notes:
        console.print(f"  note: {note}", highlight=False)
