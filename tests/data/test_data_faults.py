"""Faults and bad input on the data side (issue 16, items 3, 9 and 11): outputs never land on inputs, values
are never coerced into text, and every bad input or output path is a one-line error naming it, before any work.

Each case checks the exit code, that the message is one line naming the culprit, and that nothing was written
(and an input that was named as an output is byte-for-byte unchanged)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import smaug.cli
from smaug.common.errors import UserError
from smaug.common.files import check_outputs
from smaug.data.builders import build_dataset
from smaug.data.io import load_pairs, read_source

REPO = Path(__file__).resolve().parents[2]
SOURCES = REPO / "tests" / "fixtures" / "sources"
ARC = SOURCES / "arc_challenge.jsonl"
METAMATH = SOURCES / "metamath.jsonl"
PAIRS = [
    {"prompt": "What is 2 + 3?", "chosen": "2 + 3 = 5", "rejected": "2 + 3 = 6"},
    {"prompt": "What is 4 * 5?", "chosen": "4 * 5 = 20", "rejected": "4 * 5 = 21"},
]


def jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = smaug.cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_refused(argv, capsys, *patterns: str) -> str:
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 or "\n\n" in err, err  # one line (a table stanza may follow)
    for pattern in patterns:
        assert pattern in err, (pattern, err)
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def data_only(monkeypatch):
    monkeypatch.setattr(smaug.cli, "FLOWS", ["data"])


# --- item 3: an output never lands on an input --------------------------------------------------------------


def test_check_outputs_sees_every_name_of_an_input(tmp_path):
    src = tmp_path / "src.jsonl"
    src.write_text("x\n")
    (tmp_path / "link.jsonl").symlink_to(src)
    os.link(src, tmp_path / "hard.jsonl")
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = {
        "same path": ({"--out": src}, {"--source": src}),
        "relative spelling": ({"--out": Path(os.path.relpath(src))}, {"--source": src}),
        "output is a symlink to the input": ({"--out": tmp_path / "link.jsonl"}, {"--source": src}),
        "input is a symlink to the output": ({"--out": src}, {"--source": tmp_path / "link.jsonl"}),
        "hard link": ({"--out": tmp_path / "hard.jsonl"}, {"--source": src}),
        "inside an input folder": ({"--out": folder / "sub" / "o.jsonl"}, {"--source": folder}),
    }
    for name, (outputs, inputs) in cases.items():
        with pytest.raises(UserError, match=r"--out .*(would overwrite|is inside) --source") as err:
            check_outputs(outputs, inputs)
        assert "\n" not in str(err.value), name
    with pytest.raises(UserError, match="the eval split .* is also --out"):
        check_outputs({"--out": tmp_path / "o.jsonl", "the eval split": tmp_path / "o.jsonl"})
    with pytest.raises(UserError, match="is a folder; give a file path"):
        check_outputs({"--out": folder})
    with pytest.raises(UserError, match=r"src.jsonl is a file, not a folder"):
        check_outputs({"--out": src / "deeper" / "o.jsonl"})
    check_outputs({"--out": tmp_path / "new" / "o.jsonl"}, {"--source": src, "hub": "org/name", "none": None})
    assert src.read_text() == "x\n"


def test_unwritable_output_folder_is_named_before_any_work(tmp_path, monkeypatch, capsys, data_only):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes anywhere; what os.access answers on a read-only mount is simulated
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    else:
        locked.chmod(0o500)
    try:
        assert_refused(
            ["data", "build", "arc", "--source", ARC, "--out", locked / "arc.jsonl"],
            capsys,
            f"cannot write in {locked}",
        )
        assert_refused(["data", "synth-metamath", "--n", "5", "--out", locked / "s.jsonl"], capsys, "cannot write")
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize(
    "case",
    [
        "out_is_source",
        "out_symlink",
        "out_hardlink",
        "eval_out_is_source",
        "default_eval_file_is_source",
        "out_in_source_folder",
        "card_in_source_folder",
        "stats_json_is_pairs",
        "stats_json_symlink",
        "stats_json_hardlink",
        "stats_json_in_pair_folder",
    ],
)
def test_data_commands_refuse_to_write_over_what_they_read(case, tmp_path, capsys, data_only):
    src = jsonl(tmp_path / "in" / "mm.eval.jsonl", [json.loads(x) for x in METAMATH.read_text().splitlines()])
    pairs = jsonl(tmp_path / "in" / "pairs.jsonl", PAIRS)
    (tmp_path / "in" / "link.jsonl").symlink_to(src)
    os.link(pairs, tmp_path / "in" / "hard.jsonl")
    build = ["data", "build", "metamath", "--source", src, "--no-progress"]
    argv, expected = {
        "out_is_source": (build + ["--out", src], "would overwrite --source"),
        "out_symlink": (build + ["--out", tmp_path / "in" / "link.jsonl"], "would overwrite --source"),
        "out_hardlink": (
            ["data", "build", "metamath", "--source", tmp_path / "in" / "hard.jsonl", "--out", pairs],
            "would overwrite --source",
        ),
        "eval_out_is_source": (
            build + ["--out", tmp_path / "o.jsonl", "--eval-rows", "2", "--eval-out", src],
            "the eval split",
        ),
        # --out mm.jsonl puts the eval split at mm.eval.jsonl by default: that is the source here
        "default_eval_file_is_source": (
            build + ["--out", tmp_path / "in" / "mm.jsonl", "--eval-rows", "2"],
            "the eval split",
        ),
        "out_in_source_folder": (
            ["data", "build", "metamath", "--source", tmp_path / "in", "--out", tmp_path / "in" / "new.jsonl"],
            "is inside --source",
        ),
        "card_in_source_folder": (
            [
                "data",
                "build",
                "metamath",
                "--source",
                tmp_path / "in",
                "--out",
                tmp_path / "o.jsonl",
                "--card",
                tmp_path / "in" / "README.md",
            ],
            "the dataset card",
        ),
        "stats_json_is_pairs": (["data", "stats", pairs, "--json", pairs], "--json"),
        "stats_json_symlink": (["data", "stats", tmp_path / "in" / "link.jsonl", "--json", src], "--json"),
        "stats_json_hardlink": (["data", "stats", tmp_path / "in" / "hard.jsonl", "--json", pairs], "--json"),
        "stats_json_in_pair_folder": (
            ["data", "stats", tmp_path / "in", "--json", tmp_path / "in" / "s.json"],
            "is inside the pair file",
        ),
    }[case]
    before = snapshot(tmp_path)
    assert_refused(argv, capsys, expected)
    assert snapshot(tmp_path) == before  # the inputs are intact and nothing was written


def test_eval_commands_refuse_outputs_that_are_their_inputs(tmp_path, capsys):
    out = tmp_path / "out"
    pairs = jsonl(out / "logprobs.json", PAIRS)  # a pair file where logprobs.json is about to be written
    texts = jsonl(tmp_path / "c" / "contamination.json", [{"text": "hello"}])
    questions = jsonl(tmp_path / "m" / "answers.jsonl", [{"question_id": 1, "category": "x", "turns": ["a", "b"]}])
    summary = tmp_path / "s" / "summary.json"
    summary.parent.mkdir()
    summary.write_text("{}")
    state = tmp_path / "run" / "trainer_state.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"log_history": []}))
    before = snapshot(tmp_path)
    missing = tmp_path / "no-model"  # never loaded: the check comes first
    assert_refused(
        ["eval", "logprobs", "--models", missing, "--reference", missing, "--pairs", pairs, "--out", out],
        capsys,
        "--out logprobs.json",
        "would overwrite --pairs",
    )
    assert_refused(
        ["eval", "contamination", "--model", missing, "--ref", missing, "--texts", texts, "--out", texts.parent],
        capsys,
        "would overwrite --texts",
    )
    assert_refused(
        [
            "eval",
            "mtbench",
            "--model",
            missing,
            "--judge-url",
            "http://127.0.0.1:30201/v1",
            "--judge-model",
            "j",
            "--questions",
            questions,
            "--out",
            questions.parent,
        ],
        capsys,
        "--out answers.jsonl",
        "would overwrite --questions",
    )
    assert_refused(["eval", "compare", summary, "--out", summary], capsys, "would overwrite")
    assert_refused(["eval", "plot-training", state.parent, "--out", state], capsys, "would overwrite")
    assert snapshot(tmp_path) == before


# --- item 9: values keep their types ----------------------------------------------------------------------


def test_a_number_in_a_text_column_is_refused_with_its_line_not_turned_into_text(tmp_path):
    rows = [json.loads(x) for x in METAMATH.read_text().splitlines()][:3]
    src = tmp_path / "mixed.jsonl"
    # `datasets`' JSON loader would read this column as JSON text ("42", '"..."'); our reader keeps the 42.
    src.write_text(
        json.dumps(rows[0]) + "\n\n" + json.dumps({**rows[1], "query": 42}) + "\n" + json.dumps(rows[2]) + "\n"
    )
    assert read_source(src).rows[1]["query"] == 42
    with pytest.raises(UserError, match=r"mixed.jsonl:3: `query` is a int \(42\), not text"):
        build_dataset("metamath", tmp_path / "o.jsonl", source=src, progress=False)
    assert not (tmp_path / "o.jsonl").exists()


def test_wrong_types_in_json_array_parquet_and_folder_sources_name_their_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    arc = [json.loads(x) for x in ARC.read_text().splitlines()][:4]
    bad_arc = {**arc[1], "choices": {"text": ["a", 3.5, "c", "d"], "label": ["A", "B", "C", "D"]}}
    array = tmp_path / "arc.json"
    array.write_text(json.dumps([arc[0], bad_arc], indent=2))
    with pytest.raises(UserError, match=r"arc.json: item 2: `choices.text\[1\]` is a float \(3.5\)"):
        build_dataset("arc", tmp_path / "o.jsonl", source=array, progress=False)
    hs = [json.loads(x) for x in (SOURCES / "hellaswag.jsonl").read_text().splitlines()][:2]
    folder = tmp_path / "hs"
    jsonl(folder / "train-00000.jsonl", [hs[0]])
    jsonl(folder / "train-00001.jsonl", [hs[1], {**hs[0], "endings": ["one", "two", 3, "four"]}])
    with pytest.raises(UserError, match=r"train-00001.jsonl:2: `endings\[2\]` is a int \(3\)"):
        build_dataset("hellaswag", tmp_path / "o.jsonl", source=folder, progress=False)
    numeric = tmp_path / "mm.parquet"  # Parquet holds one type per column: a numeric `response` column
    pq.write_table(pa.table({"query": ["q1", "q2"], "response": [1, 2]}), numeric)
    with pytest.raises(UserError, match=r"mm.parquet: row 1: `response` is a int \(1\), not text"):
        build_dataset("metamath", tmp_path / "o.jsonl", source=numeric, progress=False)
    assert not (tmp_path / "o.jsonl").exists()


def test_a_hub_column_datasets_can_only_read_as_json_is_refused_by_name(tmp_path):
    import datasets

    from smaug.data.io import _check_hub_columns

    mixed = jsonl(tmp_path / "mixed.jsonl", [{"query": 42, "response": "a"}, {"query": "text", "response": "b"}])
    ds = datasets.load_dataset("json", data_files=str(mixed), split="train", cache_dir=str(tmp_path / "cache"))
    assert [row["query"] for row in ds.to_list()] == ["42", '"text"']  # what `datasets` makes of it
    with pytest.raises(UserError, match=r"source org/mixed: column\(s\) query mix value types"):
        _check_hub_columns(ds, "org/mixed")


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "folder"])
def test_pair_reader_refuses_numbers_and_conversations_in_every_format(kind, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(name: str, rows: list) -> Path:
        if kind == "parquet":
            path = tmp_path / f"{name}.parquet"
            pq.write_table(pa.Table.from_pylist(rows), path)
            return path
        path = jsonl(tmp_path / name / "part.jsonl" if kind == "folder" else tmp_path / f"{name}.jsonl", rows)
        return path.parent if kind == "folder" else path

    # Parquet holds one type per column: there the whole `chosen` column is numeric.
    where = "row 1" if kind == "parquet" else "line 2"
    bad = {"prompt": "p", "chosen": 7, "rejected": "8"}
    numeric = write("numeric", [bad, bad] if kind == "parquet" else [PAIRS[0], bad])
    with pytest.raises(UserError, match=rf"{where}: `chosen` is a int \(7\), not text"):
        load_pairs(numeric)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    conversation = write("chat", [{"prompt": "hi", "chosen": chat, "rejected": chat}] * 2)
    with pytest.raises(
        UserError,
        match=r"(row|line) 1 is a conversation \(`chosen` is a list of messages\), not a "
        r"pair of texts",
    ):
        load_pairs(conversation)


# --- item 11: every bad input or output path, one line, before any work ---------------------------------------


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


BAD_SOURCES = {  # name -> (file name, content, what the message must say)
    "empty": ("empty.jsonl", "", "has no rows"),
    "not_json": ("bad.jsonl", json.dumps({"query": "q"}) + "\n{not json\n", "bad.jsonl:2: not valid JSON"),
    "not_utf8": ("latin1.jsonl", b'{"query": "caf\xe9"}\n', "latin1.jsonl:1: not UTF-8"),
    "parquet_named_jsonl": ("p.jsonl", b"PAR1\x00\x00PAR1", "a Parquet file, not JSON Lines"),
    "csv": ("rows.csv", "query,response\n", "unknown file type '.csv'"),
    "one_object": ("obj.json", '{\n  "query": ["a"],\n  "response": ["b"]\n}\n', "one JSON object with keys query"),
    "array_of_strings": ("arr.json", '["a", "b"]', "item 1 is a JSON string, not an object"),
    "null_line": ("n.jsonl", "null\n", "n.jsonl:1: a JSON null, not an object"),
    "deep_nesting": ("deep.jsonl", "[" * 100_000 + "\n", "deep.jsonl:1: JSON nested too deeply"),
    "build_report": ("x.jsonl.build.json", "{}", "a report written by `smaug data`"),
    "arc_rows": (
        "arc.jsonl",
        ARC.read_text(),
        "does not have the fields the metamath builder reads (query, "
        "response; the meta-math/MetaMathQA schema): its rows have id, "
        "question, choices, answerKey; these look like arc rows",
    ),
    "pairs": ("pairs.jsonl", "".join(json.dumps(p) + "\n" for p in PAIRS), "these are pairs already"),
}


@pytest.mark.parametrize("name", list(BAD_SOURCES))
def test_bad_sources_are_named_with_their_line(name, tmp_path, capsys, data_only):
    file_name, content, message = BAD_SOURCES[name]
    src = _write(tmp_path / "in" / file_name, content)
    out = tmp_path / "out" / "mm.jsonl"
    assert_refused(["data", "build", "metamath", "--source", src, "--out", out, "--no-progress"], capsys, message)
    assert not (tmp_path / "out").exists()


BAD_PAIR_FILES = {
    "empty": ("empty.jsonl", "", "no pairs (the file is empty)"),
    "not_json": ("bad.jsonl", json.dumps(PAIRS[0]) + "\n[1, 2\n", "bad.jsonl:2: not valid JSON"),
    "not_utf8": ("latin1.jsonl", b'{"prompt": "caf\xe9"}\n', "latin1.jsonl:1: not UTF-8"),
    "stats_report": ("p.jsonl.stats.json", "{}", "a report written by `smaug data`, not data"),
    "source_rows": ("mm.jsonl", METAMATH.read_text(), "line 1: `prompt` is missing (fields: query, response"),
    "messages": (
        "chat.jsonl",
        json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n",
        "line 1 is a conversation (`messages` holds messages)",
    ),
    "damaged_parquet": ("p.parquet", b"PAR1 not really", "not a readable Parquet file"),
}


@pytest.mark.parametrize("name", list(BAD_PAIR_FILES))
def test_bad_pair_files_are_named_for_stats(name, tmp_path, capsys, data_only):
    file_name, content, message = BAD_PAIR_FILES[name]
    path = _write(tmp_path / file_name, content)
    before = snapshot(tmp_path)
    assert_refused(["data", "stats", path], capsys, message)
    assert snapshot(tmp_path) == before


def test_stats_of_a_build_folder_skips_the_reports(tmp_path, capsys, data_only):
    folder = tmp_path / "built"
    build_dataset("arc", folder / "arc.jsonl", source=ARC, progress=False, card=True)
    assert {p.name for p in folder.iterdir()} == {"arc.jsonl", "arc.jsonl.build.json", "README.md"}
    assert smaug.cli.main(["data", "stats", str(folder)]) == 0
    assert json.loads((tmp_path / "built.stats.json").read_text())["pairs"] == 14


NUMBERS = [
    ("--limit", ["nan", "inf", "0", "-1", "1.5", "ten"]),
    ("--seed", ["-1", "nan"]),
    ("--few-shot", ["-1", "inf"]),
    ("--eval-rows", ["-1", "nan"]),
]


def assert_parser_refused(argv, capsys, flag: str, value: str) -> None:
    """A count the parser refuses: exit 2, the flag and the value named, no traceback."""
    with pytest.raises(SystemExit) as exit_:
        smaug.cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {flag}: '{value}'" in err and "Traceback" not in err, err


@pytest.mark.parametrize("flag, value", [(f, v) for f, values in NUMBERS for v in values])
def test_build_counts_out_of_range(flag, value, tmp_path, capsys, data_only):
    argv = ["data", "build", "arc", "--source", ARC, "--out", tmp_path / "o.jsonl", flag, value]
    assert_parser_refused(argv, capsys, flag, value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, flag, value",
    [(["--n", "nan"], "--n", "nan"), (["--n", "0"], "--n", "0"), (["--seed", "-2"], "--seed", "-2")],
)
def test_synth_counts_out_of_range(argv, flag, value, tmp_path, capsys, data_only):
    assert_parser_refused(
        ["data", "synth-metamath", "--n", "3", *argv, "--out", tmp_path / "s.jsonl"], capsys, flag, value
    )
    assert list(tmp_path.iterdir()) == []


def test_few_shot_larger_than_a_split_and_splits_or_configs_that_do_not_exist(tmp_path, capsys, data_only):
    out = tmp_path / "out" / "o.jsonl"
    assert_refused(["data", "build", "arc", "--source", "", "--out", out], capsys, "--source is empty")
    assert_refused(
        ["data", "build", "arc", "--source", ARC, "--out", out, "--eval-rows", "2", "--few-shot", "2"],
        capsys,
        "--few-shot 2 needs more than 2 rows in the eval split, which has 2",
    )
    assert_refused(
        ["data", "build", "arc", "--source", ARC, "--out", out, "--few-shot", "8"],
        capsys,
        "--few-shot 8 needs more than 8 source rows",
    )
    assert_refused(
        ["data", "build", "arc", "--source", ARC, "--out", out, "--split", "test"],
        capsys,
        "is a single file, which is one split",
    )
    assert_refused(
        ["data", "build", "arc", "--source", ARC, "--out", out, "--config", "ARC-Easy"],
        capsys,
        "--config ARC-Easy: source",
    )
    folder = tmp_path / "ai2_arc"
    jsonl(folder / "ARC-Challenge" / "train.jsonl", [json.loads(x) for x in ARC.read_text().splitlines()])
    assert_refused(
        ["data", "build", "arc", "--source", folder, "--out", out, "--split", "validation"],
        capsys,
        "has no 'validation' split (found: train)",
    )
    assert_refused(
        ["data", "build", "arc", "--source", folder, "--out", out, "--config", "ARC-Easy"],
        capsys,
        "has no ARC-Easy/ subfolder",
    )
    assert not (tmp_path / "out").exists()


def test_occupied_or_impossible_output_paths(tmp_path, capsys, data_only):
    (tmp_path / "dir.jsonl").mkdir()
    (tmp_path / "file").write_text("x")
    build = ["data", "build", "arc", "--source", ARC, "--no-progress", "--out"]
    assert_refused(build + [tmp_path / "dir.jsonl"], capsys, f"--out {tmp_path / 'dir.jsonl'} is a folder")
    assert_refused(build + [tmp_path / "file" / "arc.jsonl"], capsys, f"{tmp_path / 'file'} is a file, not a folder")
    assert_refused(
        ["data", "stats", REPO / "data" / "mini" / "arc_challenge.jsonl", "--json", tmp_path / "file" / "s.json"],
        capsys,
        "is a file, not a folder",
    )
    (tmp_path / "README.md").write_text("# my notes\n")
    assert_refused(
        build + [tmp_path / "arc.jsonl", "--card"],
        capsys,
        f"the dataset card {tmp_path / 'README.md'} exists and is not the card of arc.jsonl",
    )
    assert (tmp_path / "README.md").read_text() == "# my notes\n"
    assert {p.name for p in tmp_path.iterdir()} == {"dir.jsonl", "file", "README.md"}


# --- issue 22 item 3: a build's files are one set ----------------------------------------------------------------


def test_a_rebuild_stopped_between_files_leaves_the_old_set_or_is_refused_when_read(tmp_path, monkeypatch, capsys):
    import axolotl_dpop.atomic
    from smaug.data.io import report_path

    rows = [json.loads(x) for x in (REPO / "data" / "mini" / "metamath.jsonl").read_text().splitlines()]
    src = jsonl(tmp_path / "src" / "mm.jsonl", rows)
    out = tmp_path / "built" / "mm.jsonl"

    def build(seed: int) -> None:
        build_dataset("metamath", out, source=src, seed=seed, eval_rows=30, card=True, progress=False)

    build(1)
    old = snapshot(out.parent)
    files = json.loads(report_path(out).read_text())["files"]
    assert set(files) == {"mm.jsonl", "mm.eval.jsonl", "README.md"}
    real_replace, refused = os.replace, []
    for n in range(1, 5):  # eval split, train split, card, report: stop the rebuild before the Nth is in place
        calls = {"n": 0}

        def replace(a, b, n=n, calls=calls):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt(f"killed before write {n}")
            return real_replace(a, b)

        monkeypatch.setattr(axolotl_dpop.atomic.os, "replace", replace)
        with pytest.raises(KeyboardInterrupt):
            build(2)
        monkeypatch.setattr(axolotl_dpop.atomic.os, "replace", real_replace)
        now = snapshot(out.parent)
        if now == old:
            continue  # the old set is intact
        refused.append(n)
        for part in (out, out.parent / "mm.eval.jsonl"):
            with pytest.raises(
                UserError, match=r"one of the files of the build recorded in .*mm.jsonl.build.json, but "
            ):
                load_pairs(part)
        code, err = run_cli(["data", "stats", out], capsys)
        assert code == 2 and "a rebuild stopped part way" in err
        build(1)  # a complete build makes the set readable again, with the same pairs
        pair_files = ("mm.jsonl", "mm.eval.jsonl")
        assert load_pairs(out) and [snapshot(out.parent)[k] for k in pair_files] == [old[k] for k in pair_files]
        old = snapshot(out.parent)
    assert refused == [2, 3, 4]
    # A rebuild without an eval split or card removes the old ones (the eval split would overlap the new training
    # split, the card describe another build); a file someone changed since is left alone.
    (out.parent / "README.md").write_text((out.parent / "README.md").read_text() + "\nmy notes\n")
    build_dataset("metamath", out, source=src, seed=2, progress=False)
    assert sorted(p.name for p in out.parent.iterdir()) == ["README.md", "mm.jsonl", "mm.jsonl.build.json"]
    assert set(json.loads(report_path(out).read_text())["files"]) == {"mm.jsonl"} and len(load_pairs(out)) == 300
