"""Every config file composes, and typos fail at composition naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from halluc_cli.config import CONF_DIR, register_configs

# Each primary config (conf/<command>.yaml) with the values it leaves to the user.
PRIMARY = {
    "pretrain": [],
    "finetune": ["ckpt=some/run"],
    "generate": ["ckpt=some/run"],
    "score": ["predictions=some.jsonl"],
}
# Shared groups that only another command reads, and that command's primary config.
# (conf/<command>/<group>/ is that command's own: finetune's freeze and mitigation, ...)
PRIMARY_FOR_GROUP = {"kb": "score", "decoding": "generate", "detector": "generate"}
# The values a data file leaves to the user.
REQUIRED_FOR_FILE = {
    "pretrain/data/text.yaml": ["data.train=[some.txt]"],
    "finetune/data/labelled.yaml": ["data.train=some.csv"],
    "finetune/data/qa_file.yaml": ["data.path=some.jsonl"],
    "score/mitigation/abstain_uncertain.yaml": ["mitigation.calibration=some.jsonl"],
}
# Every YAML file under conf/, so a new one cannot slip past this test uncomposed.
ALL_CONFIGS = sorted(str(path.relative_to(CONF_DIR)) for path in CONF_DIR.rglob("*.yaml"))


def test_config_files_are_all_counted() -> None:
    assert len(ALL_CONFIGS) == 61, ALL_CONFIGS


def _compose(name: str, overrides: list[str], with_hydra: bool = False):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=with_hydra)


def _primary_and_overrides(path: str) -> tuple[str, list[str]]:
    """The command whose config composes `path`, and the overrides that select it."""
    group, _, option = path.removesuffix(".yaml").rpartition("/")
    if group == "":
        return option, []
    command, _, own_group = group.partition("/")
    if command in PRIMARY:  # conf/<command>/<group>/: that command's own option
        return command, [f"{own_group}={option}"]
    if group == "hydra/help":
        return "pretrain", []
    return PRIMARY_FOR_GROUP.get(group, "pretrain"), [f"{group}={option}"]


@pytest.mark.parametrize("path", ALL_CONFIGS)
def test_each_config_file_composes_and_resolves(path: str) -> None:
    primary, overrides = _primary_and_overrides(path)
    cfg = _compose(primary, overrides + REQUIRED_FOR_FILE.get(path, []) + PRIMARY[primary])
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if primary == "pretrain":
        assert resolved["model"]["name"] in ("lstm", "transformer")
    group, _, option = path.removesuffix(".yaml").rpartition("/")
    if group.endswith(("freeze", "mitigation")):
        assert resolved[group.rpartition("/")[2]]["name"] == option


def test_each_command_refuses_the_options_of_another() -> None:
    with pytest.raises(ConfigCompositionException, match="Could not find 'mitigation/kb_verify'"):
        _compose("finetune", ["ckpt=some/run", "mitigation=kb_verify"])
    with pytest.raises(ConfigCompositionException, match="Could not find 'mitigation/clean'"):
        _compose("score", ["predictions=some.jsonl", "mitigation=clean"])
    with pytest.raises(ConfigCompositionException, match="Could not find 'data/labelled'"):
        _compose("pretrain", ["data=labelled"])
    with pytest.raises(ConfigCompositionException, match="Could not find 'data/text'"):
        _compose("finetune", ["ckpt=some/run", "data=text"])


def test_finetune_mitigation_defaults_to_none_and_clean_is_typed() -> None:
    assert _compose("finetune", ["ckpt=some/run"]).mitigation.name == "none"
    cfg = _compose("finetune", ["ckpt=some/run", "mitigation=clean"])
    assert cfg.mitigation.unknown_categories == ["Unknown"] and cfg.mitigation.unknown_action == "drop"
    with pytest.raises(ConfigCompositionException, match="num_samples"):
        _compose("finetune", ["ckpt=some/run", "mitigation=clean", "probe.num_samples=many"])


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_loggers_are_chosen_as_a_list_and_typed(command: str) -> None:
    given = PRIMARY[command]
    assert _compose(command, given).logger.jsonl is not None  # the default: metrics.jsonl alone
    cfg = _compose(command, given + ["logger=[tensorboard,mlflow]", "logger.mlflow.experiment=mine"])
    chosen = {name for name, value in cfg.logger.items() if value is not None}
    assert chosen == {"tensorboard", "mlflow"} and cfg.logger.mlflow.experiment == "mine"
    with pytest.raises(ConfigCompositionException, match="trackinguri"):
        _compose(command, given + ["logger=mlflow", "logger.mlflow.trackinguri=x"])
    with pytest.raises(ConfigCompositionException, match="logger.wandb.mode=sometimes") as refused:
        _compose(command, given + ["logger=wandb", "logger.wandb.mode=sometimes"])
    assert "expected one of [online, offline, disabled]" in str(refused.value.__cause__)


def test_generate_has_no_logger() -> None:
    with pytest.raises(ConfigCompositionException, match="Could not override 'logger'"):
        _compose("generate", ["ckpt=some/run", "logger=tensorboard"])


def test_misspelled_key_fails_naming_the_key() -> None:
    with pytest.raises(ConfigCompositionException, match="hiden_dim"):
        _compose("pretrain", ["model.hiden_dim=3"])


def test_wrong_type_fails() -> None:
    with pytest.raises(ConfigCompositionException, match="max_steps"):
        _compose("pretrain", ["train.max_steps=lots"])


def test_transformer_keys_rejected_on_lstm() -> None:
    with pytest.raises(ConfigCompositionException, match="num_heads"):
        _compose("pretrain", ["model=lstm", "model.num_heads=4"])


def test_tiny_experiment_sizes_both_families() -> None:
    for family in ("lstm", "transformer"):
        cfg = _compose("pretrain", ["experiment=tiny", f"model={family}"])
        assert cfg.model.hidden_dim == 32 and cfg.device.name == "cpu" and cfg.data.name == "kbqa_tiny"


def test_one_experiment_name_gives_each_command_its_own_settings() -> None:
    pretrain = _compose("pretrain", ["experiment=tiny"])
    finetune = _compose("finetune", ["experiment=tiny", "ckpt=some/run"])
    generate = _compose("generate", ["experiment=tiny", "ckpt=some/run"])
    assert (pretrain.train.max_steps, finetune.train.max_steps) == (40, 30)
    assert pretrain.data.max_subjects == finetune.data.max_subjects == 60
    assert generate.decoding.max_new_tokens == 8 and generate.device.name == "cpu"


def test_bundled_corpus_path_resolves_to_a_file() -> None:
    cfg = _compose("pretrain", ["data=fables"])
    assert Path(cfg.data.train[0]).is_file()


def test_labelled_data_is_typed_and_takes_label_words_from_the_command_line() -> None:
    overrides = ["ckpt=some/run", "data=labelled", "data.train=r.csv", "data.label_words={0: negative, 1: positive}"]
    cfg = _compose("finetune", overrides)
    assert dict(cfg.data.label_words) == {0: "negative", 1: "positive"} and cfg.data.heldout_fraction == 0.1
    with pytest.raises(ConfigCompositionException, match="heldout_fraction"):
        _compose("finetune", overrides + ["data.heldout_fraction=some"])


LAUNCHERS = sorted(path.stem for path in (CONF_DIR / "hydra" / "launcher").glob("*.yaml"))


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("command", sorted(PRIMARY))
def test_each_launcher_composes_for_each_command(command: str, launcher: str) -> None:
    cfg = _compose(command, [f"hydra/launcher={launcher}", *PRIMARY[command]], with_hydra=True)
    launcher_cfg = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher_cfg["_target_"].startswith("hydra_plugins.hydra_submitit_launcher.")
    assert launcher_cfg["name"] == command and launcher_cfg["timeout_min"] > 0
    with pytest.raises(ConfigCompositionException, match="timeout_minutes"):  # typed by the plugin's schema
        _compose(command, [f"hydra/launcher={launcher}", "hydra.launcher.timeout_minutes=5", *PRIMARY[command]])


def test_slurm_launcher_requeues_with_a_signal_before_the_limit() -> None:
    launcher = _compose("finetune", ["hydra/launcher=slurm", "ckpt=some/run"], with_hydra=True).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_node == 1
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0
    assert launcher.additional_parameters == {"requeue": True}


def test_lstm_baseline_is_the_searched_lstm_and_finetunes_as_results_8() -> None:
    pretrain = _compose("pretrain", ["experiment=lstm_baseline"], with_hydra=True)
    assert pretrain.model.name == "lstm" and pretrain.model.tie_weights and pretrain.data.paraphrases == 8
    finetune = _compose("finetune", ["experiment=lstm_baseline"], with_hydra=True)
    assert finetune.ckpt == pretrain.hydra.run.dir and finetune.ledger  # fine-tunes what the pretraining wrote
    assert finetune.hydra.sweep.dir == "outputs/lstm_baseline/finetune"
