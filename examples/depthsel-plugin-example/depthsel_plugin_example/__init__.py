"""An example third-party depthsel plugin.

It registers one thing of each common kind, through the ``depthsel``
entry-point group (see ``pyproject.toml``):

* the binner ``inverse``: bins uniform in inverse depth (:mod:`.binner`);
* the analyzer ``unit-stats``: per-unit mean activation over the data (:mod:`.analyzer`);
* the model ``example-tiny``: a tiny encoder-decoder with a ModelInfo (:mod:`.model`).

The hook implementations are in :mod:`.hooks`; nothing here imports torch
until depthsel asks for the plugin.
"""

__version__ = "0.1.0"
