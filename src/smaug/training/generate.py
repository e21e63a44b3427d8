"""What `smaug recipes generate` writes: the recipes of recipes/generate.yaml (grids of datasets x losses x
settings over a base recipe) and the projected-cost table of recipes/README.md; `--check` (and a test) names
the committed files that differ from it."""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

from smaug.common.errors import UserError, validation_error
from smaug.common.paths import RECIPES_DIR, rel
from smaug.training import memory
from smaug.training.recipes import derive_recipe, dump_recipe, load_recipe

GENERATE_SPEC = RECIPES_DIR / "generate.yaml"
COST_TABLE = ("<!-- projected cost: written by `smaug recipes generate` -->", "<!-- end of projected cost -->")


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class DatasetBlock(_Strict):
    title: str
    path: str
    train_pairs: pydantic.PositiveInt


class Loss(_Strict):
    title: str
    notes: str = ""
    overrides: dict[str, Any] = {}
    settings: dict[str, str] = {}  # the loss's own keys: where each value comes from


class Matrix(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")  # any other key is a setting axis of `axes:`
    reproduces: str
    chain: str
    datasets: list[str] = pydantic.Field(min_length=1)
    losses: list[str] = pydantic.Field(min_length=1)


class Grid(_Strict):
    base: str
    file: str
    title: str
    output_dir: str = ""
    dataset_prepared_path: str = ""
    dataset_entry: dict[str, Any] = {}
    matrices: list[Matrix] = pydantic.Field(min_length=1)


class Spec(_Strict):
    datasets: dict[str, DatasetBlock]
    losses: dict[str, Loss]
    axes: dict[str, str] = {}  # axis name (in file names, e.g. _beta0.1) -> recipe key
    grids: dict[str, Grid]


@dataclass
class Cell:  # one generated recipe: where it comes from, which figures and chains it belongs to
    name: str
    grid: Grid
    dataset: str
    loss: str
    settings: dict[str, Any]  # the loss's and the axes' keys -> value
    body: dict[str, Any]
    reproduces: list[str] = field(default_factory=list)
    chains: list[str] = field(default_factory=list)


def _format(template: str, where: str, **values: Any) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError) as err:
        raise UserError(f"{where}: {template!r} uses {{{err.args[0]}}}, not one of {sorted(values)}") from None


