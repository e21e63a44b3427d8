"""Dataset cards for built pairs (issue 14, item 2): `smaug data build ... --card [PATH]` and `--push-to-hub`.

The card is checked against the build it describes (report, files, `smaug.data.stats` on the written files, the
builder's own rule text, the licence table), loaded back with huggingface_hub's `DatasetCard.load`, and pushed
with the pairs to the local Hub stand-in (tests/hub_server.py) by the real `datasets` / `huggingface_hub`
clients, where `datasets`' own `push_to_hub` adds its metadata to the card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from huggingface_hub import DatasetCard

import smaug.cli
from smaug.common.errors import UserError
from smaug.common.licenses import load_license_table
from smaug.data.builders import BUILDERS, build_dataset, eval_path
from smaug.data.card import DATASET_LICENSE_TABLE, source_license
from smaug.data.io import report_path
from smaug.data.stats import stats_for_path

REPO = Path(__file__).resolve().parents[2]
MINI_METAMATH = REPO / "data" / "mini" / "metamath.jsonl"
ARC = REPO / "tests" / "fixtures" / "sources" / "arc_challenge.jsonl"
FAKE_TOKEN = "hf_" + "DatasetCardTokenDatasetCard0123456"


@pytest.fixture(autouse=True)
def data_only(monkeypatch):
    monkeypatch.setattr(smaug.cli, "FLOWS", ["data"])


def pct(value: float) -> str:
    return f"{100 * value:.2f} %"


def test_card_of_the_mini_metamath_build_states_the_build_and_round_trips(tmp_path, capsys):
    out = tmp_path / "pairs" / "metamath_dpo.jsonl"
    assert (
        smaug.cli.main(
            [
                "data",
                "build",
                "metamath",
                "--source",
                str(MINI_METAMATH),
                "--out",
                str(out),
                "--seed",
                "3",
                "--few-shot",
                "1",
                "--eval-rows",
                "30",
                "--card",
                "--no-progress",
            ]
        )
        == 0
    )
    card_file = out.parent / "README.md"
    assert f"dataset card: {card_file}" in capsys.readouterr().out
    report = json.loads(report_path(out).read_text())
    assert report["card"] == str(card_file)
    card = DatasetCard.load(card_file)
    meta, text = card.data.to_dict(), card.text
    # A local file not named as a copy of a Hub dataset: no licence is claimed, and the card says why.
    assert meta["license"] == "unknown" and "source_datasets" not in meta
    assert "Source licence: **unknown**" in text and "no `--source-id` names the Hub dataset" in text
    assert meta["pretty_name"] == "metamath preference pairs" and meta["size_categories"] == ["n<1K"]
    # The construction rule is the builder's own text, for the options in effect.
    assert BUILDERS["metamath"].construction({"fallback": True}) in text
    assert "one intermediate result corrupted, answer untouched" in text
    assert "- Seed: `3`" in text and "- Few-shot: 1 solved examples" in text
    # Counts and splits from the report, and the command that rebuilds them.
    assert f"| train | `metamath_dpo.jsonl` | {300 - 30} | {report['pairs']} | {report['skipped_total']} |" in text
    assert f"| eval | `metamath_dpo.eval.jsonl` | 30 | {report['eval']['pairs']} | 0 |" in text
    assert ", ".join(f"`{k}` {v}" for k, v in sorted(report["corrupted"].items())) in text
    assert "--seed 3 --few-shot 1 --eval-rows 30`" in text
    # Edit distances: the stats of the written files, both measures, per split.
    for split, path in (("train", out), ("eval", eval_path(out))):
        d = stats_for_path(path)["distances"]
        lev, ham = d["char_levenshtein"]["normalised"], d["char_hamming"]["normalised"]
        assert (
            f"| {split} | {pct(lev['mean'])} / {pct(lev['median'])} | {pct(ham['mean'])} / {pct(ham['median'])} |"
        ) in text
        assert report["edit_distance"][split]["char_hamming"]["mean"] == pytest.approx(ham["mean"])
    # The file on disk is exactly the card (the write checked the round trip too).
    assert card_file.read_text(encoding="utf-8") == str(card)
    # Rebuilding replaces its own card (and only that).
    assert (
        smaug.cli.main(
            [
                "data",
                "build",
                "metamath",
                "--source",
                str(MINI_METAMATH),
                "--out",
                str(out),
                "--seed",
                "4",
                "--card",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "- Seed: `4`" in DatasetCard.load(card_file).text


def test_card_with_a_known_source_states_its_licence_from_the_table(tmp_path):
    out = tmp_path / "arc.parquet"
    report = build_dataset(
        "arc", out, source=ARC, source_id="allenai/ai2_arc", card=tmp_path / "cards" / "arc.md", progress=False
    )
    card = DatasetCard.load(tmp_path / "cards" / "arc.md")
    entry = load_license_table(DATASET_LICENSE_TABLE, "datasets")["allenai/ai2_arc"]
    assert card.data.license == entry.license == "cc-by-sa-4.0"
    assert card.data.source_datasets == ["extended|allenai/ai2_arc"]
    assert "Source licence: **cc-by-sa-4.0**" in card.text and entry.source.split()[0] in card.text
    assert "(a local copy, `" in card.text and "ds_type: parquet" in card.text
    assert report.source_id == "allenai/ai2_arc" and report.skipped["malformed_answer"] == 1
    for reason, count in report.skipped.items():
        assert f"| `{reason}` | {count} |" in card.text


def test_dataset_licence_table_covers_every_builder_and_uses_the_model_tables_checks(tmp_path):
    table = load_license_table(DATASET_LICENSE_TABLE, "datasets")
    assert {b.hub_id for b in BUILDERS.values()} <= set(table)
    assert all(entry.source for entry in table.values())
    bad = tmp_path / "t.yaml"
    bad.write_text(yaml.safe_dump({"schema": 1, "datasets": {"a/b": {"license": "MIT-ish"}}}))
    with pytest.raises(UserError, match=r"datasets.a/b: license 'MIT-ish' is not a Hub licence id"):
        load_license_table(bad, "datasets")
    empty = _table(tmp_path, {})
    with pytest.raises(UserError, match="x/unknown is not in .*t.yaml, so the pairs cannot be published"):
        source_license("x/unknown", for_push=True, source="x/unknown", table_path=empty)
    assert source_license("x/unknown", for_push=False, source="x/unknown", table_path=empty) is None


def _table(tmp_path: Path, entries: dict) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"schema": 1, "datasets": entries}))
    return path


def test_push_with_an_unknown_licence_is_refused_before_any_work(tmp_path, capsys):
    for extra, message in (
        (["--source", str(ARC)], "it is a local file. If it is a copy of a Hub dataset, name it with --source-id"),
        (
            ["--source", str(ARC), "--source-id", "someone/arc-copy"],
            "the licence of the source someone/arc-copy is not in",
        ),
    ):
        code = smaug.cli.main(
            ["data", "build", "arc", *extra, "--out", str(tmp_path / "arc.jsonl"), "--push-to-hub", "org/arc-dpo"]
        )
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# The real `datasets` and huggingface_hub clients against tests/hub_server.py, in a subprocess (HF_ENDPOINT is
# read at import).
PUSH = textwrap.dedent("""
    import json, sys
    import datasets
    from huggingface_hub import DatasetCard
    from smaug.cli import main
    source, out = sys.argv[1], sys.argv[2]
    code = main(["data", "build", "arc", "--source", source, "--source-id", "allenai/ai2_arc", "--out", out,
                 "--eval-rows", "2", "--push-to-hub", "org/arc-dpo", "--no-progress"])
    card = DatasetCard.load("org/arc-dpo", repo_type="dataset")
    pushed = datasets.load_dataset("org/arc-dpo")
    print("RESULTS " + json.dumps({"code": code, "meta": card.data.to_dict(), "text": card.text,
                                   "splits": {name: split.to_list() for name, split in pushed.items()}}))
