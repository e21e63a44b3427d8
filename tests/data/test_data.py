"""`smaug data`: the paper's pair builders, their bad-input handling, the edit-distance stats and the CLI.

Fixtures in tests/fixtures/sources/ are hand-written rows in each source's real schema, bad rows included."""

from __future__ import annotations

import json
import random
import re
from decimal import Decimal
from pathlib import Path

import pytest

import smaug.cli
from smaug.common import files
from smaug.common.errors import UserError
from smaug.data.builders import BUILDERS, build_dataset, choose_eval_rows, eval_path
from smaug.data.io import report_path
from smaug.data.metamath import (
    build_metamath_pairs,
    candidates,
    perturb_number,
    split_final_answer,
)
from smaug.data.multiple_choice import build_arc_pairs, build_hellaswag_pairs
from smaug.data.stats import compute_stats, stats_for_pairs, stats_for_path
from smaug.data.synthetic import generate_synthetic_metamath

REPO = Path(__file__).resolve().parents[2]
SOURCES = REPO / "tests" / "fixtures" / "sources"
MINI = REPO / "data" / "mini"
FIXTURES = {
    "metamath": SOURCES / "metamath.jsonl",
    "arc": SOURCES / "arc_challenge.jsonl",
    "hellaswag": SOURCES / "hellaswag.jsonl",
}
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def cli(argv: list[str]) -> int:
    return smaug.cli.main(argv)


@pytest.fixture(autouse=True)
def only_data_cli(monkeypatch):
    # The CLI is exercised through smaug.cli.main, without importing the other (heavy) subcommands.
    monkeypatch.setattr(smaug.cli, "FLOWS", ["data"])


# --- MetaMath -----------------------------------------------------------------------------------------


BAD_ROWS = {"empty:response": 1, "malformed_answer": 1, "missing_field:query": 1, "missing_field:response": 1}


def test_metamath_fixture_pairs_and_skip_reasons():
    rows = read_jsonl(FIXTURES["metamath"])
    report = {}
    pairs, skipped = build_metamath_pairs(rows, seed=0, report=report)
    # Every well-formed row gets a pair (the released set's one pair per row); only a body without a number cannot.
    assert len(pairs) == 8
    assert skipped == {**BAD_ROWS, "no_number_in_body": 1}
    assert report == {"corrupted": {"intermediate": 5, "final_calculation": 1, "result": 1, "any_number": 1}}
    assert all(set(p) == {"prompt", "chosen", "rejected"} for p in pairs)
    strict, strict_skipped = build_metamath_pairs(rows, seed=0, fallback=False)
    assert len(strict) == 5 and strict_skipped == {**BAD_ROWS, "no_intermediate_calculation": 4}
    # The rows both rules pair are corrupted identically: the fallback only adds rows.
    assert strict == [p for p in pairs if p["chosen"] in {q["chosen"] for q in strict}]


def test_metamath_fallback_kinds_never_touch_the_final_answer_lines():
    by_query = {r.get("query"): r["response"] for r in read_jsonl(FIXTURES["metamath"]) if r.get("response")}
    cases = {  # query -> (kind, the numbers it may change)
        "There are 3 bags with 4 apples each. How many apples are there?": ("final_calculation", {"12"}),
        "Simplify $\\frac{6}{8}$.": ("result", {"3", "4"}),
        "How many sides do two triangles have in total?": ("any_number", {"3", "6"}),
    }
    for query, (kind, changeable) in cases.items():
        body, answer = split_final_answer(by_query[query])
        found_kind, found = candidates(body, Decimal(answer) if answer.isdigit() else None)
        assert found_kind == kind and {m.group("num") for m in found} == changeable
        for seed in range(8):
            (pair,), _ = build_metamath_pairs([{"query": query, "response": by_query[query]}], seed=seed)
            chosen, rejected = pair["chosen"], pair["rejected"]
            old, new = NUMBER.findall(chosen), NUMBER.findall(rejected)
            diff = [i for i, (a, b) in enumerate(zip(old, new)) if a != b]
            assert len(old) == len(new) and len(diff) == 1 and old[diff[0]] in changeable
            assert split_final_answer(rejected)[1] == answer and rejected.endswith(f"The answer is: {answer}")
    assert candidates("Two odd numbers make an even one.\n", None) == ("", [])
    assert candidates("x = 5 because 2 + 3 is 5.\n", Decimal(5), fallback=False) == ("", [])


