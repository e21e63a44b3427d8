"""A model's lineage, newest first: its local stages (each folder's `smaug_provenance.json`, through nested
`parent` records and local `base_model` folders), then the Hub ancestors of model_cards/licenses.yaml, and the
licence it inherits. An unknown lineage is refused with the table entry to add, never guessed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from axolotl_dpop.provenance import PROVENANCE_FILE, Provenance, read_provenance, validate_provenance
from smaug.common.errors import UserError, validation_error
from smaug.common.hub import display_name, looks_local
from smaug.common.licenses import LicenseEntry, load_license_table
from smaug.common.paths import MODEL_CARDS_DIR

LICENSE_TABLE = MODEL_CARDS_DIR / "licenses.yaml"


def load_provenance(model_dir: str | Path) -> Provenance:
    if not Path(model_dir).is_dir():
        raise UserError(f"{model_dir}: not a folder; pass the output folder of a training run")
    try:
        record = read_provenance(model_dir)
    except ValueError as err:  # one line naming the file and the field
        raise UserError(str(err)) from None
    if record is None:
        raise UserError(
            f"{Path(model_dir) / PROVENANCE_FILE}: missing, so the model's lineage, licence and training are unknown. "
            "The DPOP plugin writes it when `axolotl train` ends (list `axolotl_dpop.DPOPPlugin` under `plugins:`)."
        )
    return record


@dataclass
class LineageStage:
    provenance: Provenance
    where: str  # the file (and `parent` depth) it was read from, for messages
    name: str  # what the card shows: a folder name, never a local absolute path


def local_stages(model_dir: str | Path) -> tuple[list[LineageStage], str | None]:
    """The local stages, newest first, at any depth, and the Hub id the oldest started from (None when it is a
    model we created from scratch: its `license` is set). A cycle can only come from `base_model`s naming local
    folders: it is found by the identity (device, inode) of each provenance file, however spelled."""
    current = Path(model_dir) / PROVENANCE_FILE
    stage = LineageStage(load_provenance(model_dir), str(current), display_name(str(model_dir)))
    read = {(current.stat().st_dev, current.stat().st_ino): str(current)}
    stages, nested = [], 0
    while True:
        stages.append(stage)
        record, base = stage.provenance, stage.provenance.base_model
        if record.license is not None:
            return stages, None
        if record.parent is not None:
            nested += 1
            where = f"{current}: `parent` #{nested}"  # #2 is the parent's parent
            try:
                stage = LineageStage(validate_provenance(record.parent, where), where, display_name(base))
            except ValueError as err:
                raise UserError(str(err)) from None
        elif base and Path(base).expanduser().is_dir():  # a local base recorded without nesting
            current, nested = Path(base).expanduser() / PROVENANCE_FILE, 0
            record = load_provenance(current.parent)
            identity = (current.stat().st_dev, current.stat().st_ino)
            if identity in read:
                raise UserError(
                    f"{stage.where}: base_model {base!r} leads back to {read[identity]}, which is already in this "
                    "lineage: the lineage is a cycle. Point base_model at the model this stage really started from."
                )
            read[identity] = str(current)
            stage = LineageStage(record, str(current), display_name(base))
        elif not looks_local(base):
            return stages, base
        else:
            raise UserError(
                f"{stage.where}: base_model {base!r} is neither a Hub id (`org/name`) nor a local folder with "
                f"{PROVENANCE_FILE}, so its licence cannot be traced. Point base_model at the Hub id it came from, or "
                f"put a {PROVENANCE_FILE} into that folder."
            )


@dataclass
class Lineage:
    stages: list[LineageStage]  # local stages, newest first
    hub_chain: list[LicenseEntry]  # Hub ancestors from the table, most derived first
    license: LicenseEntry  # the licence the model inherits
    decided_by: str


def resolve_license(model_dir: str | Path, table_path: str | Path = LICENSE_TABLE) -> Lineage:
    """The licence of the most-derived table entry the local stages lead to (that model's own card already
    reflects its parents); an entry whose terms differ from its parent's is a conflict unless it says why in
    `supersedes_parent`. A model created from scratch ends the lineage with its own licence."""
    table_path = Path(table_path)
    table = load_license_table(table_path)
    stages, hub_base = local_stages(model_dir)
    if hub_base is None:
        oldest, record = stages[-1], stages[-1].provenance
        try:
            entry = LicenseEntry(
                model=oldest.name,
                license=record.license,
                license_name=record.license_name,
                license_link=record.license_link,
                url=record.license_link,
                source=f"`license` in {oldest.where}",
            )
        except ValidationError as err:
            raise validation_error(err, oldest.where) from None
        return Lineage(stages, [], entry, decided_by=f"{oldest.name} (created from scratch)")
    if hub_base not in table:
        chain = " <- ".join([s.name for s in stages] + [hub_base])
        stanza = (
            "parent: null  # or its Hub parent in the table\nlicense: <its card's licence id>\nsource: <where read>"
        )
        raise UserError(
            f"no licence is known for base model {hub_base!r} (lineage: {chain}), so no card can be written. Read "
            f"https://huggingface.co/{hub_base} and add to {table_path} under `models:` (license: other also needs "
            f"license_name and license_link):\n  {hub_base}:\n"
            + "".join(f"    {line}\n" for line in stanza.splitlines())
        )
    chain = [table[hub_base]]
    while chain[-1].parent is not None:  # any finite depth; only a real cycle is refused
        if chain[-1].parent in {entry.model for entry in chain}:
            loop = " -> ".join([entry.model for entry in chain] + [chain[-1].parent])
            raise UserError(f"{table_path}: the `parent` chain of {hub_base} is a cycle ({loop}); fix the table.")
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
