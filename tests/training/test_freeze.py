"""Freeze strategies on both families: frozen parameters stay bitwise, trainable ones move."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM

from halluc_cli.config import (
    CONF_DIR,
    FreezeConfig,
    GradualFreezeConfig,
    LayersFreezeConfig,
    LoraFreezeConfig,
    LSTMConfig,
    TokenizerConfig,
    TransformerConfig,
    register_configs,
)
from halluc_cli.data.tokenizer import train_tokenizer
from halluc_cli.errors import UserError
from halluc_cli.models import build_model, count_parameters, load_model
from halluc_cli.models.base import WEIGHTS_FILE
from halluc_cli.training.device import weights_dtype
from halluc_cli.training.freeze import STRATEGIES, FreezeStrategy, apply_freeze, cast_for_training

VOCAB_LINES = [f"word{i} and some other words number {i % 7}" for i in range(40)]
MODELS = {
    "lstm": LSTMConfig(hidden_dim=8, num_layers=3, dropout=0.0),
    "lstm-tied": LSTMConfig(hidden_dim=8, num_layers=3, dropout=0.0, tie_weights=True),
    "gpt2-tied": TransformerConfig(hidden_dim=16, num_layers=3, num_heads=2, max_positions=16, tie_weights=True),
    "llama": TransformerConfig(architecture="llama", hidden_dim=16, num_layers=3, num_heads=2, max_positions=16),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Models this small gain nothing from threads, and on a busy 2-core machine the idle
    # threads' spinning makes these tests several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(VOCAB_LINES, TokenizerConfig(kind="word"))


def _model(name: str, tokenizer):
    torch.manual_seed(0)
    return build_model(MODELS[name], tokenizer)


def _ids(*modules: nn.Module) -> set[int]:
    return {id(p) for module in modules for p in module.parameters()}


def _embeddings(model) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Embedding)]  # tokens, and GPT-2's positions


def _final_norm(model) -> set[int]:
    return _ids(model) - _ids(*model.blocks(), *_embeddings(model), model.output_head())


# What each strategy (with its conf/finetune/freeze/ defaults) trains, from the model interface's handles.
EXPECTED = {
    "none": lambda m: _ids(m),
    "embeddings": lambda m: _ids(m) - _ids(*_embeddings(m)),
    "layers": lambda m: _ids(*m.blocks()[1:]),  # trainable_layers: 2 of 3
    "head_only": lambda m: _ids(m.output_head()),
    "gradual": lambda m: _ids(m.output_head()) | _final_norm(m),  # before the first unfreezing
    "lora": lambda m: {id(p) for name, p in m.named_parameters() if "lora_" in name},
}


def _freeze_config(name: str, *overrides: str):
    """conf/finetune/freeze/<name>.yaml as Hydra composes it (a DictConfig, as the finetune command gets it)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        overrides = ["ckpt=some/run", f"freeze={name}", *(f"freeze.{o}" for o in overrides)]
        return compose(config_name="finetune", overrides=overrides).freeze


