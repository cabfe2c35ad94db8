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
# Groups that only another command reads, and that command's primary config.
PRIMARY_FOR_GROUP = {
    "freeze": "finetune",
    "kb": "score",
    "mitigation": "score",
    "decoding": "generate",
    **{f"{command}/experiment": command for command in PRIMARY},
}
# Files of a shared group that another command reads (score verifies, finetune cleans and
# fine-tunes on labelled text).
PRIMARY_FOR_FILE = {
    "mitigation/clean.yaml": "finetune",
    "data/labelled.yaml": "finetune",
    "data/kb_statements.yaml": "finetune",
}
# The values a data file leaves to the user.
REQUIRED_FOR_FILE = {"data/text.yaml": ["data.train=[some.txt]"], "data/labelled.yaml": ["data.train=some.csv"]}
# Every YAML file under conf/, so a new one cannot slip past this test uncomposed.
ALL_CONFIGS = sorted(str(path.relative_to(CONF_DIR)) for path in CONF_DIR.rglob("*.yaml"))


def test_config_files_are_all_counted() -> None:
    assert len(ALL_CONFIGS) == 44, ALL_CONFIGS


def _compose(name: str, overrides: list[str], with_hydra: bool = False):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=with_hydra)


def _overrides_for(path: str) -> list[str]:
    group, _, option = path.removesuffix(".yaml").rpartition("/")
    if group in ("", "hydra/help"):
        return []
    if group.endswith("/experiment"):  # conf/<command>/experiment/: that command's experiments
        return [f"experiment={option}"]
    return [f"{group}={option}"]


@pytest.mark.parametrize("path", ALL_CONFIGS)
def test_each_config_file_composes_and_resolves(path: str) -> None:
    overrides = _overrides_for(path) + REQUIRED_FOR_FILE.get(path, [])
    group, _, option = path.removesuffix(".yaml").rpartition("/")
    primary = option if group == "" else PRIMARY_FOR_FILE.get(path, PRIMARY_FOR_GROUP.get(group, "pretrain"))
    cfg = _compose(primary, overrides + PRIMARY[primary])
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if primary == "pretrain":
        assert resolved["model"]["name"] in ("lstm", "transformer")
    if group in ("freeze", "mitigation"):
        assert resolved[group]["name"] == option


def test_finetune_mitigation_defaults_to_none_and_clean_is_typed() -> None:
    assert _compose("finetune", ["ckpt=some/run"]).mitigation.name == "none"
    cfg = _compose("finetune", ["ckpt=some/run", "mitigation=clean"])
    assert cfg.mitigation.unknown_categories == ["Unknown"] and cfg.mitigation.unknown_action == "drop"
    with pytest.raises(ConfigCompositionException, match="num_samples"):
        _compose("finetune", ["ckpt=some/run", "mitigation=clean", "mitigation.num_samples=many"])


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