@pytest.mark.parametrize("seed", range(6))
def test_metamath_exactly_one_intermediate_result_differs(seed):
    rows = read_jsonl(FIXTURES["metamath"]) + generate_synthetic_metamath(40, seed=seed)
    pairs, _ = build_metamath_pairs(rows, seed=seed, fallback=False)
    assert len(pairs) >= 40
    for pair in pairs:
        chosen, rejected = pair["chosen"], pair["rejected"]
        old_nums, new_nums = NUMBER.findall(chosen), NUMBER.findall(rejected)
        assert len(old_nums) == len(new_nums)
        diff = [i for i, (a, b) in enumerate(zip(old_nums, new_nums)) if a != b]
        assert len(diff) == 1, (chosen, rejected)
        # Everything around the changed number is identical, and the number is a result after "=".
        spans = [m.span() for m in NUMBER.finditer(chosen)]
        start, end = spans[diff[0]]
        new = new_nums[diff[0]]
        assert rejected == chosen[:start] + new + chosen[end:]
        assert re.search(r"=[ \t]*(\\?\$)?[ \t]*$", chosen[:start])
        body, answer = split_final_answer(chosen)
        assert start < len(body), "the final answer line must not be touched"
        assert split_final_answer(rejected)[1] == answer
        old_value = Decimal(old_nums[diff[0]].replace(",", ""))
        new_value = Decimal(new.replace(",", ""))
        assert old_value != Decimal(answer.replace(",", "")), "the final calculation is not intermediate"
        assert new_value not in (old_value, Decimal(answer.replace(",", "")))
        # Same shape: integers stay integers, decimals keep their places.
        assert ("." in old_nums[diff[0]]) == ("." in new)
        if "." in new:
            assert len(new.split(".")[1]) == len(old_nums[diff[0]].split(".")[1])


def test_metamath_paper_example_corrupts_only_the_47():
    row = read_jsonl(FIXTURES["metamath"])[0]
    body, answer = split_final_answer(row["response"])
    assert answer == "752"
    assert [m.group("num") for m in candidates(body, Decimal(answer), fallback=False)[1]] == ["47"]
    for seed in range(5):
        (pair,), _ = build_metamath_pairs([row], seed=seed)
        assert "$6.80 = 47." not in pair["rejected"]
        assert "16 * $47 = $752." in pair["rejected"] and pair["rejected"].endswith("#### 752\nThe answer is: 752")


def test_metamath_candidate_rule():
    body = (
        "Tom has 2 boxes with 8 marbles each, so 2 * 8 = 16 marbles. He has 16 + x = 21 marbles, "
        "so 2x = 10 is wrong, and x = 21 - 16 = 5. Cost: 3 x $4.50 = $13.50, then 1,000 + 200 = 1,200 and "
        "5 - 8 = -3. Also $3 \\cdot 4 = 12$. "
    )
    found = [m.group("num") for m in candidates(body, Decimal(5), fallback=False)[1]]
    # "2x = 10": no operator on the left; "= 21 - 16": starts an expression; "= 5": the final answer.
    assert found == ["16", "21", "13.50", "1,200", "-3", "12"]


def test_perturb_number_keeps_shape():
    rng = random.Random(0)
    for text, shape in [
        ("47", r"\d+"),
        ("15.20", r"\d+\.\d\d"),
        ("4,700", r"\d{1,3}(,\d{3})*"),
        ("0.5", r"\d\.\d"),
        ("-3", r"-?\d+"),
        ("0", r"\d+"),
    ]:
        for _ in range(50):
            new = perturb_number(text, rng)
            assert re.fullmatch(shape, new), (text, new)
            assert Decimal(new.replace(",", "")) != Decimal(text.replace(",", ""))
    assert perturb_number("47", random.Random(1)) == perturb_number("47", random.Random(1))


def test_metamath_row_result_does_not_depend_on_other_rows():
    rows = generate_synthetic_metamath(30, seed=3)
    full, _ = build_metamath_pairs(rows, seed=9)
    # Dropping earlier rows must not change a later row's corruption (per-row generators, no global state).
    tail, _ = build_metamath_pairs([None] * 10 + rows[10:], seed=9)
    assert [p["rejected"] for p in tail] == [
        p["rejected"] for p in full if p["chosen"] in {r["response"] for r in rows[10:]}
    ]


# --- ARC and HellaSwag ----------------------------------------------------------------------------------


