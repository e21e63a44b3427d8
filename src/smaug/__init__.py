"""smaug: the command-line side of this repository (data, eval, cards, publishing, the stage chain)."""

__version__ = "0.1.0"
