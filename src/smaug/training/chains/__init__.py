"""Stage chains: recipes/chains.yaml's lists of axolotl recipes, run in order (`make smaug-34b`)."""

from smaug.training.chains.plan import Launch, load_chains, plan_chain
from smaug.training.chains.preflight import hardware_text
from smaug.training.chains.report import describe, status_report
from smaug.training.chains.run import run_chain

__all__ = ["Launch", "describe", "hardware_text", "load_chains", "plan_chain", "run_chain", "status_report"]