def test_arc_pairs_and_skip_reasons():
    rows = read_jsonl(FIXTURES["arc"])
    pairs, skipped = build_arc_pairs(rows)
    # 3 (A-D) + 3 (digit labels) + 4 (five choices) + 2 (three choices) + 2 (one empty wrong choice)
    assert len(pairs) == 14
    assert skipped == {
        "empty:rejected": 1,
        "malformed_answer": 1,
        "missing_field:answerKey": 1,
        "missing_field:question": 1,
    }
    digit_row = [p for p in pairs if p["prompt"].startswith("Which process in the water cycle")]
    assert {p["chosen"] for p in digit_row} == {"condensation"}
    assert {p["rejected"] for p in digit_row} == {"evaporation", "precipitation", "runoff"}


def test_arc_unusable_content_is_counted_and_wrong_types_are_refused_with_the_row():
    rows = [
        {"id": "x3", "question": "Q?", "choices": {"text": ["a", "b", "c"], "label": ["A", "B"]}, "answerKey": "A"},
        {"id": "x4", "question": "Q?", "choices": {"text": ["same", "same"], "label": ["1", "2"]}, "answerKey": "2"},
        {"id": "x5", "question": "Q?", "choices": {"text": ["", "b"], "label": ["A", "B"]}, "answerKey": "A"},
        {"id": "x6", "question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": 2},
        "not a dict",
    ]
    pairs, skipped = build_arc_pairs(rows)
    assert pairs == [{"prompt": "Q?", "chosen": "b", "rejected": "a"}]  # an integer answer key is an index
    assert skipped == {"malformed_choices": 1, "rejected_equals_chosen": 1, "empty:chosen": 1, "not_a_record": 1}
    good = {"id": "g", "question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "A"}
    for bad, message in [
        ({"question": 42}, r"row 2: `question` is a int \(42\), not text"),
        ({"choices": "A) yes B) no"}, r"row 2: `choices` is a str"),
        ({"choices": {"text": ["a", 7], "label": ["A", "B"]}}, r"row 2: `choices.text\[1\]` is a int \(7\)"),
        ({"answerKey": 1.0}, r"row 2: `answerKey` is a float"),
        ({"answerKey": True}, r"row 2: `answerKey` is a bool"),
    ]:
        with pytest.raises(UserError, match=message):
            build_arc_pairs([good, {**good, **bad}])


def test_hellaswag_pairs_and_skip_reasons():
    pairs, skipped = build_hellaswag_pairs(read_jsonl(FIXTURES["hellaswag"]), format="lm-eval")
    assert len(pairs) == 11  # 3 + 3 + 3 + 2 (one wrong ending duplicates the right one)
    assert skipped == {
        "malformed_answer": 1,
        "missing_field:ctx": 1,
        "missing_field:endings": 1,
        "rejected_equals_chosen": 1,
    }
    first = pairs[0]
    assert first["prompt"] == (
        "Removing ice from car: Then, the man writes over the snow covering the window of a car, and a woman "
        "wearing winter clothes smiles. Then"
    )
    assert first["chosen"] == ", the man continues removing the snow on his car."
    wikihow = [p for p in pairs if p["prompt"].startswith("Personal Care")]
    assert all("[" not in p["prompt"] + p["chosen"] + p["rejected"] for p in wikihow)


def test_hellaswag_raw_form_is_the_default_and_the_papers():
    rows = read_jsonl(FIXTURES["hellaswag"])
    raw, skipped = build_hellaswag_pairs(rows)
    assert raw == build_hellaswag_pairs(rows, format="raw")[0]
    lm_eval, lm_skipped = build_hellaswag_pairs(rows, format="lm-eval")
    assert len(raw) == len(lm_eval) == 11 and skipped == lm_skipped
    # The paper's example: the dataset's own ctx, ending in "smiles. then", and the ending as written.
    assert raw[0] == {"prompt": rows[0]["ctx"], "chosen": rows[0]["endings"][3], "rejected": rows[0]["endings"][0]}
    assert raw[0]["prompt"].endswith("smiles. then") and not raw[0]["prompt"].startswith("Removing ice")
    wikihow = [p for p in raw if "tattoo" in p["prompt"]]
    assert wikihow and all(p["prompt"].startswith("[header] How to get a tattoo removed") for p in wikihow)
    with pytest.raises(ValueError, match="unknown hellaswag format 'chatml'"):
        build_hellaswag_pairs(rows, format="chatml")


# --- few-shot and determinism -----------------------------------------------------------------------------


@pytest.mark.parametrize("builder", ["metamath", "arc", "hellaswag"])
def test_same_seed_same_bytes_other_seed_other_bytes(builder, tmp_path):
    outs = {}
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        out = tmp_path / f"{name}.jsonl"
        build_dataset(builder, out, source=FIXTURES[builder], seed=seed, few_shot=2, progress=False)
        outs[name] = out.read_bytes()
    assert outs["a"] == outs["b"]
    assert outs["a"] != outs["c"]


def test_few_shot_prompt_holds_k_other_solved_examples():
    rows = generate_synthetic_metamath(50, seed=0)
    pairs, _ = build_metamath_pairs(rows, seed=0, few_shot=3)
    by_response = {r["response"]: r for r in rows}
    for pair in pairs:
        query = by_response[pair["chosen"]]["query"]
        blocks = pair["prompt"].split("\n\n")
        # Responses have no blank lines, so the prompt is exactly 3 examples and the question.
        assert len(blocks) == 4 and blocks[-1] == f"Question: {query}\nAnswer:"
        for block in blocks[:3]:
            q, a = block.removeprefix("Question: ").split("\nAnswer: ")
            assert q != query and by_response[a]["query"] == q


def test_parquet_output_and_parquet_and_folder_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = read_jsonl(FIXTURES["arc"])
    folder = tmp_path / "ai2_arc" / "ARC-Challenge"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "train-00000-of-00001.parquet")
    expected, _ = build_arc_pairs(rows)
    for source in [folder / "train-00000-of-00001.parquet", tmp_path / "ai2_arc"]:
        out = tmp_path / "out" / "arc.parquet"
        report = build_dataset("arc", out, source=source, progress=False)
        table = pq.read_table(out)
        assert table.column_names == ["prompt", "chosen", "rejected"]
        assert table.to_pylist() == expected
        assert report.pairs == 14 and report.format == "parquet"


