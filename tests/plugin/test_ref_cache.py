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
    ref_cache.save(path, torch.zeros(3), torch.ones(3), {"any": "thing"})
    assert ref_cache.load(path, 3) is not None and ref_cache.load(path, 4) is None
