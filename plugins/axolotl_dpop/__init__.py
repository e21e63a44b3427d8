"""axolotl_dpop: DPO-Positive (DPOP) for axolotl.

    plugins:
      - axolotl_dpop.DPOPPlugin
    rl: dpop
    rl_beta: 0.3
    dpop_lambda: 50

The loss itself is :func:`axolotl_dpop.loss.dpop_loss`.
"""

__all__ = ["DPOPPlugin"]
__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so that `import axolotl_dpop.provenance` (the smaug CLI does) does not import axolotl.
    if name == "DPOPPlugin":
        from axolotl_dpop.plugin import DPOPPlugin

        return DPOPPlugin
    raise AttributeError(f"module 'axolotl_dpop' has no attribute {name!r}")
