"""The licence a model inherits through every stage of its lineage, from model_cards/licenses.yaml.

Each table entry records where its facts were read; an unknown lineage is refused with the entry to add,
never guessed. Cards and publishing both ask `resolve_license`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smaug.common.errors import UserError

# The table format, its checks and the Hub's licence ids live in common/ (dataset cards read a table too);
# they are re-exported here for the code that imports them from this module.
from smaug.common.licenses import (  # noqa: F401
    HUB_LICENSE_IDS,
    LICENSE_NAME_RE,
    LICENSE_URLS,
    LicenseEntry,
    license_fields_problem,
    load_license_table,
)
from smaug.common.paths import MODEL_CARDS_DIR
from smaug.release.provenance import LineageStage, local_stages

LICENSE_TABLE = MODEL_CARDS_DIR / "licenses.yaml"


def missing_entry_message(hub_id: str, lineage: list[str], table_path: Path) -> str:
    chain = " <- ".join(lineage + [hub_id])
    return (
        f"no licence is known for base model {hub_id!r} (lineage: {chain}), so no card can be written.\n"
        f"Read the licence on https://huggingface.co/{hub_id} and add it to {table_path} under `models:`:\n\n"
        f"  {hub_id}:\n"
        f"    parent: null            # or the Hub id it was trained from, if that is in the table too\n"
        f"    license: <Hub licence id from its card, e.g. apache-2.0, llama2, other>\n"
        f"    license_name: <only with license: other, e.g. yi-license>\n"
        f"    license_link: <only with license: other: absolute URL of the licence text>\n"
        f"    source: <where you read it, e.g. https://huggingface.co/{hub_id}/blob/main/README.md>\n"
    )


@dataclass
class Lineage:
    """Who a model descends from, oldest first, and the licence that decides it."""

    stages: list[LineageStage]  # local stages, newest first (stages[0] is the model itself)
    hub_chain: list[LicenseEntry]  # Hub ancestors from the table, most derived first
    license: LicenseEntry  # the licence the model inherits
    decided_by: str  # which member decided it


def resolve_license(
    model_dir: str | Path, table: dict[str, LicenseEntry] | None = None, table_path: str | Path = LICENSE_TABLE
) -> Lineage:
    """The licence ``model_dir`` inherits through every stage of its lineage.

    The rule: walk the local stages (provenance `parent` chain) to the Hub model they started from, then up
    that model's table `parent`s. The licence is that of the most-derived table entry (a derived model's own
    card already reflects its parent). A table entry whose terms differ from its parent's is a conflict and is
    refused unless the entry says why in `supersedes_parent`. A model we created from scratch (provenance
    `license` set) ends the lineage with its own licence. Unknown lineages are refused, never guessed."""
    table_path = Path(table_path)
    table = load_license_table(table_path) if table is None else table
    stages, hub_base = local_stages(model_dir)
    if hub_base is None:  # oldest stage is ours, from scratch
        scratch = stages[-1].provenance
        entry = LicenseEntry(
            model=stages[-1].name,
            license=scratch["license"],
            license_name=scratch.get("license_name"),
            license_link=scratch.get("license_link"),
            url=scratch.get("license_link"),
            source=f"`license` in {stages[-1].where}",
        )
        problem = license_fields_problem(entry.license, entry.license_name, entry.license_link)
        if problem:
            raise UserError(f"{stages[-1].where}: {problem}.")
        return Lineage(stages, [], entry, decided_by=f"{stages[-1].name} (created from scratch)")
    if hub_base not in table:
        lineage = [s.name for s in stages]
        raise UserError(missing_entry_message(hub_base, lineage, table_path))
    chain = [table[hub_base]]
    seen = {hub_base}
    while chain[-1].parent is not None:  # any finite depth; only a real cycle is refused
        if chain[-1].parent in seen:
            loop = " -> ".join([e.model for e in chain] + [chain[-1].parent])
            raise UserError(f"{table_path}: the `parent` chain of {hub_base} is a cycle ({loop}); fix the table.")
        seen.add(chain[-1].parent)
        chain.append(table[chain[-1].parent])
    for child, parent in zip(chain, chain[1:]):
        if not child.same_terms(parent) and not child.supersedes_parent:
            raise UserError(
                f"{table_path}: licence conflict in the lineage of {hub_base}: {child.model} says "
                f"{child.describe()!r} but its parent {parent.model} says {parent.describe()!r}. Check both cards; "
                f"if {child.model}'s licence really replaces its parent's, add `supersedes_parent: <why, with a "
                f"link>` to its entry, otherwise correct the entry."
            )
    return Lineage(stages, chain, chain[0], decided_by=chain[0].model)