""")


def test_push_uploads_pairs_and_card_to_a_hub(tmp_path):
    from tests.hub_server import HubServer

    out = tmp_path / "arc.jsonl"
    with HubServer(FAKE_TOKEN) as hub:
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_TOKEN": FAKE_TOKEN,
            "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "hf_home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        }
        proc = subprocess.run(
            [sys.executable, "-c", PUSH, str(ARC), str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        results = json.loads(proc.stdout.split("RESULTS ", 1)[1])
        repo = hub.state.repos["datasets/org/arc-dpo"]
        assert repo.repo_type == "dataset"
        assert set(repo.files) == {
            ".gitattributes",
            "README.md",
            "data/train-00000-of-00001.parquet",
            "data/eval-00000-of-00001.parquet",
        }
        assert [c["title"] for c in repo.commits] == [
            "initial commit",
            "Dataset card (smaug data build)",
            "Upload pairs (smaug data build)",
        ]
    assert results["code"] == 0
    report = json.loads(report_path(out).read_text())
    assert report["pushed_to"] == "org/arc-dpo" and report["card"] is None
    # The pushed splits are the written files, row for row.
    local = {"train": out, "eval": eval_path(out)}
    for split, path in local.items():
        assert results["splits"][split] == [json.loads(line) for line in path.read_text().splitlines()]
    # `datasets` merged its metadata into our card: our licence and text are kept, its split sizes added.
    meta = results["meta"]
    assert meta["license"] == "cc-by-sa-4.0" and meta["source_datasets"] == ["extended|allenai/ai2_arc"]
    sizes = {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]}
    assert sizes == {"train": report["pairs"], "eval": report["eval"]["pairs"]}
    assert [c["config_name"] for c in meta["configs"]] == ["default"]
    text = results["text"]
    assert BUILDERS["arc"].construction({}) in text
    assert "Published as [org/arc-dpo](https://huggingface.co/datasets/org/arc-dpo), splits `train` and `eval`." in text
    assert "path: org/arc-dpo" in text
    assert FAKE_TOKEN not in proc.stdout + proc.stderr