# --- stats ----------------------------------------------------------------------------------------------


def test_stats_on_hand_checked_pairs(tmp_path):
    # Levenshtein by hand: kitten->sitting 3 (k->s, e->i, +g) over 7; "= 47"->"= 52" 2 over 4;
    # flaw->lawn 2 (-f, +n) over 4; identical 0.
    pairs = [("p1", "kitten", "sitting"), ("p22", "= 47", "= 52"), ("p333", "flaw", "lawn"), ("p4", "abc", "abc")]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(dict(zip(("prompt", "chosen", "rejected"), p))) + "\n" for p in pairs))
    assert cli(["data", "stats", str(path)]) == 0
    stats = json.loads((tmp_path / "pairs.jsonl.stats.json").read_text())
    assert stats == stats_for_path(path)
    norm = stats["distances"]["char_levenshtein"]["normalised"]
    assert stats["pairs"] == 4
    assert norm["mean"] == pytest.approx((3 / 7 + 0.5 + 0.5 + 0) / 4)
    assert norm["median"] == pytest.approx((3 / 7 + 0.5) / 2)
    assert (norm["min"], norm["max"]) == (0.0, 0.5)
    assert stats["distances"]["char_levenshtein"]["raw"]["mean"] == pytest.approx(7 / 4)
    assert stats["identical_pairs"] == 1
    assert stats["length_chars"]["prompt"] == {"mean": 2.75, "median": 2.5, "min": 2.0, "max": 4.0}
    assert stats["length_chars"]["rejected"] == {"mean": 4.5, "median": 4.0, "min": 3.0, "max": 7.0}
    # The same pairs position by position (the shorter padded): kitten/sitting 3 of 7 (k/s, e/i, +g),
    # = 47/= 52 2 of 4, flaw/lawn 4 of 4 (every letter moved one place), abc/abc 0.
    assert stats["paper_measure"] == "char_hamming"
    hamming = stats["distances"]["char_hamming"]
    assert hamming["matches_paper"] and hamming["normalised"]["mean"] == pytest.approx((3 / 7 + 0.5 + 1 + 0) / 4)
    assert hamming["raw"]["mean"] == pytest.approx(9 / 4)


