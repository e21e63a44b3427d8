"""DPO-Positive (DPOP) for axolotl: `plugins: [axolotl_dpop.DPOPPlugin]` and `rl: dpop` (README.md)."""

__all__ = ["DPOPPlugin"]
__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so that `import axolotl_dpop.provenance` (the smaug CLI does) does not import axolotl.
    if name == "DPOPPlugin":
        from axolotl_dpop.plugin import DPOPPlugin

        return DPOPPlugin
    raise AttributeError(f"module 'axolotl_dpop' has no attribute {name!r}")
