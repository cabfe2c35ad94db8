"""Your own model and your own facts: the central experiment on Hugging Face causal LMs that
halluc did not train, with the knowledge categories found by the SliCK probe."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, run_cli
from foreign_models import save_tiny_model

# Small and quick: a dozen countries, k-shot question prompts, few samples, a few steps.
FAST = [
    "data=kbqa_tiny", "data.max_subjects=12", "data.finetune_size=6", "data.valid_size=2", "data.test_size=4",
    "probe.prompts=questions", "probe.exemplar_sets=2", "probe.shots=2", "probe.num_samples=2",
    "probe.max_new_tokens=3", "train.max_steps=3", "train.eval_every=3", "train.save_every=3",
    "train.progress=false",
]
# A random model knows nothing: every fact is Unknown, so the sets are drawn from that category.
ALL_UNKNOWN = ["data.known_from=probe", "data.unknown_fraction=1.0"]


@pytest.fixture(scope="session")
def foreign_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random model of each architecture, saved with its tokenizer."""
    root = tmp_path_factory.mktemp("foreign")
    return {name: save_tiny_model(root / name, name) for name in ("gpt2", "llama", "qwen2", "gpt_neox", "mistral")}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("architecture", ["gpt2", "llama", "qwen2", "gpt_neox", "mistral"])