class _Generator:
    def __init__(self, spec_path: Path):
        self.where = rel(spec_path)
        try:
            self.spec = Spec.model_validate(yaml.safe_load(spec_path.read_text()) or {})
        except pydantic.ValidationError as err:
            raise validation_error(err, self.where, " (see the comment at its top)") from None
        except (OSError, yaml.YAMLError) as err:
            raise UserError(f"{self.where}: cannot read it ({err})") from None
        self.chains = yaml.safe_load((RECIPES_DIR / "chains.yaml").read_text())  # as written: no plan needed

    def cells(self) -> dict[str, Cell]:
        cells: dict[str, Cell] = {}
        for grid_name, grid in self.spec.grids.items():
            base = load_recipe(RECIPES_DIR / grid.base)
            for index, matrix in enumerate(grid.matrices):
                where = f"{self.where}: grids.{grid_name}.matrices[{index}]"
                axes = dict(matrix.model_extra)
                for axis, values in axes.items():
                    if axis not in self.spec.axes or not isinstance(values, list) or not values:
                        raise UserError(
                            f"{where}.{axis}: not a list of values of an axis of `axes:` {list(self.spec.axes)}"
                        )
                for dataset, loss, *point in itertools.product(matrix.datasets, matrix.losses, *axes.values()):
                    cell = self._cell(grid, base, dataset, loss, dict(zip(axes, point)), where)
                    seen = cells.setdefault(cell.name, cell)
                    if seen.body != cell.body:
                        raise UserError(f"{where}: two different cells both write recipes/{cell.name}; rename `file`")
                    seen.reproduces += [matrix.reproduces] if matrix.reproduces not in seen.reproduces else []
                    seen.chains += [matrix.chain] if matrix.chain not in seen.chains else []
        return cells

    def _cell(self, grid: Grid, base: dict, dataset: str, loss: str, point: dict, where: str) -> Cell:
        for kind, name in (("losses", loss), ("datasets", dataset)):
            if name not in getattr(self.spec, kind):
                raise UserError(f"{where}: {name!r} is not one of `{kind}:` {list(getattr(self.spec, kind))}")
        own = self.spec.losses[loss].overrides
        body = derive_recipe(base, own)
        overrides: dict[str, Any] = {"datasets": [{"path": self.spec.datasets[dataset].path, **grid.dataset_entry}]}
        suffix = ""
        for axis, value in point.items():
            key = self.spec.axes[axis]
            if key not in body:
                raise UserError(f"{where}: the {axis} axis sets `{key}`, which the {loss} loss does not use")
            overrides[key] = value
            suffix += f"_{axis}{value}" if value != base.get(key) else ""  # the base's value: the sweep's centre
        fields = {"dataset": dataset, "loss": loss, "point": suffix}
        name = _format(grid.file, where, **fields)
        for key in ("output_dir", "dataset_prepared_path"):
            if getattr(grid, key):
                overrides[key] = _format(getattr(grid, key), where, name=Path(name).stem, **fields)
        body = derive_recipe(body, overrides)
        swept = [*self.spec.axes.values(), *(k for k in own if k != "rl" and not isinstance(body.get(k), (list, dict)))]
        return Cell(name, grid, dataset, loss, {k: body[k] for k in dict.fromkeys(swept) if k in body}, body)

    def epochs(self, cell: Cell) -> str:
        """The passes over the train split a run makes, from the recipe's batch and steps and its chain's GPUs."""
        gpus = int(self.chains[cell.chains[0]]["hardware"]["gpus"])
        pairs = cell.body["micro_batch_size"] * cell.body["gradient_accumulation_steps"] * gpus
        seen, data = pairs * cell.body["max_steps"], self.spec.datasets[cell.dataset]
        return (
            f"At {pairs} pairs per step ({gpus} GPUs): {seen:,} pairs, {seen / data.train_pairs:.3g} epochs of the "
            f"{data.train_pairs:,} {data.title} training pairs."
        )

    def render(self, cell: Cell) -> str:
        """The base's header, filled in (a multi-line value's lines indented under its first), and the recipe."""
        loss, settings = self.spec.losses[cell.loss], ", ".join(f"{k} {v}" for k, v in cell.settings.items())
        title = self.spec.datasets[cell.dataset].title
        fills = {
            "{title}": _format(cell.grid.title, self.where, dataset=title, loss=loss.title, settings=settings),
            "{notes}": loss.notes,
            "{reproduces}": "\n".join(cell.reproduces),
            "{recipe}": cell.name,
            "{chains}": ", ".join(cell.chains),
            "{chain}": cell.chains[0],
            "{output_dir}": str(cell.body.get("output_dir", "")),
        }
        header = []
        for line in (RECIPES_DIR / cell.grid.base).read_text().splitlines():
            if not line.startswith("#"):
                break
            if line == "#{loss_settings}":  # the loss's own keys and where each value comes from
                header += [f"#   {k}: " + text.replace("\n", "\n#     ") for k, text in loss.settings.items()]
                continue
            indent = "\n" + re.match(r"#\s*", line).group(0) + "  "
            fills["{epochs}"] = self.epochs(cell) if "{epochs}" in line else ""
            for key, value in fills.items():
                line = line.replace(key, value.replace("\n", indent))
            header.append(line)
        return dump_recipe(cell.body, "\n".join(header))

    def cost_table(self, cells: dict[str, Cell]) -> str:
        """Each GPU chain's recipes, once each, with their projected cost."""
        from smaug.training.chains import hardware_text

        peak = f"H100 SXM, {memory.H100_BF16_FLOPS / 1e12:.0f} bf16 TFLOP/s at {memory.MFU:.0%} MFU"
        columns = ["Recipe", "Chain", "GPUs (nodes of 8)", "Hardware (`chains.yaml`)", "Sequence length"]
        columns += ["Tokens per step", "Steps", f"GPU-hours ({peak})", "Wall time", "Checkpoints kept (disk each)"]
        rows, shapes = [f"| {' | '.join(columns)} |", "|---|---|---|---|---:|---:|---:|---:|---:|---|"], {}
        for chain, spec in self.chains.items():
            if spec["hardware"].get("accelerator") != "cuda":
                continue
            for stage in spec["stages"]:
                recipe = cells[stage].body if stage in cells else load_recipe(RECIPES_DIR / stage)
                base = str(recipe["base_model"])
                shape = memory.model_shape(base, shapes.get(os.path.normpath(base)))
                if shape is None:
                    raise UserError(f"recipes/{stage}: no shape known for {base}; add it to memory.KNOWN_MODELS")
                shapes[os.path.normpath(recipe["output_dir"])] = shape
                c = memory.projected_cost(recipe, spec["hardware"], shape)
                if not any(f"`{stage}`" in row for row in rows):
                    rows.append(
                        f"| `{stage}` | `{chain}` | {c.gpus} ({-(-c.gpus // 8)}) | "
                        f"{hardware_text(spec['hardware']).replace('x ', '× ')} | {c.sequence_len:,} | "
                        f"{c.tokens_per_step:,} | {c.steps:,} | {c.gpu_hours:,.0f} | {c.gpu_hours / c.gpus:.1f} h | "
                        f"{c.checkpoints} × {c.checkpoint_gb:,.0f} GB |"
                    )
        return "\n".join(rows)

    def readme(self, cells: dict[str, Cell]) -> str:
        text, (start, end) = (RECIPES_DIR / "README.md").read_text(), COST_TABLE
        if text.count(start) != 1 or text.count(end) != 1:
            raise UserError(f"recipes/README.md: needs the lines {start} and {end} once each, around the cost table")
        head, rest = text.split(start)
        return f"{head}{start}\n{self.cost_table(cells)}\n{end}{rest.split(end)[1]}"


def generated_cells(spec_path: Path = GENERATE_SPEC) -> dict[str, Cell]:
    """{path under recipes/: Cell} for every recipe recipes/generate.yaml describes."""
    return _Generator(spec_path).cells()


def generated_recipes(spec_path: Path = GENERATE_SPEC) -> dict[str, str]:
    """{path under recipes/: full text} of every file `smaug recipes generate` writes."""
    generator = _Generator(spec_path)
    cells = generator.cells()
    return {**{name: generator.render(cell) for name, cell in cells.items()}, "README.md": generator.readme(cells)}


def stale_generated(spec_path: Path = GENERATE_SPEC) -> list[str]:
    """Generated files whose committed text differs from the generator's output (or that are missing)."""
    files = generated_recipes(spec_path).items()
    return [n for n, text in files if not (RECIPES_DIR / n).is_file() or (RECIPES_DIR / n).read_text() != text]
