"""The generated recipes: grids of `datasets x losses x settings` over a base recipe, as recipes/generate.yaml
describes. `smaug recipes generate` writes them; `--check` (and a test) says which committed files differ from
the generator's output.

recipes/generate.yaml names each dataset block and each loss once; a grid's `matrices` say which combinations
to write (e.g. Figure 2: two datasets x four losses; Figure 3 left: one dataset x two losses x three betas).
A cell that two matrices share (the centre of a sweep) is one recipe, listed with every figure and chain it
belongs to.
"""

from __future__ import annotations

import itertools
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smaug.common.errors import UserError
from smaug.common.paths import RECIPES_DIR, rel
from smaug.training.recipes import derive_recipe, dump_recipe

GENERATE_SPEC = RECIPES_DIR / "generate.yaml"
# A matrix key other than these is a setting axis: `axes` in generate.yaml maps it to a recipe key.
_MATRIX_KEYS = {"reproduces", "chain", "datasets", "losses"}
# Header fills that are prose (wrapped to the line width); commands and paths are never wrapped.
_PROSE_FILLS = ("{title}", "{notes}", "{reproduces}")
_GRID_KEYS = {"base", "file", "output_dir", "dataset_prepared_path", "dataset_entry", "title", "matrices"}


@dataclass
class Cell:
    """One generated recipe: where it comes from and which figures and chains it belongs to."""

    name: str
    grid: str
    dataset: str | None
    loss: str
    settings: dict[str, Any]  # recipe key -> value, after the base, the loss and the axes are merged
    body: dict[str, Any]
    reproduces: list[str] = field(default_factory=list)
    chains: list[str] = field(default_factory=list)


