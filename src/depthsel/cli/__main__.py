"""``python -m depthsel.cli``: the same as the ``depthsel`` script."""

from __future__ import annotations

from . import main

if __name__ == "__main__":
    main()