def test_finetune_generate_and_score_a_foreign_model(
    architecture: str, foreign_models: dict[str, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    run = tmp_path / "run"
    freeze = {"llama": ["freeze=lora"], "gpt_neox": ["freeze=lora"], "mistral": ["freeze=layers",
              "freeze.trainable_layers=1"], "qwen2": ["freeze=embeddings"]}.get(architecture, [])
    result = run_cli("finetune", f"ckpt={foreign_models[architecture]}", *FAST, *ALL_UNKNOWN, *freeze,
                     f"probe.cache_dir={cache}", f"hydra.run.dir={run}")
    assert result.exit_code == 0, result.stderr + result.stdout
    categories = _jsonl(run / "categories.jsonl")
    assert len(categories) == 36 and {"subject", "relation", "category"} <= set(categories[0])
    finetune_set = _jsonl(run / "qa" / "finetune.jsonl")
    assert len(finetune_set) == 6 and all(e["category"] == "Unknown" and not e["known"] for e in finetune_set)
    scores = json.loads((run / "eval" / "final" / "scores.json").read_text())
    assert set(scores["by_category"]) == {"Unknown"}
    # The fine-tuned model is a halluc run now: generate answers its test sets, score gathers it.
    answered = run_cli("generate", f"ckpt={run}", f"hydra.run.dir={tmp_path / 'gen'}")
    assert answered.exit_code == 0, answered.stderr
    records = _jsonl(tmp_path / "gen" / "predictions.jsonl")
    assert records and all(r["category"] == "Unknown" for r in records)
    scored = run_cli("score", f"runs={run}", f"hydra.run.dir={tmp_path / 'score'}")
    assert scored.exit_code == 0, scored.stderr
    assert "Unknown_accuracy_mean" in (tmp_path / "score" / "summary.csv").read_text().splitlines()[0]
    verified = run_cli("score", f"predictions={tmp_path / 'gen' / 'predictions.jsonl'}", "mitigation=kb_verify",
                       f"hydra.run.dir={tmp_path / 'verified'}")
    assert verified.exit_code == 0, verified.stderr
    verified_scores = json.loads((tmp_path / "verified" / "scores.json").read_text())
    assert set(verified_scores["mean"]["after"]["by_category"]) == {"Unknown"}


def test_a_llama_prompt_starts_with_its_bos_and_a_gpt2_prompt_with_nothing(foreign_models: dict[str, Path]) -> None:
    from halluc_cli.data.tokenizer import load_tokenizer, prompt_ids

    llama, gpt2 = load_tokenizer(foreign_models["llama"]), load_tokenizer(foreign_models["gpt2"])
    assert prompt_ids(llama, "Q: hi A:")[0] == llama.bos_token_id
    assert prompt_ids(llama, "Q: hi A:")[1:] == llama("Q: hi A:", add_special_tokens=False)["input_ids"]
    assert prompt_ids(gpt2, "Q: hi A:") == gpt2("Q: hi A:", add_special_tokens=False)["input_ids"]


def test_generate_answers_a_qa_file_with_a_foreign_model(foreign_models: dict[str, Path], tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({
        "id": "1", "question": "What is the capital of France?", "answer": "Paris", "aliases": [],
        "subject": "France", "relation": "capital", "known": True, "split": "test",
    }) + "\n")
    result = run_cli("generate", f"ckpt={foreign_models['qwen2']}", f"questions=[{questions}]",
                     "decoding.max_new_tokens=3", f"hydra.run.dir={tmp_path / 'gen'}")
    assert result.exit_code == 0, result.stderr
    assert len(_jsonl(tmp_path / "gen" / "predictions.jsonl")) == 1
    without = run_cli("generate", f"ckpt={foreign_models['qwen2']}", f"hydra.run.dir={tmp_path / 'gen2'}")
    assert_one_line_error(without, "has no test sets", "questions=<QA JSONL file>")
    assert not (tmp_path / "gen2").exists()


# --- the probe on a model whose knowledge is known ------------------------------------------


def test_the_probe_finds_what_a_halluc_model_read(knowing_run, tmp_path: Path) -> None:
    """The knowing run's model read the facts of half of its made-up countries: probed as a
    foreign model (its split unread), the known facts come out Known and the others Unknown."""
    run = tmp_path / "run"
    result = run_cli(
        "finetune", f"ckpt={knowing_run.path}", *knowing_run.data_overrides, "data.known_from=probe",
        "data.finetune_size=2", "data.valid_size=2", "data.test_size=2", "data.unknown_fraction=0.5",
        "probe.num_samples=4", f"probe.cache_dir={tmp_path / 'cache'}", "train.max_steps=2", "train.eval_every=2",
        "train.progress=false", f"hydra.run.dir={run}",
    )
    assert result.exit_code == 0, result.stderr + result.stdout
    known = set(json.loads((knowing_run.path / "kb_split.json").read_text())["known"])
    categories = {r["subject"]: r["category"] for r in _jsonl(run / "categories.jsonl")}
    assert set(categories) == {subject for subject, _ in knowing_run.facts}
    for subject, category in categories.items():
        assert (category != "Unknown") == (subject in known), (subject, category)
    assert {"test_unknown"} <= {p.stem for p in (run / "qa").glob("test*.jsonl")}


def test_a_sweep_probes_a_model_once(foreign_models: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = ["finetune", f"ckpt={foreign_models['gpt2']}", *FAST, *ALL_UNKNOWN, f"probe.cache_dir={cache}"]
    first = run_cli(*args, "seed=1", f"hydra.run.dir={tmp_path / 'a'}")
    second = run_cli(*args, "seed=2", f"hydra.run.dir={tmp_path / 'b'}")
    assert first.exit_code == second.exit_code == 0, first.stderr + second.stderr
    assert "read back from" not in first.stdout and "read back from" in second.stdout
    assert (tmp_path / "a" / "categories.jsonl").read_text() == (tmp_path / "b" / "categories.jsonl").read_text()
    assert len(list(cache.glob("*.jsonl"))) == 1
    # Other probe settings, or another model, probe again.
    third = run_cli(*args, "probe.num_samples=1", f"hydra.run.dir={tmp_path / 'c'}")
    assert third.exit_code == 0 and "read back from" not in third.stdout
    other = save_tiny_model(tmp_path / "other", "gpt2", seed=1)
    fourth = run_cli("finetune", f"ckpt={other}", *FAST, *ALL_UNKNOWN, f"probe.cache_dir={cache}",
                     f"hydra.run.dir={tmp_path / 'd'}")
    assert fourth.exit_code == 0 and "read back from" not in fourth.stdout


# --- your own facts ---------------------------------------------------------------------------


def _write_qa_file(path: Path, count: int = 12) -> Path:
    rows = [
        {"question": f"Who wrote book {i}?", "answer": f"Author{i}", "aliases": [f"A. {i}"],
         "subject": f"Book{i}", "relation": "author"}
        for i in range(count)
    ]
    if path.suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["question", "answer", "aliases", "subject", "relation"])
            writer.writeheader()
            writer.writerows({**row, "aliases": "|".join(row["aliases"])} for row in rows)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_finetune_on_a_user_qa_file(suffix: str, foreign_models: dict[str, Path], tmp_path: Path) -> None:
    facts = _write_qa_file(tmp_path / f"facts{suffix}")
    run = tmp_path / "run"
    result = run_cli(
        "finetune", f"ckpt={foreign_models['gpt2']}", "data=qa_file", f"data.path={facts}",
        "data.finetune_size=6", "data.valid_size=2", "data.test_size=4", "data.unknown_fraction=1.0",
        "probe.exemplar_sets=2", "probe.shots=2", "probe.num_samples=1", "probe.max_new_tokens=3",
        f"probe.cache_dir={tmp_path / 'cache'}", "train.max_steps=2", "train.eval_every=2", "train.progress=false",
        f"hydra.run.dir={run}",
    )
    assert result.exit_code == 0, result.stderr + result.stdout
    finetune_set = _jsonl(run / "qa" / "finetune.jsonl")
    assert finetune_set[0]["relation"] == "author" and finetune_set[0]["aliases"][0].startswith("A. ")
    assert (run / "qa" / "test_unknown.jsonl").is_file()


# --- bad inputs: one line, exit 2, nothing written --------------------------------------------


def test_known_from_split_needs_a_halluc_pretrained_model(foreign_models: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli("finetune", f"ckpt={foreign_models['gpt2']}", *FAST, f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(result, "was not pretrained by halluc", "data.known_from=probe")
    assert not (tmp_path / "run").exists()


def test_a_model_without_a_tokenizer_is_refused(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "model", "llama", tokenizer=False)
    result = run_cli("finetune", f"ckpt={model}", *FAST, *ALL_UNKNOWN, f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(result, "no tokenizer could be loaded", "tokenizer.save_pretrained")
    assert not (tmp_path / "run").exists()


def test_an_encoder_only_model_is_refused(foreign_models: dict[str, Path], tmp_path: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    bert = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=700, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(bert)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # a tokenizer, so the model is what fails
        shutil.copy(foreign_models["gpt2"] / name, bert / name)
    result = run_cli("finetune", f"ckpt={bert}", *FAST, *ALL_UNKNOWN, f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(result, "not a causal (decoder-only) language model (BertForMaskedLM)")
    assert not (tmp_path / "run").exists()


def test_a_qa_file_with_a_missing_field_is_refused(foreign_models: dict[str, Path], tmp_path: Path) -> None:
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps({"question": "Who?", "answer": "Me"}) + "\n" + json.dumps({"question": "Why?"}) + "\n")
    result = run_cli("finetune", f"ckpt={foreign_models['gpt2']}", "data=qa_file", f"data.path={facts}",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(result, "facts.jsonl line 2: missing field 'answer'")
    assert not (tmp_path / "run").exists()


def test_a_relation_with_too_few_facts_for_the_shots_is_refused(
    foreign_models: dict[str, Path], tmp_path: Path
) -> None:
    facts = _write_qa_file(tmp_path / "facts.jsonl", count=3)
    result = run_cli("finetune", f"ckpt={foreign_models['gpt2']}", "data=qa_file", f"data.path={facts}",
                     "probe.shots=4", f"probe.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(result, "relation 'author' has 3 fact(s), too few for probe.shots=4")
    assert not (tmp_path / "run").exists()


# --- a killed run resumes; what review found ------------------------------------------------


def test_a_killed_probe_run_resumes_on_its_sets_and_categories(foreign_models: dict[str, Path], tmp_path: Path) -> None:
    from cli_helpers import assert_same_weights, run_killed_at_step

    args = ["finetune", f"ckpt={foreign_models['llama']}", *FAST, *ALL_UNKNOWN, "train.max_steps=4",
            "train.save_every=2", "train.eval_every=2", f"probe.cache_dir={tmp_path / 'cache'}"]
    run_killed_at_step(3, *args, f"hydra.run.dir={tmp_path / 'killed'}")
    sets = {p.name: p.read_text() for p in (tmp_path / "killed" / "qa").iterdir()}
    assert json.loads(sets["sets.json"]) == ["finetune", "valid", "test_unknown"]
    resumed = run_cli(*args, f"hydra.run.dir={tmp_path / 'killed'}")
    assert resumed.exit_code == 0 and "resuming from" in resumed.stdout, resumed.stderr
    assert {p.name: p.read_text() for p in (tmp_path / "killed" / "qa").iterdir()} == sets
    whole = run_cli(*args, f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.exit_code == 0, whole.stderr
    assert_same_weights(tmp_path / "killed", tmp_path / "whole")


def test_a_model_with_only_pickled_weights_is_refused(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = save_tiny_model(tmp_path / "model", "gpt2")
    AutoModelForCausalLM.from_pretrained(model).save_pretrained(model, safe_serialization=False)
    (model / "model.safetensors").unlink()
    result = run_cli("finetune", f"ckpt={model}", *FAST, *ALL_UNKNOWN, f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(result, "holds no safetensors weights", "never does")
    assert not (tmp_path / "run").exists()


def test_trust_remote_code_is_recorded_with_the_checkpoint(foreign_models: dict[str, Path], tmp_path: Path) -> None:
    from halluc_cli.models import load_model, open_model
    from halluc_cli.models.base import read_family

    model = open_model(str(foreign_models["gpt2"]), trust_remote_code=True)
    model.save(tmp_path / "saved")
    assert read_family(tmp_path / "saved")["trust_remote_code"] is True
    assert load_model(tmp_path / "saved").trust_remote_code is True
    open_model(str(foreign_models["gpt2"])).save(tmp_path / "plain")
    assert "trust_remote_code" not in read_family(tmp_path / "plain")


def test_finetune_category_needs_the_probe(transformer_run: Path, tmp_path: Path) -> None:
    result = run_cli("finetune", f"ckpt={transformer_run}", *FAST, "data.finetune_category=Unknown",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(result, "data.finetune_category needs data.known_from=probe")


def test_a_fact_asked_twice_in_a_qa_file_is_one_fact(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from halluc_cli.config import QAFileConfig
    from halluc_cli.data.categories import read_user_qa_file

    facts = tmp_path / "facts.jsonl"
    rows = [{"question": "Who wrote Emma?", "answer": "Jane Austen", "subject": "Emma", "relation": "author"},
            {"question": "Emma was written by whom?", "answer": "jane austen", "aliases": ["Austen"],
             "subject": "Emma", "relation": "author"}]
    facts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (example,) = read_user_qa_file(OmegaConf.structured(QAFileConfig(path=str(facts))))
    assert example.question == "Who wrote Emma?" and example.aliases == ["Austen"]


def test_the_probe_cache_key_follows_an_interpolated_seed() -> None:
    from omegaconf import OmegaConf

    from halluc_cli.config import KBQAConfig, ProbeConfig
    from halluc_cli.probe import _cache_key

    keys = set()
    for seed in (1, 2):
        root = OmegaConf.create({"seed": seed, "probe": OmegaConf.structured(ProbeConfig()),
                                 "data": OmegaConf.structured(KBQAConfig())})
        root.probe.seed = "${seed}"
        keys.add(_cache_key([], root.probe, root.data, "model"))
    assert len(keys) == 2


def test_a_prompt_past_the_position_table_is_one_line(transformer_run: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(" ".join(["the"] * 2000) + "\n")
    result = run_cli("generate", f"ckpt={transformer_run}", f"prompts={prompts}", f"hydra.run.dir={tmp_path / 'gen'}")
    assert_one_line_error(result, "exceeds the model's", "positions")


def test_a_hub_model_is_known_by_its_name_and_commit() -> None:
    from halluc_cli.probe import model_identity

    assert model_identity("org/model", "abc") != model_identity("org/model", "def")
    assert model_identity("org/model", "abc") == model_identity("org/model", "abc")


def test_export_gives_a_plain_hugging_face_model(transformer_run: Path, tmp_path: Path) -> None:
    from cli_helpers import import_script

    from halluc_cli.commands.common import resolve_model

    import_script("export_hf_model").export(transformer_run / "checkpoint", tmp_path / "model")
    assert not (tmp_path / "model" / "halluc_model.json").exists()
    assert resolve_model(str(tmp_path / "model")).foreign  # nothing in it says halluc made it