def test_every_distance_measure_on_hand_checked_pairs():
    # 1. a corrupted number that changes width: "= 47" -> "= 152" in 30 vs 31 characters.
    #    Levenshtein 3 (two substitutions + one insertion). Hamming: the 12 characters before it agree, all 19
    #    from there on differ (the rest is shifted one place; no character repeats its neighbour), 19/31.
    #    Words: 12 each, one differs, nothing shifts: 1/12 both ways.
    # 2. an inserted word: "the cat sat" (11) -> "the big cat sat" (15). Levenshtein 4 ("big "); Hamming: c/b a/i
    #    t/g, " " agrees, s/c, "at" agrees, then 4 padded: 8/15. Words: Levenshtein 1/4 (one insertion),
    #    Hamming 3/4 (cat/big, sat/cat, padding/sat).
    chosen = ["so 2 + 45 = 47 and 47 * 2 = 94", "the cat sat"]
    rejected = ["so 2 + 45 = 152 and 47 * 2 = 94", "the big cat sat"]
    assert set(compute_stats(["p", "q"], chosen, rejected)["distances"]) == {"char_levenshtein", "char_hamming"}
    stats = compute_stats(["p", "q"], chosen, rejected, words=True)
    expected = {
        "char_levenshtein": ((3 / 31 + 4 / 15) / 2, 3.5),
        "char_hamming": ((19 / 31 + 8 / 15) / 2, 13.5),
        "word_levenshtein": ((1 / 12 + 1 / 4) / 2, 1.0),
        "word_hamming": ((1 / 12 + 3 / 4) / 2, 2.0),
    }
    assert set(stats["distances"]) == set(expected)
    for name, (normalised, raw) in expected.items():
        measure = stats["distances"][name]
        assert measure["normalised"]["mean"] == pytest.approx(normalised), name
        assert measure["raw"]["mean"] == pytest.approx(raw), name
        assert measure["matches_paper"] == (name == "char_hamming")


def test_stats_measures_on_the_fixture_pairs_hamming_is_the_papers_order_of_magnitude(tmp_path, capsys):
    means = {}
    for builder in ("metamath", "arc"):
        pairs, _ = BUILDERS[builder].build(read_jsonl(FIXTURES[builder]))
        distances = stats_for_pairs(pairs, words=True)["distances"]
        means[builder] = {name: measure["normalised"]["mean"] for name, measure in distances.items()}
    # Paper: ~6.5 % (MetaMath) and ~90 % (ARC) "edit (Hamming) distance"; character Levenshtein is far lower.
    # (The fixture's short one-step MetaMath rows push its Hamming mean up; data/mini: 4.7 %, README.)
    assert means["metamath"]["char_levenshtein"] < 0.02 and means["metamath"]["char_hamming"] > 0.05
    assert means["metamath"]["char_hamming"] > 10 * means["metamath"]["char_levenshtein"]
    assert means["arc"]["char_levenshtein"] < 0.70 < 0.80 < means["arc"]["char_hamming"] < 0.95
    path = tmp_path / "arc.jsonl"
    build_dataset("arc", path, source=FIXTURES["arc"], progress=False)
    assert cli(["data", "stats", str(path), "--words"]) == 0
    lines = {x.split()[0]: x for x in capsys.readouterr().out.splitlines() if x.startswith("  ")}
    assert f"{means['arc']['char_hamming']:.2%}" in lines["char_hamming"] and "the paper's" in lines["char_hamming"]
    assert f"{means['arc']['word_hamming']:.2%}" in lines["word_hamming"] and "paper" not in lines["word_hamming"]


def test_stats_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    with pytest.raises(UserError, match="rejected"):
        stats_for_path(bad)
    with pytest.raises(UserError, match="no pairs"):
        compute_stats([], [], [])
    assert cli(["data", "stats", str(tmp_path / "missing.jsonl")]) == 2


# --- bad input, atomic writes, errors ---------------------------------------------------------------------


def test_build_report_counts_and_versions(tmp_path):
    out = tmp_path / "mm.jsonl"
    build_dataset("metamath", out, source=FIXTURES["metamath"], seed=5, progress=False)
    report = json.loads(report_path(out).read_text())
    assert report["rows_read"] == 13 and report["pairs"] == 8 and report["seed"] == 5
    assert report["skipped_total"] == 5 and report["skipped"]["malformed_answer"] == 1
    assert report["options"] == {"fallback": True} and sum(report["corrupted"].values()) == 8
    assert report["source"] == str(FIXTURES["metamath"]) and report["eval"] is None
    assert {"smaug-dpop", "datasets"} <= set(report["versions"])
    assert len(read_jsonl(out)) == 8


