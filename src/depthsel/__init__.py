"""depthsel: depth-selectivity dissection and training for monocular depth networks.

The public API is re-exported here; plugins live in their own distributions
(first-party ones in ``depthsel_plugins``) and are found through the
``depthsel`` entry-point group, lazily, on first lookup.
"""

from __future__ import annotations

from .api import (
    get_analyzer,
    get_binner,
    get_dataset,
    get_model,
    get_model_info,
    get_objective,
    list_plugins,
)
from .accumulator import ResponseAccumulator
from .binning import Binner, EdgesBinner, InvalidDepthWarning
from .capture import Capture, RepeatedHookWarning, TokenGridAdapter
from .checkpoints import load_state_dict, load_weights, save_state_dict
from .datasets import PairedDepthDataset, decode_depth_png, decode_rgb, safe_join
from .errors import DepthselError
from .hookspecs import hookimpl
from .layers import LayerSelector, unwrap_model
from .objectives import BatchStats, SelectivityObjective
from .registry import register_plugin, unregister_plugin
from .regularizer import SelectivityRegularizer
from .selectivity import (
    LayerSummary,
    assign_bins,
    depth_selectivity,
    matched_assignment,
    summarize_layer,
)
from . import layers  # a callable module: depthsel.layers(...)
from ._callable import make_callable as _make_callable
from ._version import __version__
from .layertable import LayerTable
from .layertable import layers as _layers_fn
from .quick import ablate, correct, dissect
from .consumer import Consumer
from .responses import ResponseCollection, collect_responses
from .stream import BatchView, StreamReport, stream
from .modelinfo import ModelInfo

# The package installs the call, so the module does not import its function's home (a cycle).
_make_callable(layers, _layers_fn)

__all__ = [
    "__version__",
    "LayerTable",
    "ablate",
    "correct",
    "dissect",
    "stream",
    "BatchView",
    "StreamReport",
    "Consumer",
    "collect_responses",
    "ResponseCollection",
    "layers",
    "BatchStats",
    "Binner",
    "Capture",
    "LayerSelector",
    "LayerSummary",
    "RepeatedHookWarning",
    "ResponseAccumulator",
    "SelectivityObjective",
    "SelectivityRegularizer",
    "TokenGridAdapter",
    "assign_bins",
    "depth_selectivity",
    "matched_assignment",
    "summarize_layer",
    "unwrap_model",
    "DepthselError",
    "PairedDepthDataset",
    "decode_depth_png",
    "decode_rgb",
    "safe_join",
    "EdgesBinner",
    "InvalidDepthWarning",
    "ModelInfo",
    "get_analyzer",
    "get_binner",
    "get_dataset",
    "get_model",
    "get_model_info",
    "get_objective",
    "hookimpl",
    "list_plugins",
    "load_state_dict",
    "load_weights",
    "register_plugin",
    "save_state_dict",
    "unregister_plugin",
]