def _header(base_text: str) -> list[str]:
    lines = []
    for line in base_text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def _wrap_comment(line: str, width: int = 116) -> list[str]:
    """A filled-in header line, wrapped as a comment at the same indentation (continuations indented more)."""
    if len(line) <= width:
        return [line]
    prefix = re.match(r"#\s*", line).group(0)
    more = "  " if re.match(r"#\s+\S[^:]*:\s", line) and len(prefix) > 2 else ""
    return textwrap.wrap(
        line[len(prefix) :],
        width,
        initial_indent=prefix,
        subsequent_indent=prefix + more,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _need(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or mapping.get(key) in (None, "", [], {}):
        raise UserError(f"{where}: missing `{key}`")
    return mapping[key]


def _format(template: str, where: str, **values: Any) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError) as err:
        raise UserError(
            f"{where}: {template!r} uses {{{err.args[0]}}}, which is not one of "
            f"{', '.join('{' + k + '}' for k in values)}"
        ) from None


class _Spec:
    def __init__(self, spec_path: Path):
        self.path = spec_path
        self.where = rel(spec_path)
        try:
            spec = yaml.safe_load(spec_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UserError(f"{self.where}: cannot read the generator spec ({err})") from None
        for key in ("datasets", "losses", "grids"):
            if not isinstance(spec.get(key), dict):
                raise UserError(f"{self.where}: needs a `{key}:` mapping (see the comment at its top)")
        unknown = set(spec) - {"datasets", "losses", "axes", "grids"}
        if unknown:
            raise UserError(f"{self.where}: unknown top-level key(s) {sorted(unknown)}")
        self.datasets: dict[str, dict] = spec["datasets"]
        self.losses: dict[str, dict] = spec["losses"]
        self.axes: dict[str, str] = spec.get("axes") or {}
        self.grids: dict[str, dict] = spec["grids"]

    def cells(self) -> dict[str, Cell]:
        cells: dict[str, Cell] = {}
        for grid_name, grid in self.grids.items():
            for cell in self._grid_cells(grid_name, grid):
                seen = cells.get(cell.name)
                if seen is None:
                    cells[cell.name] = cell
                    continue
                if seen.body != cell.body:
                    raise UserError(
                        f"{self.where}: two different cells both write recipes/{cell.name}; "
                        "give them different `file` names"
                    )
                seen.reproduces += [r for r in cell.reproduces if r not in seen.reproduces]
                seen.chains += [c for c in cell.chains if c not in seen.chains]
        return cells

    def _grid_cells(self, grid_name: str, grid: dict) -> list[Cell]:
        where = f"{self.where}: grids.{grid_name}"
        unknown = set(grid) - _GRID_KEYS
        if unknown:
            raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_GRID_KEYS)}")
        base_path = RECIPES_DIR / _need(grid, "base", where)
        if not base_path.is_file():
            raise UserError(f"{where}.base: {rel(base_path)} does not exist")
        base = yaml.safe_load(base_path.read_text())
        out = []
        for index, matrix in enumerate(_need(grid, "matrices", where)):
            mwhere = f"{where}.matrices[{index}]"
            axes = {k: v for k, v in matrix.items() if k not in _MATRIX_KEYS}
            for axis, values in axes.items():
                if axis not in self.axes:
                    raise UserError(
                        f"{mwhere}: {axis!r} is neither {sorted(_MATRIX_KEYS)} nor a setting axis "
                        f"of `axes:` ({', '.join(self.axes) or 'none defined'})"
                    )
                if not isinstance(values, list) or not values:
                    raise UserError(f"{mwhere}.{axis}: a non-empty list of values")
            datasets = matrix.get("datasets") or [None]
            for dataset, loss, *point in itertools.product(datasets, _need(matrix, "losses", mwhere), *axes.values()):
                cell = self._cell(grid_name, grid, base, dataset, loss, dict(zip(axes, point)), mwhere)
                cell.reproduces.append(_need(matrix, "reproduces", mwhere))
                cell.chains.append(_need(matrix, "chain", mwhere))
                out.append(cell)
        return out

    def _cell(
        self, grid_name: str, grid: dict, base: dict, dataset: str | None, loss: str, point: dict[str, Any], where: str
    ) -> Cell:
        if loss not in self.losses:
            raise UserError(f"{where}: loss {loss!r} is not defined under `losses:` ({', '.join(self.losses)})")
        body = derive_recipe(base, self.losses[loss].get("overrides") or {})
        overrides: dict[str, Any] = {}
        if dataset is not None:
            if dataset not in self.datasets:
                raise UserError(
                    f"{where}: dataset {dataset!r} is not defined under `datasets:` ({', '.join(self.datasets)})"
                )
            block = self.datasets[dataset]
            entry = {
                "path": _need(block, "path", f"{self.where}: datasets.{dataset}"),
                **(grid.get("dataset_entry") or {}),
            }
            overrides["datasets"] = [entry]
        suffix = ""
        for axis, value in point.items():
            key = self.axes[axis]
            if key not in body:
                raise UserError(
                    f"{where}: the {axis} axis sets `{key}`, which the {loss} loss does not use; "
                    "sweep it only over losses that keep it"
                )
            overrides[key] = value
            if value != base.get(key):  # the base's own value is the centre of the sweep: no suffix
                suffix += f"_{axis}{value}"
        fields = {"dataset": dataset or "", "loss": loss, "point": suffix}
        name = _format(_need(grid, "file", where), where, **fields)
        fields["name"] = name.removesuffix(".yml")
        for key in ("output_dir", "dataset_prepared_path"):
            if grid.get(key):
                overrides[key] = _format(grid[key], where, **fields)
        body = derive_recipe(body, overrides)
        settings = {k: body[k] for k in self.axes.values() if k in body}
        settings.update(
            {
                k: body[k]
                for k in (self.losses[loss].get("overrides") or {})
                if k in body and k != "rl" and k not in settings and not isinstance(body[k], (list, dict))
            }
        )
        return Cell(name, grid_name, dataset, loss, settings, body)

    def render(self, cell: Cell) -> str:
        grid = self.grids[cell.grid]
        loss = self.losses[cell.loss]
        dataset = self.datasets.get(cell.dataset or "", {})
        settings_text = ", ".join(f"{key} {value}" for key, value in cell.settings.items())
        fills = {
            "{title}": _format(
                _need(grid, "title", f"{self.where}: grids.{cell.grid}"),
                self.where,
                dataset=dataset.get("title", ""),
                loss=loss.get("title", cell.loss),
                settings=settings_text,
            ),
            "{notes}": loss.get("notes", ""),
            "{reproduces}": "; ".join(cell.reproduces),
            "{recipe}": cell.name,
            "{chain}": cell.chains[0],
            "{chains}": ", ".join(cell.chains),
            "{output_dir}": str(cell.body.get("output_dir", "")),
        }
        header = []
        for line in _header((RECIPES_DIR / grid["base"]).read_text()):
            if line.strip() == "#{loss_settings}":  # the loss's own keys and where each value comes from
                for key, text in (loss.get("settings") or {}).items():
                    header += _wrap_comment(f"#   {key}: {text}")
                continue
            prose = any(key in line for key in _PROSE_FILLS)
            for key, value in fills.items():
                line = line.replace(key, value)
            header += _wrap_comment(line) if prose else [line]
        return dump_recipe(cell.body, "\n".join(header))


def generated_cells(spec_path: Path = GENERATE_SPEC) -> dict[str, Cell]:
    """{file name under recipes/: Cell} for every recipe recipes/generate.yaml describes."""
    return _Spec(spec_path).cells()


def generated_recipes(spec_path: Path = GENERATE_SPEC) -> dict[str, str]:
    """{file name under recipes/: full text} for every recipe recipes/generate.yaml describes."""
    spec = _Spec(spec_path)
    return {name: spec.render(cell) for name, cell in spec.cells().items()}


def stale_generated(spec_path: Path = GENERATE_SPEC) -> list[str]:
    """Names of generated recipes whose committed file differs from the generator's output (or is missing)."""
    stale = []
    for name, text in generated_recipes(spec_path).items():
        target = RECIPES_DIR / name
        if not target.is_file() or target.read_text() != text:
            stale.append(name)
    return stale
