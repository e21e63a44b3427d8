"""The harness's own preprocessing/scoring functions, re-exported for the offline mini tasks.

lm-eval's `!function module.name` loads `module.py` next to the YAML, so the offline YAMLs point here and we
import (never copy) the exact functions the leaderboard tasks use.
"""

from lm_eval.tasks.hellaswag.utils import process_docs as hellaswag_process_docs
from lm_eval.tasks.truthfulqa.utils import process_results_mc2 as truthfulqa_process_results_mc2
from lm_eval.tasks.winogrande.preprocess_winogrande import (
    doc_to_choice as winogrande_doc_to_choice,
    doc_to_target as winogrande_doc_to_target,
    doc_to_text as winogrande_doc_to_text,
)
