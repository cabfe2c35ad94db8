"""Batched decoding: a batch of mixed-length prompts decodes exactly as each prompt alone."""

from __future__ import annotations

import pytest
import torch

from halluc_cli.config import DecodingConfig, LSTMConfig, SampleDecodingConfig, TokenizerConfig, TransformerConfig
from halluc_cli.data.tokenizer import train_tokenizer
from halluc_cli.decoding import Decoder, _left_pad, _top_p_filter
from halluc_cli.models import build_model

LINES = [f"the capital of country{i} is city{i} ." for i in range(40)]
PROMPTS = ["the capital of country3 is", "country7", "the capital of", "is city9 . the capital of country1 is"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(LINES, TokenizerConfig(kind="word"))


MODELS = [
    LSTMConfig(hidden_dim=16, num_layers=2, dropout=0.0),
    TransformerConfig(hidden_dim=16, num_layers=2, num_heads=2, max_positions=64),
    TransformerConfig(architecture="llama", hidden_dim=16, num_layers=2, num_heads=2, max_positions=64),
]


@pytest.mark.parametrize("cfg", MODELS, ids=["lstm", "gpt2", "llama"])
def test_batch_equals_one_by_one(cfg, tokenizer) -> None:
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer)
    decoding = DecodingConfig(max_new_tokens=6, stop_at_newline=False)
    batched = Decoder(model, tokenizer, decoding).generate(PROMPTS)
    alone = [Decoder(model, tokenizer, decoding).generate([p])[0] for p in PROMPTS]
    assert batched == alone
    assert any(outputs[0] for outputs in batched)  # an untrained model still says something


