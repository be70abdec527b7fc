"""The version of depthsel, in one place (pyproject reads it; results and reports record it)."""

__version__ = "0.1.0"
