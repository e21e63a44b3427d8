"""axolotl_dpop: DPO-Positive (DPOP) for axolotl.

    plugins:
      - axolotl_dpop.DPOPPlugin
    rl: dpop
    rl_beta: 0.3
    dpop_lambda: 50

The loss itself is :func:`axolotl_dpop.loss.dpop_loss`.
"""

from axolotl_dpop.plugin import DPOPPlugin

__all__ = ["DPOPPlugin"]
__version__ = "0.1.0"