def test_eval_split_is_held_out_whole_groups_deterministic_and_reported(tmp_path):
    rows = generate_synthetic_metamath(60, seed=2)
    for i in range(0, 60, 3):  # groups of 3 rephrasings of one problem
        for row in rows[i : i + 3]:
            row["original_question"] = f"problem {i}"
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "mm.jsonl"
    report = build_dataset("metamath", out, source=src, seed=1, few_shot=2, eval_rows=10, progress=False)
    ev = report.eval
    assert ev.output == str(eval_path(out)) == str(tmp_path / "mm.eval.jsonl")
    # 10 rows = three whole groups and one of the fourth, whose 2 other rows go to neither split
    assert ev.rows == 10 and ev.pairs == 10 and ev.rows_left_out == 2
    assert report.pairs == 48 and json.loads(report_path(out).read_text())["eval"] == ev.model_dump()
    train, held = read_jsonl(out), read_jsonl(eval_path(out))
    group_of = {r["response"]: r["original_question"] for r in rows}
    train_groups, eval_groups = {group_of[p["chosen"]] for p in train}, {group_of[p["chosen"]] for p in held}
    assert not train_groups & eval_groups
    # No solution of one split appears in the other's few-shot prompts.
    for pairs, other in ((train, held), (held, train)):
        shown = "\n".join(p["prompt"] for p in pairs)
        assert not any(p["chosen"] in shown for p in other)
    # Held-out rows are corrupted exactly as in a build without a split (per-row generators).
    full, _ = build_metamath_pairs(rows, seed=1)
    by_chosen = {p["chosen"]: p["rejected"] for p in full}
    assert all(by_chosen[p["chosen"]] == p["rejected"] for p in train + held)
    again = build_dataset(
        "metamath", tmp_path / "b.jsonl", source=src, seed=1, few_shot=2, eval_rows=10, progress=False
    )
    assert again.eval.pairs == 10 and (tmp_path / "b.eval.jsonl").read_bytes() == eval_path(out).read_bytes()
    other, _ = choose_eval_rows(rows, 10, 2, lambda r: r["original_question"])
    assert other != choose_eval_rows(rows, 10, 1, lambda r: r["original_question"])[0]


def test_eval_split_from_a_source_split_and_the_released_sets_by_default(tmp_path, monkeypatch):
    import datasets

    rows = read_jsonl(FIXTURES["arc"])
    folder = tmp_path / "ai2_arc" / "ARC-Challenge"
    folder.mkdir(parents=True)
    for name, part in (("train", rows[:5]), ("validation", rows[6:])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    out = tmp_path / "arc.jsonl"
    report = build_dataset("arc", out, source=tmp_path / "ai2_arc", eval_split="validation", progress=False)
    assert report.eval.source_split == "validation" and report.eval.rows == len(rows) - 6 and report.rows_read == 5
    assert (
        read_jsonl(eval_path(out)) == build_arc_pairs(rows[6:])[0] and read_jsonl(out) == build_arc_pairs(rows[:5])[0]
    )
    with pytest.raises(UserError, match="--eval-split validation: source .* is a single file"):
        build_dataset("arc", out, source=FIXTURES["arc"], eval_split="validation", progress=False)
    # No --source: each builder makes what the released abacusai/*_DPO_FewShot set holds, its eval split included.
    hub = {("allenai/ai2_arc", "train"): rows[:5], ("allenai/ai2_arc", "validation"): rows[6:]}
    hub[("meta-math/MetaMathQA", "train")] = generate_synthetic_metamath(1200, seed=5)
    monkeypatch.setattr(
        datasets, "load_dataset", lambda name, config, split: datasets.Dataset.from_list(hub[name, split])
    )
    arc = build_dataset("arc", tmp_path / "hub" / "arc.jsonl", progress=False)
    assert arc.eval.source_split == "validation" and arc.eval.pairs == len(read_jsonl(eval_path(out)))
    metamath = build_dataset("metamath", tmp_path / "hub" / "mm.parquet", progress=False)
    assert metamath.eval.rows == 1000 and metamath.rows_read == 1200 and metamath.pairs == 200
    assert build_dataset("arc", tmp_path / "hub" / "arc0.jsonl", eval_rows=0, progress=False).eval is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"builder": "arc", "options": {"format": "raw"}}, "builder arc has no option 'format'"),
        ({"builder": "hellaswag", "options": {"format": "fancy"}}, "format must be one of raw, lm-eval"),
        ({"builder": "metamath", "eval_rows": -1}, "--eval-rows '-1': must be 0 or more"),
        ({"builder": "metamath", "seed": 1.5}, "--seed '1.5' is not a whole number"),
        ({"builder": "metamath", "eval_rows": 13}, "--eval-rows 13 leaves no training rows"),
        ({"builder": "metamath", "eval_out": "x.eval.jsonl"}, "--eval-out needs --eval-rows"),
        ({"builder": "metamath", "eval_rows": 2, "eval_split": "test"}, "two ways to make the eval split"),
    ],
)
def test_build_option_errors(kwargs, message, tmp_path):
    builder = kwargs.pop("builder")
    if "eval_out" in kwargs:
        kwargs["eval_out"] = tmp_path / kwargs["eval_out"]
    source = {"arc": FIXTURES["arc"], "hellaswag": FIXTURES["hellaswag"], "metamath": FIXTURES["metamath"]}[builder]
    with pytest.raises(UserError, match=message):
        build_dataset(builder, tmp_path / "o.jsonl", source=source, progress=False, **kwargs)
    assert not (tmp_path / "o.jsonl").exists()


