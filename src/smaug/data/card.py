"""Dataset cards of built pairs (`smaug data build --card [PATH]`, `--push-to-hub`): huggingface_hub's `DatasetCard`,
its body rendered from `model_cards/dataset_card_template.md` with the build report alone. The pairs are derived
from the source, so the card states the source's licence (`model_cards/dataset_licenses.yaml`); an unknown one is
`unknown` on a local card and refused for a push."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from axolotl_dpop.atomic import atomic_write
from smaug.common.errors import UserError
from smaug.common.licenses import LICENSE_URLS, LicenseEntry, load_license_table
from smaug.common.paths import MODEL_CARDS_DIR
from smaug.data.io import BuildReport

DATASET_LICENSE_TABLE = MODEL_CARDS_DIR / "dataset_licenses.yaml"
DATASET_CARD_TEMPLATE = MODEL_CARDS_DIR / "dataset_card_template.md"
CARD_MEASURES = ("char_levenshtein", "char_hamming")
# Marks a card written for one output, so a rebuild may replace it and nothing else.
_MARKER = "<!-- smaug data build: dataset card of {name} -->"
PAPER = "https://arxiv.org/abs/2402.13228"


def source_license(
    source_id: str | None, *, for_push: bool, source: str, table_path: str | Path = DATASET_LICENSE_TABLE
) -> LicenseEntry | None:
    """The table entry of ``source_id``; None when unknown, which a push refuses (never guessed)."""
    table = Path(table_path)
    entry = load_license_table(table, "datasets").get(source_id) if source_id else None
    if entry is not None or not for_push:
        return entry
    if source_id is None:
        raise UserError(
            f"the licence of the source {source} is not known: it is a local file. If it is a copy of a Hub dataset, "
            f"name it with --source-id ORG/NAME (its licence is then read from {table}); otherwise write the card "
            "without --push-to-hub (`--card`; its licence is marked unknown)"
        )
    raise UserError(
        f"the licence of the source {source_id} is not in {table}, so the pairs cannot be published with a card. "
        f"Read it on https://huggingface.co/datasets/{source_id} and add under `datasets:`:\n\n  {source_id}:\n"
        "    parent: null\n    license: <Hub licence id from its card, e.g. mit, apache-2.0, cc-by-sa-4.0, other>\n"
        f"    source: <where you read it, e.g. https://huggingface.co/datasets/{source_id}/blob/main/README.md>\n"
    )


def card_path(out: str | Path, card: bool | str | Path) -> Path:
    """README.md next to ``out`` for ``card=True`` (or ""), else the .md path given."""
    if card is True or card == "":
        return Path(out).parent / "README.md"
    if Path(card).suffix.lower() != ".md":
        raise UserError(f"--card {card}: a dataset card is a Markdown file; give a .md path (or just --card)")
    return Path(card)


def check_card_target(path: Path, out: str | Path) -> None:
    """Refuse to replace a file at ``path`` unless it is the card written for the same output."""
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else None
    except (OSError, UnicodeDecodeError):
        text = ""
    if text is not None and _MARKER.format(name=Path(out).name) not in text:
        raise UserError(
            f"the dataset card {path} exists and is not the card of {Path(out).name}; pass --card OTHER.md, or "
            "move that file"
        )


def distance_summary(pairs: list[dict[str, str]], eval_pairs: list[dict[str, str]]) -> dict[str, Any]:
    """Normalised mean and median (and raw mean) of each card measure, per split."""
    from smaug.data.stats import MEASURES, PAPER_MEASURE, distance_stats

    out: dict[str, Any] = {"paper_measure": PAPER_MEASURE, "definitions": {m: MEASURES[m][2] for m in CARD_MEASURES}}
    for split, split_pairs in (("train", pairs), ("eval", eval_pairs)):
        if split_pairs:
            d = distance_stats([p["chosen"] for p in split_pairs], [p["rejected"] for p in split_pairs])
            out[split] = {
                m: {**{k: d[m]["normalised"][k] for k in ("mean", "median")}, "raw_mean": d[m]["raw"]["mean"]}
                for m in CARD_MEASURES
            }
    return out


def _size_category(n: int) -> str:
    for limit, label in ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M" if n < 10**7 else "10M<n<100M"


def _command(report: BuildReport) -> str:
    """The `smaug data build` line that rebuilds these files."""
    parts = ["smaug data build", report.builder, "--source", report.source, "--out", Path(report.output).name]
    if report.source_kind != "file" and report.config:
        parts += ["--config", report.config]
    if report.split != "train":
        parts += ["--split", report.split]
    if report.source_id and report.source_kind != "hub":
        parts += ["--source-id", report.source_id]
    if report.limit:
        parts += ["--limit", str(report.limit)]
    parts += ["--seed", str(report.seed)] + (["--few-shot", str(report.few_shot)] if report.few_shot else [])
    if report.options.get("fallback") is False:
        parts.append("--intermediate-only")
    if "format" in report.options:
        parts += ["--format", report.options["format"]]
    if report.eval:
        ev = report.eval
        parts += ["--eval-split", ev.source_split] if ev.source_split else ["--eval-rows", str(ev.rows)]
    return " ".join(parts)


def render_dataset_card(
    report: BuildReport,
    licence: LicenseEntry | None,
    *,
    repo_id: str | None = None,
    template_path: Path = DATASET_CARD_TEMPLATE,
):
    """The `DatasetCard` of a build (`report` with its `edit_distance`), not yet written."""
    import huggingface_hub
    from huggingface_hub import DatasetCard, DatasetCardData

    source_id, ev = report.source_id, report.eval
    title = f"{report.builder} preference pairs" + (f" from {source_id}" if source_id else "")
    other = licence is not None and licence.license == "other"
    card_data = DatasetCardData(
        pretty_name=title,
        license=licence.license if licence else "unknown",
        language=["en"],
        task_categories=["text-generation"],
        size_categories=[_size_category(report.pairs + (ev.pairs if ev else 0))],
        source_datasets=[f"extended|{source_id}"] if source_id else None,
        tags=["dpo", "dpop", "preference", "smaug-dpop", report.builder],
        license_name=licence.license_name if other else None,
        license_link=licence.license_link if other else None,
    )
    train_rows = report.rows_read - (ev.rows + ev.rows_left_out if ev and not ev.source_split else 0)
    split_rows = [("train", Path(report.output).name, train_rows, report.pairs, report.skipped_total)]
    if ev:
        split_rows.append(("eval", Path(ev.output).name, ev.rows, ev.pairs, ev.skipped_total))
    distances = report.edit_distance
    return DatasetCard.from_template(
        card_data,
        template_path=str(template_path),
        title=title,
        marker=_MARKER.format(name=Path(report.output).name),
        report=report,
        source_id=source_id,
        local_source=report.source if report.source != source_id else None,
        licence=licence,
        licence_display=licence.describe() if licence else None,
        licence_url=(licence.license_link or licence.url or LICENSE_URLS.get(licence.license)) if licence else None,
        licence_table=str(DATASET_LICENSE_TABLE.relative_to(MODEL_CARDS_DIR.parent)),
        split_rows=split_rows,
        skip_rows=[
            (reason, report.skipped.get(reason, 0), ev.skipped.get(reason, 0) if ev else None)
            for reason in sorted(set(report.skipped) | set(ev.skipped if ev else {}))
        ],
        corrupted=sorted((report.corrupted or {}).items()),
        distance_rows=[(split, distances[split]) for split in ("train", "eval") if split in distances],
        definitions=distances["definitions"],
        command=_command(report),
        repo_id=repo_id,
        paper=PAPER,
        versions=sorted({**report.versions, "huggingface_hub": huggingface_hub.__version__}.items()),
    )


def write_dataset_card(path: str | Path, card) -> Path:
    """Write the card atomically once it loads back through `DatasetCard.load` with the same metadata and text."""
    from huggingface_hub import DatasetCard

    def write_and_check(tmp: Path) -> None:
        tmp.write_text(str(card), encoding="utf-8")
        loaded = DatasetCard.load(tmp)
        if loaded.data.to_dict() != card.data.to_dict() or loaded.text != card.text:
            raise RuntimeError(f"{path}: card does not round-trip through DatasetCard.load")

    return atomic_write(path, write_and_check)
