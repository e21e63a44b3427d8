"""Contamination check: a tiny model that memorised some texts is caught on those, not on unseen ones."""

from __future__ import annotations

import json

import pytest
import torch

from smaug.cli import main
from smaug.common.errors import UserError
from smaug.evaluation import contamination as c

SEEN = [
    "Which process changes liquid water into water vapor? evaporation",
    "Mia reads 12 pages a day. How many pages does she read in 5 days? 60 pages.",
    "The bottle could not hold all the juice because the bottle was too small.",
]
UNSEEN = [
    "A farmer has 30 cows and buys 12 more. Then he sells 7. How many cows now? 35",
    "Kevin asked Brian for help with the homework because Brian was good at algebra.",
    "Which factor explains why coastal cities have milder climates? the ocean",
]


@pytest.fixture(scope="module")
def memorised_model(tiny_model_dir, tmp_path_factory):
    """The tiny model fine-tuned with plain torch until it has memorised SEEN (about a second)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = tok(SEEN, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model.train()
    for _ in range(100):
        loss = model(**batch, labels=labels).loss
        if loss.item() < 0.3:  # memorised (about 50 steps)
            break
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    assert loss.item() < 0.3, "the model should have memorised the texts"
    out = tmp_path_factory.mktemp("memorised") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_min_k_prob_by_hand():
    logps = [-0.1, -5.0, -0.2, -3.0, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8]
    assert c.min_k_prob(logps, 0.2) == pytest.approx((-5.0 - 3.0) / 2)  # ceil(0.2 * 10) = 2 lowest
    assert c.min_k_prob(logps[:3], 0.2) == pytest.approx(-5.0)  # at least one token
    assert c.min_k_prob(logps, 1.0) == pytest.approx(sum(logps) / 10)


def test_memorised_texts_score_above_unseen(memorised_model, tiny_model_dir):
    texts = {"seen": SEEN, "unseen": UNSEEN}
    trained = c.score_texts(str(memorised_model), str(tiny_model_dir), texts, neighbours=10, dtype="float32")
    seen, unseen = trained["benchmarks"]["seen"], trained["benchmarks"]["unseen"]
    # Min-K% orders every memorised text above every unseen one ...
    assert min(seen["per_example"]["mink_model"]) > max(unseen["per_example"]["mink_model"])
    # ... and relative to the untrained reference, only the memorised texts got more likely.
    assert seen["mink_above_ref"] == 1.0 and unseen["mink_above_ref"] == 0.0
    # Neighbour test: the memorised text is easier for the target than every reference-written neighbour.
    assert seen["per_example"]["p_neighbours"] == [0.0, 0.0, 0.0]
    assert seen["score"] == 1.0 and seen["suggests_contamination"]

    # The reference scored against itself: its own samples are easier for it than the real text.
    clean = c.score_texts(str(tiny_model_dir), str(tiny_model_dir), {"seen": SEEN}, neighbours=10, dtype="float32")
    assert clean["benchmarks"]["seen"]["score"] < seen["score"]
    assert clean["benchmarks"]["seen"]["score"] <= 0.34 and not clean["benchmarks"]["seen"]["suggests_contamination"]
    assert clean["benchmarks"]["seen"]["mink_above_ref"] == 0.0  # equal, not above


def test_benchmark_texts_from_local_files(tmp_path):
    (tmp_path / "arc_challenge_test.jsonl").write_text(
        json.dumps(
            {
                "question": "What melts ice?",
                "choices": {"text": ["heat", "cold"], "label": ["A", "B"]},
                "answerKey": "A",
            }
        )
        + "\n"
    )
    (tmp_path / "winogrande_validation.jsonl").write_text(
        json.dumps(
            {
                "sentence": "The cup broke because the _ was fragile.",
                "option1": "cup",
                "option2": "table",
                "answer": "1",
            }
        )
        + "\n"
    )
    (tmp_path / "mmlu_a_test.jsonl").write_text(
        json.dumps({"question": "2+2?", "choices": ["3", "4"], "answer": 1}) + "\n"
    )
    (tmp_path / "mmlu_b_test.jsonl").write_text(
        json.dumps({"question": "1+1?", "choices": ["2", "5"], "answer": 0}) + "\n"
    )
    assert c.load_benchmark_texts("arc", tmp_path) == ["What melts ice? heat"]
    assert c.load_benchmark_texts("winogrande", tmp_path) == ["The cup broke because the cup was fragile."]
    assert c.load_benchmark_texts("mmlu", tmp_path) == ["2+2? 4", "1+1? 2"]
    with pytest.raises(UserError, match="gsm8k_test.jsonl: no such file"):
        c.load_benchmark_texts("gsm8k", tmp_path)
    (tmp_path / "gsm8k_test.jsonl").write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(UserError, match="gsm8k row 1"):
        c.load_benchmark_texts("gsm8k", tmp_path)


def test_cli_with_texts_file(memorised_model, tiny_model_dir, tmp_path, capsys):
    texts = tmp_path / "t.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in SEEN))
    out = tmp_path / "out"
    rc = main(
        [
            "eval",
            "contamination",
            "--model",
            str(memorised_model),
            "--ref",
            str(tiny_model_dir),
            "--texts",
            str(texts),
            "--name",
            "mine",
            "--neighbours",
            "4",
            "--dtype",
            "float32",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads((out / "contamination.json").read_text())
    assert data["benchmarks"]["mine"]["n"] == 3 and data["benchmarks"]["mine"]["score"] == 1.0
    assert "suggests contamination" in capsys.readouterr().out

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"txt": "x"}) + "\n")
    assert (
        main(
            [
                "eval",
                "contamination",
                "--model",
                str(memorised_model),
                "--ref",
                str(tiny_model_dir),
                "--texts",
                str(bad),
            ]
        )
        == 2
    )
    assert "row 1: field 'text'" in capsys.readouterr().err
    rc = main(
        [
            "eval",
            "contamination",
            "--model",
            str(tmp_path / "nope"),
            "--ref",
            str(tiny_model_dir),
            "--texts",
            str(texts),
        ]
    )
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_the_authors_reference_and_example_choice():
    """Issue 23.4: Llama-7B (the detector's default --ref_model) is the default reference, and the texts scored are
    the detector's: `random.seed(0); random.shuffle(data); data[:100]`."""
    import argparse
    import random

    from smaug.evaluation.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["eval", "contamination", "--model", "m"]).ref == c.REFERENCE == "huggyllama/llama-7b"
    texts = [f"question {i}" for i in range(250)]
    detector = list(texts)
    random.seed(0)
    random.shuffle(detector)
    assert c.pick_examples(texts, 100, seed=0) == detector[:100]
    assert c.pick_examples(texts[:80], 100) == texts[:80]  # fewer than asked: all, in order