@pytest.mark.parametrize("cfg", MODELS[:2], ids=["lstm", "gpt2"])
def test_decoding_with_the_cache_equals_recomputing_the_whole_sequence(cfg, tokenizer) -> None:
    torch.manual_seed(1)
    model = build_model(cfg, tokenizer).eval()
    decoding = DecodingConfig(max_new_tokens=5, stop_at_newline=False)
    cached = Decoder(model, tokenizer, decoding).generate([PROMPTS[0]])[0][0]
    ids = tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    for _ in range(5):  # the naive way: the whole sequence again at every step
        logits, _ = model(torch.tensor([ids]))
        next_id = int(logits[0, -1].argmax())
        if next_id == tokenizer.eos_token_id:
            break
        ids.append(next_id)
    prompt_length = len(tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"])
    assert cached == tokenizer.decode(ids[prompt_length:]).strip()


@pytest.mark.parametrize("cfg", MODELS, ids=["lstm", "gpt2", "llama"])
def test_logits_to_keep_gives_the_last_positions_of_all_logits(cfg, tokenizer) -> None:
    torch.manual_seed(2)
    model = build_model(cfg, tokenizer).eval()
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    input_ids, mask = _left_pad(ids, tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        for attention_mask in (mask, None):  # left padding (the LSTM packs it), and none
            every, _ = model(input_ids, None, attention_mask)
            for keep in (1, 3):
                kept, _ = model(input_ids, None, attention_mask, logits_to_keep=keep)
                assert kept.shape == (len(PROMPTS), keep, len(tokenizer))
                assert torch.allclose(kept, every[:, -keep:], atol=1e-6)


def test_lstm_decoding_steps_equal_one_long_pass(tokenizer) -> None:
    # Without gradients a one-token step runs the LSTM cell directly, not nn.LSTM.
    torch.manual_seed(5)
    model = build_model(MODELS[0], tokenizer).eval()
    ids = torch.randint(0, len(tokenizer), (3, 7))
    with torch.no_grad():
        whole, _ = model(ids)
        logits, state = model(ids[:, :3])
        steps = [logits]
        for position in range(3, 7):
            logits, state = model(ids[:, position : position + 1], state, use_cache=True)
            steps.append(logits)
    assert torch.allclose(torch.cat(steps, dim=1), whole, atol=1e-6)


@pytest.mark.parametrize("cfg", MODELS[:2], ids=["lstm", "gpt2"])
def test_rows_of_a_batch_stop_at_their_own_stop_token(cfg, tokenizer) -> None:
    torch.manual_seed(4)
    model = build_model(cfg, tokenizer)
    decoding = DecodingConfig(max_new_tokens=8, stop_at_newline=False)
    free = Decoder(model, tokenizer, decoding)
    free.stop_ids = torch.empty(0, dtype=torch.long)  # never stops: the whole 8 tokens
    unstopped = [outputs[0] for outputs in free.generate(PROMPTS)]
    words = unstopped[0].split()
    # The first word of the first row's answer that is not its first: that row stops there,
    # past its first token; the others where the word comes, if ever.
    stop_word = next(word for word in words if word != words[0])
    decoder = Decoder(model, tokenizer, decoding)
    decoder.stop_ids = torch.tensor([tokenizer.convert_tokens_to_ids(stop_word)])
    batched = [outputs[0] for outputs in decoder.generate(PROMPTS)]
    alone = [decoder.generate([p])[0][0] for p in PROMPTS]
    assert batched == alone
    expected = [" ".join(row.split()[: row.split().index(stop_word)]) if stop_word in row.split() else row for row in unstopped]
    assert batched == expected
    assert batched[0] == " ".join(words[: words.index(stop_word)]) != ""
    assert len({len(row.split()) for row in batched}) > 1  # the rows stopped at different steps


def test_sampling_is_seeded_and_gives_num_samples(tokenizer) -> None:
    model = build_model(MODELS[1], tokenizer)
    decoding = SampleDecodingConfig(num_samples=3, temperature=1.5, max_new_tokens=4)
    first = Decoder(model, tokenizer, decoding, seed=5).generate(PROMPTS[:2])
    assert [len(samples) for samples in first] == [3, 3]
    assert first == Decoder(model, tokenizer, decoding, seed=5).generate(PROMPTS[:2])


def test_stops_at_end_of_sequence(tokenizer) -> None:
    model = build_model(MODELS[1], tokenizer)
    with torch.no_grad():  # make <eos> the likeliest next token everywhere
        model.hf.lm_head.weight.zero_()
        model.hf.lm_head.weight[tokenizer.eos_token_id] = 1.0
        model.hf.transformer.ln_f.bias.fill_(1.0)
    assert Decoder(model, tokenizer, DecodingConfig()).generate(PROMPTS) == [[""]] * len(PROMPTS)


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(_top_p_filter(logits, 0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(_top_p_filter(logits, 0.1)).tolist() == [[True, False, False, False]]


def test_greedy_refuses_sampling_settings_at_composition() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    from halluc_cli.config import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        with pytest.raises(ConfigCompositionException, match="decoding.num_samples"):
            compose(config_name="generate", overrides=["ckpt=some/run", "decoding.num_samples=2"])
        sampled = compose(config_name="generate", overrides=["ckpt=some/run", "decoding=sample", "decoding.num_samples=2"])
    assert sampled.decoding.num_samples == 2 and sampled.decoding.temperature == 0.5


# --- a prompt's greedy and sampled rows from one pass over it (SliCK's probe) ----------------


@pytest.mark.parametrize("cfg", MODELS, ids=["lstm", "gpt2", "llama"])
def test_the_greedy_row_of_shared_decoding_equals_plain_greedy_decoding(cfg, tokenizer) -> None:
    torch.manual_seed(6)
    model = build_model(cfg, tokenizer)
    sample = SampleDecodingConfig(num_samples=3, temperature=1.5, max_new_tokens=6, batch_size=3, stop_at_newline=False)
    shared = Decoder(model, tokenizer, sample).generate_with_greedy(PROMPTS)  # batches of 3 and 1 prompts
    greedy = Decoder(model, tokenizer, DecodingConfig(max_new_tokens=6, batch_size=3, stop_at_newline=False))
    assert [len(rows) for rows in shared] == [4] * len(PROMPTS)
    assert [rows[0] for rows in shared] == [outputs[0] for outputs in greedy.generate(PROMPTS)]


@pytest.mark.parametrize("cfg", MODELS[:2], ids=["lstm", "gpt2"])
def test_shared_samples_are_seeded_and_differ_across_rows(cfg, tokenizer) -> None:
    torch.manual_seed(7)
    model = build_model(cfg, tokenizer)
    sample = SampleDecodingConfig(num_samples=4, temperature=2.0, max_new_tokens=4, stop_at_newline=False)
    first = Decoder(model, tokenizer, sample, seed=3).generate_with_greedy(PROMPTS)
    assert first == Decoder(model, tokenizer, sample, seed=3).generate_with_greedy(PROMPTS)
    assert first != Decoder(model, tokenizer, sample, seed=4).generate_with_greedy(PROMPTS)
    assert all(len(set(rows[1:])) > 1 for rows in first)  # each row draws its own tokens


def test_greedy_first_needs_sampling(tokenizer) -> None:
    model = build_model(MODELS[1], tokenizer)
    with pytest.raises(ValueError, match="decoding=sample"):
        Decoder(model, tokenizer, DecodingConfig()).generate_with_greedy(PROMPTS)
