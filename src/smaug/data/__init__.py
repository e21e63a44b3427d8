"""Preference pair datasets of the Smaug paper (MetaMath, ARC-Challenge, HellaSwag) and their statistics.

Public API (all importable from `smaug.data`):
- `build_metamath_pairs(rows, seed=0, few_shot=0)`, `build_arc_pairs(...)`, `build_hellaswag_pairs(...)`:
  plain dict rows in the source schema -> (list of {prompt, chosen, rejected}, skip counts by reason)
- `build_dataset(builder, out, source=..., seed=..., few_shot=...)`: load, build, write atomically, report
- `compute_stats(prompts, chosen, rejected)`, `stats_for_pairs(pairs)`, `stats_for_path(path)`
- `generate_synthetic_metamath(n, seed)`, `write_synthetic_metamath(path, n, seed)`
"""

from smaug.data.builders import BUILDERS, build_dataset, get_builder, report_path
from smaug.data.io import load_pairs, load_source_rows, write_pairs
from smaug.data.metamath import build_metamath_pairs, corrupt_response
from smaug.data.multiple_choice import build_arc_pairs, build_hellaswag_pairs
from smaug.data.stats import compute_stats, edit_distances, stats_for_pairs, stats_for_path
from smaug.data.synthetic import generate_synthetic_metamath, synthetic_metamath_row, write_synthetic_metamath

__all__ = [
    "BUILDERS",
    "build_arc_pairs",
    "build_dataset",
    "build_hellaswag_pairs",
    "build_metamath_pairs",
    "compute_stats",
    "corrupt_response",
    "edit_distances",
    "generate_synthetic_metamath",
    "get_builder",
    "load_pairs",
    "load_source_rows",
    "report_path",
    "stats_for_pairs",
    "stats_for_path",
    "synthetic_metamath_row",
    "write_pairs",
    "write_synthetic_metamath",
]
