"""The analyses' figure helpers: the core's headless pyplot and atomic figure writer."""

from depthsel.figures import pyplot, save_figure

__all__ = ["pyplot", "save_figure"]
