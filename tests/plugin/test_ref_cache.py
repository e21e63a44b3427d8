"""The on-disk cache of precomputed reference log-probs: a run with the same reference model, data and
tokenisation reads it and runs no reference forward; changing any of them misses it."""

from __future__ import annotations

import json

import pytest
import torch

from axolotl_dpop import ref_cache
from tests.axolotl_runner import write_pairs
from tests.dpop_trainers import make_trainer


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    path = write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", n=6)
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def reference_forwards(monkeypatch):
    """Counts the reference passes over a dataset (the work the cache saves)."""
    from axolotl_dpop.trainer import DPOPTrainer

    calls = []
    original = DPOPTrainer._run_reference_pass

    def counting(self, dataset, name, batch_size):
        calls.append(name)
        return original(self, dataset, name, batch_size)

    monkeypatch.setattr(DPOPTrainer, "_run_reference_pass", counting)
    return calls


def _precompute(tmp_path, model_dir, rows, cache, **kwargs):
    trainer = make_trainer(tmp_path, model_dir, rows, chunked=True, precompute=True, cache_dir=cache, **kwargs)
    return trainer, torch.tensor(trainer.train_dataset["ref_chosen_logps"])


def test_same_key_hits_and_every_component_misses(tmp_path, tiny_model_dir, rows, reference_forwards):
    cache = tmp_path / "cache"
    _, first = _precompute(tmp_path, tiny_model_dir, rows, cache)
    assert reference_forwards == ["train"] and len(list(cache.glob("*.safetensors"))) == 1

    _, again = _precompute(tmp_path, tiny_model_dir, rows, cache)
    assert reference_forwards == ["train"], "same reference model, data and tokenisation: no reference forward"
    assert torch.equal(again, first)

    def bump(model):
        with torch.no_grad():
            model.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3

    changed_row = [dict(rows[0], chosen=rows[0]["chosen"] + " Sure."), *rows[1:]]
    misses = {
        "weights": {"edit_model": bump},
        "data": {"rows": changed_row},
        "sequence_len (truncation)": {"max_length": 40},
    }
    for what, change in misses.items():
        kwargs = {"rows": rows, **change}
        before = len(reference_forwards)
        _, values = _precompute(tmp_path, tiny_model_dir, cache=cache, **kwargs)
        assert len(reference_forwards) == before + 1, f"changing the {what} must miss the cache"
        assert len(values) == len(rows)
    assert len(list(cache.glob("*.safetensors"))) == 1 + len(misses)


def test_chat_template_changes_the_key(tiny_model_dir):
    """Conversational rows go through the tokenizer's chat template: another template, other ids, other key."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    rows = [
        {
            "prompt": [{"role": "user", "content": "What is 2 + 2?"}],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5"}],
        }
    ]
    digests = []
    for template in (None, "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"):
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        if template:
            tokenizer.chat_template = template
        ids = {
            key: tokenizer.apply_chat_template(
                rows[0]["prompt"] + (rows[0][key] if key != "prompt" else []), tokenize=True, return_dict=False
            )
            for key in ("prompt", "chosen", "rejected")
        }
        dataset = Dataset.from_list(
            [{"prompt_ids": ids["prompt"], "chosen_ids": ids["chosen"], "rejected_ids": ids["rejected"]}]
        )
        digests.append(ref_cache.dataset_digest(dataset))
    assert digests[0] != digests[1]


def test_peft_wrapping_and_adapter_weights_do_not_change_the_reference_digest(tiny_model_dir):
    """With LoRA the reference is the base model with the adapter disabled: same base, same digest."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    wrapped = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, target_modules=["q_proj", "lm_head"], lora_dropout=0.0),
    )
    digest = ref_cache.weights_digest(ref_cache.reference_tensors(plain))
    assert ref_cache.weights_digest(ref_cache.reference_tensors(wrapped, ("default",))) == digest
    assert ref_cache.weights_digest(ref_cache.reference_tensors(wrapped)) != digest  # adapter kept: differs


def test_a_cache_file_for_another_row_count_is_ignored(tmp_path):
    path = tmp_path / "k.safetensors"
    ref_cache.save(path, torch.zeros(3), torch.ones(3), "key")
    assert ref_cache.load(path, 3, "key") is not None and ref_cache.load(path, 4, "key") is None


# --- issue 22: a cache file is verified when read back, never trusted ---------------------------------------------


def _spoil_nan(path, key):
    ref_cache.save(path, torch.full((6,), float("nan")), torch.zeros(6), key)  # right key, NaN values


def _spoil_truncate(path, key):
    path.write_bytes(path.read_bytes()[:-7])


def _spoil_key(path, key):
    ref_cache.save(path, torch.zeros(6), torch.zeros(6), key.replace('"format"', '"other"'))  # another run's file


@pytest.mark.parametrize("spoil", [_spoil_nan, _spoil_truncate, _spoil_key], ids=["nan", "truncated", "other-key"])
def test_a_spoilt_cache_file_is_recomputed_saying_so(tmp_path, tiny_model_dir, rows, reference_forwards, spoil, caplog):
    cache = tmp_path / "cache"
    _, first = _precompute(tmp_path, tiny_model_dir, rows, cache)
    [path] = cache.glob("*.safetensors")
    key = _stored_key(path)
    spoil(path, key)
    with caplog.at_level("WARNING"):
        _, again = _precompute(tmp_path, tiny_model_dir, rows, cache)
    assert reference_forwards == ["train", "train"], "the spoilt file must not be used"
    assert torch.equal(again, first) and torch.isfinite(again).all()
    assert (
        f"reference log-prob cache {path}" in caplog.text and "computing the reference log-probs again" in caplog.text
    )
    assert ref_cache.load(path, len(rows), key) is not None  # replaced by a good file


def _stored_key(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return handle.metadata()["key"]


def test_reference_log_probs_that_are_not_finite_stop_the_run_before_training(tmp_path, tiny_model_dir, rows):
    def poison(model):
        with torch.no_grad():
            model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")

    cache = tmp_path / "cache"
    with pytest.raises(
        ValueError, match=r"reference log-probs of 6 of 6 train pairs are not finite .*Nothing was cached"
    ):
        _precompute(tmp_path, tiny_model_dir, rows, cache, edit_model=poison)
    assert not cache.exists() or not list(cache.iterdir())


def test_two_writers_of_one_cache_file_never_leave_a_mix(tmp_path):
    """Each save writes a whole file under a temporary name and renames it: a reader sees one writer's values."""
    import threading

    path, stop, seen = tmp_path / "k.safetensors", threading.Event(), []
    values = {float(v): (torch.full((4096,), float(v)), torch.full((4096,), -float(v))) for v in (1, 2)}

    def write(value):
        while not stop.is_set():
            ref_cache.save(path, *values[value], "key")

    writers = [threading.Thread(target=write, args=(v,)) for v in values]
    for writer in writers:
        writer.start()
    try:
        while len(seen) < 200:
            loaded = ref_cache.load(path, 4096, "key")
            if loaded is not None:
                seen.append(loaded)
    finally:
        stop.set()
        for writer in writers:
            writer.join()
    for chosen, rejected in seen:
        value = chosen[0].item()
        assert torch.equal(chosen, values[value][0]) and torch.equal(rejected, values[value][1])
