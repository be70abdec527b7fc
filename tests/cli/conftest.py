"""Fixtures of the CLI tests; helpers live in ``cli_support`` (a unique module name).

Several test folders have a ``conftest.py``; importing helpers ``from conftest``
would pick whichever was imported first, so shared code sits in ``cli_support``.
"""

from cli_support import runner, toy_plugin  # noqa: F401  (re-exported as fixtures)
