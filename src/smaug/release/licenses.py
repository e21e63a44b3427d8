"""The licence a model inherits through every stage of its lineage, from model_cards/licenses.yaml.

Each table entry records where its facts were read; an unknown lineage is refused with the entry to add,
never guessed. Cards and publishing both ask `resolve_license`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from smaug.common.errors import UserError
from smaug.common.hub import repo_id_problem
from smaug.common.paths import MODEL_CARDS_DIR
from smaug.release.provenance import LineageStage, local_stages

LICENSE_TABLE = MODEL_CARDS_DIR / "licenses.yaml"

# Licence identifiers the Hub accepts in card metadata, copied from huggingface/hub-docs
# docs/hub/repositories-licenses.md (the "region licenses" table). Kept in code because the Hub's own
# validation endpoint cannot be reached offline.
HUB_LICENSE_IDS = frozenset(
    """
    apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0
    bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc
    cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0
    cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0
    cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1
    agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0 odc-by odbl openrail++
    osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 gemma unknown other
    """.split()
)
LICENSE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")  # `license_name` is a slug on the Hub
LICENSE_URLS = {"apache-2.0": "https://www.apache.org/licenses/LICENSE-2.0", "mit": "https://opensource.org/license/mit"}


@dataclass
class LicenseEntry:
    model: str
    license: str
    license_name: str | None = None
    license_link: str | None = None
    url: str | None = None
    parent: str | None = None
    supersedes_parent: str | None = None
    source: str | None = None

    def same_terms(self, other: "LicenseEntry") -> bool:
        return (self.license, self.license_name) == (other.license, other.license_name)

    def describe(self) -> str:
        return self.license_name if self.license == "other" else self.license


def license_fields_problem(license_id: Any, name: Any, link: Any) -> str | None:
    """Why these licence fields would not pass the Hub's metadata checks (None when they would)."""
    if license_id not in HUB_LICENSE_IDS:
        return f"license {license_id!r} is not a Hub licence id (see HUB_LICENSE_IDS / hub-docs repositories-licenses.md)"
    if license_id == "other":
        if not isinstance(name, str) or not LICENSE_NAME_RE.match(name):
            return "license: other needs license_name, a lowercase slug such as `yi-license`"
        if not isinstance(link, str) or not link.startswith(("https://", "http://")):
            return "license: other needs license_link, an absolute URL to the licence text"
    return None


def load_license_table(path: str | Path = LICENSE_TABLE) -> dict[str, LicenseEntry]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot read the licence table ({err}).") from err
    if not isinstance(raw, dict) or raw.get("schema") != 1 or not isinstance(raw.get("models"), dict):
        raise UserError(f"{path}: expected `schema: 1` and a `models:` mapping of Hub id -> licence fields.")
    table: dict[str, LicenseEntry] = {}
    known = {f for f in LicenseEntry.__dataclass_fields__ if f != "model"}
    for model, fields in raw["models"].items():
        if not isinstance(fields, dict) or "license" not in fields:
            raise UserError(f"{path}: models.{model}: needs at least `license:`.")
        unknown = set(fields) - known
        if unknown:
            raise UserError(f"{path}: models.{model}: unknown field(s) {sorted(unknown)}; allowed: {sorted(known)}.")
        for what, repo_id in ((f"models.{model}", model), (f"models.{model}.parent", fields.get("parent"))):
            problem = repo_id_problem(repo_id) if repo_id is not None else None
            if problem:
                raise UserError(f"{path}: {what}: {repo_id!r} is not a Hub repo id: {problem}.")
        entry = LicenseEntry(model=model, **fields)
        problem = license_fields_problem(entry.license, entry.license_name, entry.license_link)
        if problem:
            raise UserError(f"{path}: models.{model}: {problem}.")
        table[model] = entry
    for entry in table.values():
        if entry.parent is not None and entry.parent not in table:
            raise UserError(f"{path}: models.{entry.model}.parent {entry.parent!r} is not in the table; add it too.")
    return table


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


def resolve_license(model_dir: str | Path, table: dict[str, LicenseEntry] | None = None,
                    table_path: str | Path = LICENSE_TABLE) -> Lineage:
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
            model=stages[-1].name, license=scratch["license"], license_name=scratch.get("license_name"),
            license_link=scratch.get("license_link"), url=scratch.get("license_link"),
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
