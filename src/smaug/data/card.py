"""Dataset cards for built pair datasets: `smaug data build ... --card [PATH]` and `--push-to-hub`.

The card is huggingface_hub's `DatasetCard` with `DatasetCardData` metadata and a body rendered from the Jinja
template `model_cards/dataset_card_template.md`. Everything on it comes from the build report (`<out>.build.json`:
source, seed, few-shot K, options, counts, skip reasons, the eval split, the builder's construction rule from
`Builder.construction`), the edit-distance statistics of `smaug.data.stats` and the dataset licence table
`model_cards/dataset_licenses.yaml` (read with the model licence table's loader, `smaug.common.licenses`).
Its sections follow the datasheet the paper's authors published with their pairs (motivation, composition,
collection, preprocessing, distribution).

Licence rule: the pairs are derived from the source, so the card states the source's licence as theirs. A
source that is not in the table (or a local file without `--source-id`) gets `license: unknown` and a note
saying why on a local card; `--push-to-hub` refuses it before any work, with the table entry to add.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from axolotl_dpop.atomic import atomic_write
from smaug.common.errors import UserError
from smaug.common.licenses import LICENSE_URLS, LicenseEntry, load_license_table
from smaug.common.paths import MODEL_CARDS_DIR

DATASET_LICENSE_TABLE = MODEL_CARDS_DIR / "dataset_licenses.yaml"
DATASET_CARD_TEMPLATE = MODEL_CARDS_DIR / "dataset_card_template.md"
# The edit-distance measures a card reports: character Levenshtein and the paper's character Hamming.
CARD_MEASURES = ("char_levenshtein", "char_hamming")
# Marks a card this module wrote for one output, so a rebuild may replace it and nothing else.
_MARKER = "<!-- smaug data build: dataset card of {name} -->"
PAPER = "https://arxiv.org/abs/2402.13228"


def missing_licence_message(source_id: str | None, source: str, table: Path) -> str:
    if source_id is None:
        return (
            f"the licence of the source {source} is not known: it is a local file. If it is a copy of a Hub "
            f"dataset, name it with --source-id ORG/NAME (its licence is then read from {table}); otherwise "
            "write the card without --push-to-hub (`--card`; its licence is marked unknown)"
        )
    return (
        f"the licence of the source {source_id} is not in {table}, so the pairs cannot be published with a "
        f"card. Read it on https://huggingface.co/datasets/{source_id} and add under `datasets:`:\n\n"
        f"  {source_id}:\n"
        "    parent: null\n"
        "    license: <Hub licence id from its card, e.g. mit, apache-2.0, cc-by-sa-4.0, other>\n"
        f"    source: <where you read it, e.g. https://huggingface.co/datasets/{source_id}/blob/main/README.md>\n"
    )


def source_license(
    source_id: str | None, *, for_push: bool, source: str, table_path: str | Path = DATASET_LICENSE_TABLE
) -> LicenseEntry | None:
    """The table entry of ``source_id``; None when unknown, which a push refuses (never guessed)."""
    table_path = Path(table_path)
    entry = load_license_table(table_path, "datasets").get(source_id) if source_id else None
    if entry is None and for_push:
        raise UserError(missing_licence_message(source_id, source, table_path))
    return entry


def card_path(out: str | Path, card: bool | str | Path) -> Path:
    """Where the card goes: README.md next to ``out`` for ``card=True`` (or ""), else the path given."""
    if card is True or card == "":
        return Path(out).parent / "README.md"
    path = Path(card)
    if path.suffix.lower() != ".md":
        raise UserError(f"--card {path}: a dataset card is a Markdown file; give a .md path (or just --card)")
    return path


def check_card_target(path: Path, out: str | Path) -> None:
    """Refuse to replace a file at ``path`` unless it is the card this module wrote for the same output."""
    if not path.exists():
        return
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    if _MARKER.format(name=Path(out).name) not in text:
        raise UserError(
            f"the dataset card {path} exists and is not the card of {Path(out).name}; pass --card "
            "OTHER.md, or move that file"
        )


def distance_summary(pairs: list[dict[str, str]], eval_pairs: list[dict[str, str]] | None) -> dict[str, Any]:
    """Normalised mean and median (and raw mean) of each card measure, per split."""
    from smaug.data.stats import MEASURES, PAPER_MEASURE, distance_stats

    out: dict[str, Any] = {
        "paper_measure": PAPER_MEASURE,
        "definitions": {name: MEASURES[name][2] for name in CARD_MEASURES},
    }
    for split, split_pairs in (("train", pairs), ("eval", eval_pairs)):
        if not split_pairs:
            continue
        distances = distance_stats([p["chosen"] for p in split_pairs], [p["rejected"] for p in split_pairs])
        out[split] = {
            name: {
                "mean": distances[name]["normalised"]["mean"],
                "median": distances[name]["normalised"]["median"],
                "raw_mean": distances[name]["raw"]["mean"],
            }
            for name in CARD_MEASURES
        }
    return out


def _size_category(n: int) -> str:
    for limit, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ):
        if n < limit:
            return label
    return "10M<n<100M"


def _command(report: dict[str, Any]) -> str:
    """The `smaug data build` line that rebuilds these files."""
    parts = ["smaug data build", report["builder"], "--source", report["source"], "--out", Path(report["output"]).name]
    if report.get("source_kind") != "file" and report.get("config"):
        parts += ["--config", report["config"]]
    if report.get("split") not in (None, "train"):
        parts += ["--split", report["split"]]
    if report.get("source_id") and report.get("source_kind") != "hub":
        parts += ["--source-id", report["source_id"]]
    for flag, key in (("--limit", "limit"), ("--seed", "seed"), ("--few-shot", "few_shot")):
        if report.get(key) is not None and (key == "seed" or report[key]):
            parts += [flag, str(report[key])]
    if report["options"].get("fallback") is False:
        parts.append("--intermediate-only")
    if "format" in report["options"]:
        parts += ["--format", report["options"]["format"]]
    if report.get("eval"):
        parts += ["--eval-rows", str(report["eval"]["rows"])]
    return " ".join(parts)


def render_dataset_card(
    report: dict[str, Any],
    licence: LicenseEntry | None,
    *,
    repo_id: str | None = None,
    template_path: str | Path = DATASET_CARD_TEMPLATE,
):
    """The `DatasetCard` of a build (not written; `write_dataset_card`). ``report`` is `build_dataset`'s
    report with `edit_distance` (`distance_summary`)."""
    import huggingface_hub
    from huggingface_hub import DatasetCard, DatasetCardData

    source_id = report.get("source_id")
    ev = report.get("eval")
    total = report["pairs"] + (ev["pairs"] if ev else 0)
    title = f"{report['builder']} preference pairs" + (f" from {source_id}" if source_id else "")
    card_data = DatasetCardData(
        pretty_name=title,
        license=licence.license if licence else "unknown",
        language=["en"],
        task_categories=["text-generation"],
        size_categories=[_size_category(total)],
        source_datasets=[f"extended|{source_id}"] if source_id else None,
        tags=["dpo", "dpop", "preference", "smaug-dpop", report["builder"]],
        license_name=licence.license_name if licence and licence.license == "other" else None,
        license_link=licence.license_link if licence and licence.license == "other" else None,
    )
    distances = report["edit_distance"]
    split_rows = [
        (
            "train",
            Path(report["output"]).name,
            report["rows_read"] - (ev["rows"] + ev["rows_left_out"] if ev else 0),
            report["pairs"],
            report["skipped_total"],
        )
    ]
    if ev:
        split_rows.append(("eval", Path(ev["output"]).name, ev["rows"], ev["pairs"], ev["skipped_total"]))
    skip_rows = sorted(set(report["skipped"]) | set(ev["skipped"] if ev else {}))
    card = DatasetCard.from_template(
        card_data,
        template_path=str(template_path),
        title=title,
        marker=_MARKER.format(name=Path(report["output"]).name),
        report=report,
        source_id=source_id,
        local_source=report["source"] if report["source"] != source_id else None,
        licence=licence,
        licence_display=licence.describe() if licence else None,
        licence_url=(licence.license_link or licence.url or LICENSE_URLS.get(licence.license)) if licence else None,
        licence_table=str(DATASET_LICENSE_TABLE.relative_to(MODEL_CARDS_DIR.parent)),
        split_rows=split_rows,
        skip_rows=[
            (reason, report["skipped"].get(reason, 0), (ev["skipped"].get(reason, 0) if ev else None))
            for reason in skip_rows
        ],
        corrupted=sorted((report.get("corrupted") or {}).items()),
        distance_rows=[(split, distances[split]) for split in ("train", "eval") if split in distances],
        definitions=distances["definitions"],
        command=_command(report),
        repo_id=repo_id,
        paper=PAPER,
        versions=sorted({**report["versions"], "huggingface_hub": huggingface_hub.__version__}.items()),
    )
    return card


def write_dataset_card(path: str | Path, card) -> Path:
    """Write the card atomically after checking that it loads back through `DatasetCard.load` with the same
    metadata and text."""
    from huggingface_hub import DatasetCard

    path = Path(path)

    def write_and_check(tmp: Path) -> None:
        tmp.write_text(str(card), encoding="utf-8")
        loaded = DatasetCard.load(tmp)
        if loaded.data.to_dict() != card.data.to_dict() or loaded.text != card.text:
            raise RuntimeError(f"{path}: card does not round-trip through DatasetCard.load")

    atomic_write(path, write_and_check)
    return path
