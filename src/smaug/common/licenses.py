"""Licence tables (`model_cards/licenses.yaml` for model cards, `dataset_licenses.yaml` for dataset cards): which
licence a Hub model or dataset declares and where that was read, checked so the Hub would accept it on a card."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from smaug.common.errors import UserError, validation_error
from smaug.common.hub import repo_id_problem
from smaug.common.paths import MODEL_CARDS_DIR

# Licence identifiers the Hub accepts in card metadata, copied from huggingface/hub-docs
# docs/hub/repositories-licenses.md: its validation endpoint cannot be reached offline.
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
LICENSE_URLS = {
    "apache-2.0": "https://www.apache.org/licenses/LICENSE-2.0",
    "mit": "https://opensource.org/license/mit",
}


def license_fields_problem(license_id: object, name: object, link: object) -> str | None:
    """Why these licence fields would not pass the Hub's metadata checks (None when they would)."""
    if license_id not in HUB_LICENSE_IDS:
        return f"license {license_id!r} is not a Hub licence id (see hub-docs repositories-licenses.md)"
    if license_id == "other" and not (isinstance(name, str) and LICENSE_NAME_RE.match(name)):
        return "license: other needs license_name, a lowercase slug such as `yi-license`"
    if license_id == "other" and not (isinstance(link, str) and link.startswith(("https://", "http://"))):
        return "license: other needs license_link, an absolute URL to the licence text"
    return None


class LicenseEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model: str  # the entry's Hub id: a model's, or a dataset's in the `datasets:` table
    license: str
    license_name: str | None = None
    license_link: str | None = None
    url: str | None = None
    parent: str | None = None
    supersedes_parent: str | None = None
    source: str | None = None

    @model_validator(mode="after")
    def _hub_accepts_it(self):
        problem = license_fields_problem(self.license, self.license_name, self.license_link)
        problem = problem or (
            self.parent and repo_id_problem(self.parent) and f"parent {self.parent!r} is not a Hub id"
        )
        if problem:
            raise ValueError(problem)
        return self

    def same_terms(self, other: LicenseEntry) -> bool:
        return (self.license, self.license_name) == (other.license, other.license_name)

    def describe(self) -> str:
        return self.license_name if self.license == "other" else self.license


def load_license_table(path: str | Path = MODEL_CARDS_DIR / "licenses.yaml", section: str = "models"):
    """The ``section`` of a licence table, every entry checked, every `parent` in the table."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot read the licence table ({err}).") from err
    if not isinstance(raw, dict) or raw.get("schema") != 1 or not isinstance(raw.get(section), dict):
        raise UserError(f"{path}: expected `schema: 1` and a `{section}:` mapping of Hub id -> licence fields.")
    table: dict[str, LicenseEntry] = {}
    for model, fields in raw[section].items():
        problem = repo_id_problem(model)
        if problem or not isinstance(fields, dict):
            raise UserError(f"{path}: {section}.{model}: {problem or 'needs at least `license:`'}.")
        try:
            table[model] = LicenseEntry(model=model, **fields)
        except ValidationError as err:
            raise validation_error(err, f"{path}: {section}.{model}") from None
    for entry in table.values():
        if entry.parent is not None and entry.parent not in table:
            raise UserError(f"{path}: {section}.{entry.model}.parent {entry.parent!r} is not in the table; add it too.")
    return table