def test_failure_mid_write_leaves_no_output(tmp_path, monkeypatch):
    out = tmp_path / "arc.jsonl"
    real_dumps = json.dumps
    calls = {"n": 0}

    def failing_dumps(obj, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("disk full (simulated)")
        return real_dumps(obj, **kwargs)

    monkeypatch.setattr(files.json, "dumps", failing_dumps)
    with pytest.raises(OSError, match="simulated"):
        build_dataset("arc", out, source=FIXTURES["arc"], progress=False)
    assert calls["n"] == 4  # it failed part way through the rows
    assert list(tmp_path.iterdir()) == []  # no output, no report, no temp file

    # An existing output survives a failed rewrite untouched.
    monkeypatch.setattr(files.json, "dumps", real_dumps)
    build_dataset("arc", out, source=FIXTURES["arc"], progress=False)
    before = out.read_bytes()
    calls["n"] = 0
    monkeypatch.setattr(files.json, "dumps", failing_dumps)
    with pytest.raises(OSError):
        build_dataset("arc", out, source=FIXTURES["arc"], seed=3, few_shot=1, progress=False)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arc.jsonl", "arc.jsonl.build.json"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "build", "mmlu", "--out", "{tmp}/x.jsonl"], "unknown builder 'mmlu'"),
        (
            ["data", "build", "arc", "--source", "{tmp}/nope.jsonl", "--out", "{tmp}/x.jsonl"],
            "nope.jsonl does not exist",
        ),
        (["data", "build", "arc", "--source", "{fixture}", "--out", "{tmp}/x.csv"], "use .jsonl"),
        (
            ["data", "build", "arc", "--source", "{fixture}", "--out", "{tmp}/x.jsonl", "--push-to-hub", "noslash"],
            "is not a Hub repo id",
        ),
    ],
)
def test_cli_user_errors(argv, message, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, fixture=FIXTURES["arc"]) for a in argv]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "build", "arc", "--source", "{fixture}", "--out", "{tmp}/x.jsonl", "--few-shot", "-1"], "--few-shot"),
        (["data", "synth-metamath", "--n", "0", "--out", "{tmp}/s.jsonl"], "--n: '0': must be at least 1"),
    ],
)
def test_cli_counts_are_checked_by_the_parser(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli([a.format(tmp=tmp_path, fixture=FIXTURES["arc"]) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {message}" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_source_with_no_usable_rows_is_a_user_error(tmp_path):
    src = tmp_path / "wrong_schema.jsonl"
    src.write_text(json.dumps({"instruction": "hi", "output": "there"}) + "\n")
    with pytest.raises(
        UserError,
        match=r"does not have the fields the metamath builder reads \(query, response; "
        r"the meta-math/MetaMathQA schema\): its rows have instruction, output",
    ):
        build_dataset("metamath", tmp_path / "o.jsonl", source=src, progress=False)
    src.write_text(json.dumps({"query": "q?", "response": "no final answer line"}) + "\n")
    with pytest.raises(UserError, match=r"no pairs could be built .*malformed_answer"):
        build_dataset("metamath", tmp_path / "o.jsonl", source=src, progress=False)
    assert not (tmp_path / "o.jsonl").exists()


# --- CLI end to end, push wiring, axolotl -----------------------------------------------------------------


def test_cli_build_stats_and_synth(tmp_path, capsys):
    src = tmp_path / "synth.jsonl"
    assert cli(["data", "synth-metamath", "--n", "60", "--seed", "4", "--out", str(src), "--no-progress"]) == 0
    rows = read_jsonl(src)
    assert len(rows) == 60 and set(rows[0]) == {"query", "response", "type", "original_question"}
    out = tmp_path / "pairs" / "metamath.parquet"
    assert (
        cli(
            [
                "data",
                "build",
                "metamath",
                "--source",
                str(src),
                "--out",
                str(out),
                "--seed",
                "4",
                "--few-shot",
                "1",
                "--intermediate-only",
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads(report_path(out).read_text())
    printed = capsys.readouterr().out
    assert f"-> {report['pairs']} pairs" in printed
    assert report["pairs"] + report["skipped_total"] == 60 and report["few_shot"] == 1
    assert report["options"] == {"fallback": False} and set(report["skipped"]) <= {"no_intermediate_calculation"}
    hs = tmp_path / "hs.jsonl"
    assert (
        cli(
            [
                "data",
                "build",
                "hellaswag",
                "--source",
                str(FIXTURES["hellaswag"]),
                "--out",
                str(hs),
                "--format",
                "lm-eval",
                "--eval-rows",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "eval: 2 held-out rows" in capsys.readouterr().out
    assert read_jsonl(hs)[0]["prompt"].startswith("Removing ice from car: ") or read_jsonl(tmp_path / "hs.eval.jsonl")[
        0
    ]["prompt"].startswith("Removing ice from car: ")
    assert cli(["data", "stats", str(out), "--json", str(tmp_path / "s.json")]) == 0
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["pairs"] == report["pairs"]
    assert 0 < stats["distances"]["char_levenshtein"]["normalised"]["mean"] < 0.05  # one number in ~400 chars


def test_pairs_feed_axolotl_chatml_prompt_pairs(tmp_path):
    from axolotl.prompt_strategies.dpo.chatml import prompt_pairs

    pairs, _ = build_arc_pairs(read_jsonl(FIXTURES["arc"]))
    sample = prompt_pairs(None)(dict(pairs[0]))
    assert sample["prompt"] == f"<|im_start|>user\n{pairs[0]['prompt']}<|im_end|>\n<|im_start|>assistant\n"
    assert sample["chosen"] == pairs[0]["chosen"] + "<|im_end|>"
    assert sample["rejected"] == pairs[0]["rejected"] + "<|im_end|>"


# --- synthetic rows and the committed mini sources ---------------------------------------------------------


def test_synthetic_rows_are_realistic_and_deterministic():
    rows = generate_synthetic_metamath(400, seed=11)
    assert rows == generate_synthetic_metamath(400, seed=11)
    assert rows[:50] == generate_synthetic_metamath(50, seed=11)
    assert rows != generate_synthetic_metamath(400, seed=12)
    lengths = sorted(len(r["response"]) for r in rows)
    assert 250 <= lengths[len(lengths) // 2] <= 600
    for row in rows:
        body, answer = split_final_answer(row["response"])
        results = re.findall(r"= \$?(-?[\d,]+(?:\.\d+)?)", body)
        assert len(results) >= 1 and Decimal(results[-1].replace(",", "")) == Decimal(answer)
    pairs, skipped = build_metamath_pairs(rows, seed=0, fallback=False)
    assert len(pairs) >= 0.95 * len(rows) and set(skipped) <= {"no_intermediate_calculation"}
    assert len(build_metamath_pairs(rows, seed=0)[0]) == len(rows)  # the one-step rows too


@pytest.mark.parametrize(
    "builder, name, min_rows",
    [("metamath", "metamath", 250), ("arc", "arc_challenge", 35), ("hellaswag", "hellaswag", 35)],
)
def test_mini_sources_build_cleanly(builder, name, min_rows, tmp_path):
    path = MINI / f"{name}.jsonl"
    assert path.stat().st_size < 300_000
    rows = read_jsonl(path)
    assert len(rows) >= min_rows
    report = build_dataset(builder, tmp_path / "out.jsonl", source=path, progress=False)
    # The mini files are clean: every row gives pairs (MetaMath's one-step rows through the fallback).
    assert report.skipped == {}
    assert report.pairs >= len(rows) * (1 if builder == "metamath" else 2)


def test_unreachable_hub_source_is_a_user_error(tmp_path):
    # conftest sets HF_DATASETS_OFFLINE=1, so the default Hub source cannot be fetched.
    with pytest.raises(UserError, match=r"allenai/ai2_arc.*--source PATH"):
        build_dataset("arc", tmp_path / "arc.jsonl", progress=False)
    assert list(tmp_path.iterdir()) == []