def _train(
    model, strategy: FreezeStrategy, tokenizer, steps: int = 3, autocast: torch.dtype | None = None
) -> None:
    """A few AdamW steps (with weight decay) on random tokens, as the trainer runs them;
    forward under `autocast` when given (as accelerate's mixed precision does)."""
    torch.manual_seed(1)
    optimizer = torch.optim.AdamW(strategy.optimizer_parameters(model), lr=1e-2, weight_decay=0.1)
    for step in range(steps):
        strategy.on_step(model, step)
        ids = torch.randint(0, len(tokenizer), (2, 6))
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            logits, _ = model(ids[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _check_moved(model, before: dict[str, torch.Tensor], trainable: set[int]) -> None:
    for name, p in model.named_parameters():
        if id(p) in trainable:
            assert not torch.equal(p, before[name]), f"{name} should have trained"
        else:
            assert torch.equal(p, before[name]), f"{name} should be frozen"


def _check_trains_exactly(
    model, strategy: FreezeStrategy, tokenizer, expected: set[int], autocast: torch.dtype | None = None
) -> None:
    """The `expected` parameters (by id) and no others require grad, move in training, and
    the rest stay bitwise as they were."""
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected
    before = _snapshot(model)
    _train(model, strategy, tokenizer, autocast=autocast)
    _check_moved(model, before, expected)


CASES = [(s, m) for s in STRATEGIES for m in MODELS if not (s == "lora" and m.startswith("lstm"))]


@pytest.mark.parametrize("strategy,model_name", CASES, ids=[f"{s}-{m}" for s, m in CASES])
def test_strategy_trains_exactly_its_parameters(strategy: str, model_name: str, tokenizer) -> None:
    model = _model(model_name, tokenizer)
    frozen_at_start = apply_freeze(model, _freeze_config(strategy))
    expected = EXPECTED[strategy](model)
    assert expected and {id(p) for p in model.parameters() if p.requires_grad} == expected
    trainable, total = count_parameters(model)
    assert trainable == sum(p.numel() for p in model.parameters() if id(p) in expected)
    assert total == sum(p.numel() for p in model.parameters()) and (trainable < total or strategy == "none")
    before = _snapshot(model)
    _train(model, frozen_at_start, tokenizer)
    _check_moved(model, before, expected)


def test_lora_on_the_lstm_is_a_clear_error(tokenizer) -> None:
    with pytest.raises(UserError, match="freeze=lora needs model=transformer.*freeze=layers or freeze=none"):
        apply_freeze(_model("lstm", tokenizer), LoraFreezeConfig())


@pytest.mark.parametrize("model_name", ["lstm", "gpt2-tied", "llama"])
@pytest.mark.parametrize(
    "layers,blocks",
    [(1, [2]), (-1, [0]), (-2, [0, 1]), ([0, 2], [0, 2]), ([1], [1]), (3, [0, 1, 2])],
    ids=["last1", "first1", "first2", "list-0-2", "middle-only", "all"],
)
def test_layers_selects_blocks(model_name: str, layers, blocks: list[int], tokenizer) -> None:
    model = _model(model_name, tokenizer)
    strategy = apply_freeze(model, LayersFreezeConfig(trainable_layers=layers))
    expected = _ids(*(model.blocks()[i] for i in blocks))
    _check_trains_exactly(model, strategy, tokenizer, expected)


@pytest.mark.parametrize(
    "model_name,part,child",
    [("gpt2-tied", "mlp", "mlp"), ("llama", "self_attn", "self_attn"), ("gpt2-tied", "attn.c_attn", "attn")],
)
def test_trainable_modules_narrows_to_named_parts(model_name: str, part: str, child: str, tokenizer) -> None:
    model = _model(model_name, tokenizer)
    strategy = apply_freeze(model, LayersFreezeConfig(trainable_layers=[0, 2], trainable_modules=[part]))
    blocks = model.blocks()
    expected = {id(p) for i in (0, 2) for name, p in blocks[i].named_parameters() if name.startswith(part + ".")}
    assert expected and _ids(*(getattr(blocks[i], child) for i in (0, 2))) >= expected
    _check_trains_exactly(model, strategy, tokenizer, expected)


def test_command_line_overrides_reach_the_strategy(tokenizer) -> None:
    model = _model("gpt2-tied", tokenizer)
    cfg = _freeze_config("layers", "trainable_layers=[0,2]", "trainable_modules=[mlp]", "extra_modules=[head]")
    apply_freeze(model, cfg)
    trained = {name.split(".")[3] for name, p in model.named_parameters() if p.requires_grad and ".h." in name}
    assert trained == {"0", "2"} and model.output_head().weight.requires_grad
    with pytest.raises(ConfigCompositionException, match="Could not override 'freeze.rank'"):
        _freeze_config("layers", "rank=4")


def test_trainable_modules_on_the_lstm_names_its_weights(tokenizer) -> None:
    model = _model("lstm", tokenizer)
    apply_freeze(model, LayersFreezeConfig(trainable_layers=1, trainable_modules=["weight_hh_l0"]))
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["layers.2.weight_hh_l0"]


@pytest.mark.parametrize("model_name", ["lstm", "gpt2-tied", "llama"])
def test_extra_modules_add_the_head_and_more(model_name: str, tokenizer) -> None:
    model = _model(model_name, tokenizer)
    strategy = apply_freeze(model, LayersFreezeConfig(trainable_layers=1, extra_modules=["head"]))
    expected = _ids(model.blocks()[2], model.output_head())
    _check_trains_exactly(model, strategy, tokenizer, expected)


@pytest.mark.parametrize(
    "model_name,extra,expected_names",
    [
        ("gpt2-tied", ["final_norm"], {"hf.transformer.ln_f.weight", "hf.transformer.ln_f.bias"}),
        ("gpt2-tied", ["wpe"], {"hf.transformer.wpe.weight"}),  # a module name, as LLaMA-Factory takes
        ("gpt2-tied", ["transformer.h.1.mlp.c_fc"], {f"hf.transformer.h.1.mlp.c_fc.{w}" for w in ("weight", "bias")}),
        ("llama", ["lm_head", "norm"], {"hf.lm_head.weight", "hf.model.norm.weight"}),
        ("lstm", ["decoder.bias"], {"decoder.bias"}),
    ],
)
def test_extra_modules_by_name(model_name: str, extra: list[str], expected_names: set[str], tokenizer) -> None:
    model = _model(model_name, tokenizer)
    apply_freeze(model, LayersFreezeConfig(trainable_layers=0, extra_modules=extra))
    assert {name for name, p in model.named_parameters() if p.requires_grad} == expected_names


def _layers(**keys) -> LayersFreezeConfig:
    return LayersFreezeConfig(trainable_layers=1, **keys)


def test_unknown_block_part_lists_the_parts_that_exist(tokenizer) -> None:
    with pytest.raises(UserError, match="no part 'attention'; they have: attn, ln_1, ln_2, mlp"):
        apply_freeze(_model("gpt2-tied", tokenizer), _layers(trainable_modules=["attention"]))
    with pytest.raises(UserError, match="input_layernorm, mlp, post_attention_layernorm, self_attn"):
        apply_freeze(_model("llama", tokenizer), _layers(trainable_modules=["attn"]))


def test_unknown_extra_module_lists_the_names_that_exist(tokenizer) -> None:
    with pytest.raises(UserError, match=r"no 'lm_haed'; use one of embeddings, head, output_head, final_norm, .*hf\.lm_head"):
        apply_freeze(_model("llama", tokenizer), _layers(extra_modules=["lm_haed"]))
    # The LSTM has no norm before its head: the alias is not offered.
    with pytest.raises(UserError, match="one of embeddings, head, output_head, or a module name such as decoder, embedding"):
        apply_freeze(_model("lstm", tokenizer), _layers(extra_modules=["final_norm"]))


@pytest.mark.parametrize(
    "value,message",
    [
        (4, "trainable_layers=4 but the model has 3 blocks"),
        (-4, "trainable_layers=-4 but the model has 3 blocks"),
        ([0, 3], r"block \[3\] out of range; the model has 3 blocks, numbered 0..2"),
        ("two", "must be a number of blocks"),
        (None, "must be a number of blocks"),
    ],
)
def test_bad_trainable_layers(value, message: str, tokenizer) -> None:
    for name in ("lstm", "llama"):
        with pytest.raises(UserError, match=message):
            apply_freeze(_model(name, tokenizer), LayersFreezeConfig(trainable_layers=value))


def test_nothing_trainable_is_an_error(tokenizer) -> None:
    with pytest.raises(UserError, match="leaves no parameter trainable"):
        apply_freeze(_model("lstm", tokenizer), LayersFreezeConfig(trainable_layers=0))


def test_keys_of_another_strategy_are_rejected_at_composition() -> None:
    with pytest.raises(ConfigCompositionException, match="Could not override 'freeze.trainable_layers'"):
        _freeze_config("lora", "trainable_layers=2")
    with pytest.raises(ConfigCompositionException, match="Could not override 'freeze.rank'"):
        _freeze_config("none", "rank=4")


def test_unknown_strategy_lists_the_strategies(tokenizer) -> None:
    with pytest.raises(UserError, match="unknown freeze 'top'; choose one of none, embeddings, layers, head_only, gradual"):
        apply_freeze(_model("lstm", tokenizer), FreezeConfig(name="top"))


@pytest.mark.parametrize("model_name", ["lstm", "gpt2-tied", "llama"])
def test_gradual_unfreezes_one_block_every_k_steps_from_the_top(model_name: str, tokenizer) -> None:
    model = _model(model_name, tokenizer)
    strategy = apply_freeze(model, GradualFreezeConfig(unfreeze_every=2))
    blocks, head = model.blocks(), _ids(model.output_head())
    schedule = {}
    for step in range(11):
        strategy.on_step(model, step)
        schedule[step] = [i for i, block in enumerate(blocks) if all(p.requires_grad for p in block.parameters())]
        assert all(p.requires_grad for p in model.parameters() if id(p) in head)
        embeddings_train = all(p.requires_grad for m in _embeddings(model) for p in m.parameters())
        assert embeddings_train == (step >= 8)  # GPT-2's tied token embedding trains with the head; wpe not
        assert not any(p.requires_grad for i, b in enumerate(blocks) if i not in schedule[step] for p in b.parameters())
    # K = 2: the head alone for steps 0-1, block 2 joins at step 2, block 1 at 4, block 0 at 6.
    assert [schedule[s] for s in (0, 1, 2, 3, 4, 5, 6, 10)] == [[], [], [2], [2], [1, 2], [1, 2], [0, 1, 2], [0, 1, 2]]
    assert all(p.requires_grad for p in model.parameters())  # from step 8 on: full fine-tuning
    assert {id(p) for p in strategy.optimizer_parameters(model)} == _ids(model)


@pytest.mark.parametrize("model_name", ["lstm", "llama"])
def test_gradual_leaves_blocks_untouched_until_unfrozen(model_name: str, tokenizer) -> None:
    # The optimizer holds every parameter from the start; those still frozen get no gradient
    # and so no update and no weight decay.
    model = _model(model_name, tokenizer)
    strategy = apply_freeze(model, GradualFreezeConfig(unfreeze_every=1))
    before = _snapshot(model)
    _train(model, strategy, tokenizer, steps=3)  # steps 0, 1, 2: head, then blocks 2 and 1
    moved = _ids(model.output_head(), model.blocks()[2], model.blocks()[1]) | _final_norm(model)
    _check_moved(model, before, moved)


def test_tied_weights_follow_the_embeddings(tokenizer) -> None:
    for name in ("lstm-tied", "gpt2-tied"):
        model = _model(name, tokenizer)
        strategy = apply_freeze(model, FreezeConfig(name="embeddings"))
        assert not model.output_head().weight.requires_grad
        assert any("tied" in note for note in strategy.notes)
        model = _model(name, tokenizer)
        strategy = apply_freeze(model, FreezeConfig(name="head_only"))
        assert model.input_embeddings().weight.requires_grad  # the same tensor as the head's
        assert any("input embeddings train too" in note for note in strategy.notes)


def _lora_model(tokenizer, rank: int = 4):
    model = _model("gpt2-tied", tokenizer)
    strategy = apply_freeze(model, LoraFreezeConfig(rank=rank))
    return model, strategy


def test_lora_counts_and_interface(tokenizer) -> None:
    base_total = count_parameters(_model("gpt2-tied", tokenizer))[1]
    model, strategy = _lora_model(tokenizer)
    lora = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    assert count_parameters(model) == (lora, base_total + lora)
    assert len(model.blocks()) == 3 and model.output_head() is not None
    assert any("c_attn" in note for note in strategy.notes)


def test_lora_target_modules_and_their_errors(tokenizer) -> None:
    model = _model("llama", tokenizer)
    apply_freeze(model, LoraFreezeConfig(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    adapted = {name.split(".")[-4] for name, p in model.named_parameters() if p.requires_grad}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj"}
    with pytest.raises(UserError, match="target_modules=\\['qkv'\\].*linear layers: .*c_attn, c_fc, c_proj"):
        apply_freeze(_model("gpt2-tied", tokenizer), LoraFreezeConfig(target_modules=["qkv"]))


def test_lora_save_writes_a_merged_model_and_the_adapter(tokenizer, tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = _model("gpt2-tied", tokenizer)
    base.save(tmp_path / "base")
    model, strategy = _lora_model(tokenizer)
    _train(model, strategy, tokenizer)
    model.eval()
    ids = torch.randint(0, len(tokenizer), (2, 7))
    with torch.no_grad():
        live = model(ids)[0]
        model.save(tmp_path / "ckpt")
        assert torch.equal(model(ids)[0], live)  # saving merged a copy; the live model is unchanged
        assert any("lora_" in name for name, _ in model.named_parameters())
        loaded = load_model(tmp_path / "ckpt").eval()
        torch.testing.assert_close(loaded(ids)[0], live, rtol=1e-5, atol=1e-5)
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
        assert not any("lora" in name for name, _ in plain.named_parameters())
        torch.testing.assert_close(plain(ids).logits, live, rtol=1e-5, atol=1e-5)
    assert (tmp_path / "ckpt" / "adapter" / "adapter_config.json").is_file()

    # Resuming: the original base weights, fresh adapters, then the saved adapter restored.
    resumed = load_model(tmp_path / "base")
    again = apply_freeze(resumed, LoraFreezeConfig(rank=4))
    again.restore(resumed, tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(resumed.eval()(ids)[0], live, rtol=1e-5, atol=1e-5)


def _check_saved_as_merge_and_unload(model, directory: Path, dtype: torch.dtype) -> None:
    """`directory` holds what `merge_and_unload` of a copy of `model` would, in `dtype`,
    loadable by plain transformers."""
    expected = copy.deepcopy(model.hf).merge_and_unload().state_dict()
    saved = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).state_dict()
    assert saved.keys() == expected.keys()
    for key, tensor in expected.items():
        assert saved[key].dtype == dtype
        torch.testing.assert_close(saved[key], tensor, msg=key)


@pytest.mark.parametrize("model_name", ["gpt2-tied", "llama"])  # Conv1D and tied; nn.Linear
def test_lora_save_merges_like_merge_and_unload_and_leaves_the_model(
    model_name: str, tokenizer, tmp_path: Path
) -> None:
    _model(model_name, tokenizer).save(tmp_path / "plain")
    model = _model(model_name, tokenizer)
    strategy = apply_freeze(model, LoraFreezeConfig(rank=4))
    _train(model, strategy, tokenizer)  # lora_B starts at zero: a merge of untrained adapters proves nothing
    before = _snapshot(model)
    model.save(tmp_path / "ckpt")
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())

    # The keys of the un-wrapped model, each once (GPT-2's tied lm_head not apart from wte).
    written = load_file(tmp_path / "ckpt" / WEIGHTS_FILE)
    assert written.keys() == load_file(tmp_path / "plain" / WEIGHTS_FILE).keys()
    _check_saved_as_merge_and_unload(model, tmp_path / "ckpt", torch.float32)
    if model_name == "gpt2-tied":
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
        assert plain.get_output_embeddings().weight is plain.get_input_embeddings().weight

    # Training goes on from the untouched live model.
    _check_trains_exactly(model, strategy, tokenizer, EXPECTED["lora"](model))


def test_lora_on_bf16_weights_trains_fp32_adapters(tokenizer, tmp_path: Path) -> None:
    _model("llama", tokenizer).save(tmp_path / "base")
    model = load_model(tmp_path / "base", dtype=weights_dtype("bf16"))
    strategy = apply_freeze(model, LoraFreezeConfig(rank=4))
    cast_for_training(model, strategy, torch.bfloat16)
    adapters = EXPECTED["lora"](model)
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if id(p) in adapters else torch.bfloat16), name

    _check_trains_exactly(model, strategy, tokenizer, adapters, autocast=torch.bfloat16)

    model.save(tmp_path / "ckpt")
    assert {t.dtype for t in load_file(tmp_path / "ckpt" / WEIGHTS_FILE).values()} == {torch.bfloat16}
    _check_saved_as_merge_and_unload(model, tmp_path / "ckpt", torch.bfloat16)


# Not head_only on the tied GPT-2: its fp32 embeddings would feed bf16 LayerNorms, which
# autocast casts on a GPU but not on the CPU.
@pytest.mark.parametrize("name, model_name", [("layers", "gpt2-tied"), ("gradual", "gpt2-tied"), ("head_only", "llama")])
def test_cast_for_training_keeps_what_trains_in_fp32(name: str, model_name: str, tokenizer) -> None:
    model = _model(model_name, tokenizer)  # loaded in fp32 ("auto" for an fp32 checkpoint)
    strategy = apply_freeze(model, _freeze_config(name))
    before = {id(p): p.detach().clone() for p in strategy.optimizer_parameters(model)}
    cast_for_training(model, strategy, torch.bfloat16)
    trains = {id(p) for p in strategy.optimizer_parameters(model)}  # gradual: all, from the start
    for p in model.parameters():
        assert p.dtype == (torch.float32 if id(p) in trains else torch.bfloat16)
        if id(p) in trains:  # never rounded through bf16 on the way
            assert torch.equal(p, before[id(p)])
    if model_name == "gpt2-tied":
        assert model.output_head().weight is model.input_embeddings().weight  # cast or not, still one
    _check_trains_exactly(model, strategy, tokenizer, EXPECTED[name](model), autocast=torch.bfloat16)


def test_lora_restore_errors(tokenizer, tmp_path: Path) -> None:
    model, strategy = _lora_model(tokenizer)
    with pytest.raises(UserError, match="holds no LoRA adapter"):
        strategy.restore(model, tmp_path)
    model.save(tmp_path / "ckpt")
    other, other_strategy = _lora_model(tokenizer, rank=2)
    with pytest.raises(UserError, match="does not fit freeze.rank=2"):
        other_strategy.restore(other, tmp_path / "ckpt")
