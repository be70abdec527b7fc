"""Metric protocol presets of the published evaluations, and their crops.

Each preset reproduces how one paper or repository measured accuracy (see the
project README, "What the published reference code does differently"). They
register through the ``register_protocols`` hook; the core knows only its
neutral ``"default"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from depthsel import hookimpl
from depthsel.protocols import CropBox, MetricProtocol

__all__ = ["EIGEN_NYU", "EIGEN_KITTI", "GARG_KITTI", "PROTOCOLS", "register_protocols"]

#: Eigen et al.'s NYU crop: rows 45:471, cols 41:601 of a 480x640 frame, scaled with round().
EIGEN_NYU = CropBox("eigen", 45, 471, 41, 601, frame=(480, 640), rounding="round")
#: Eigen et al.'s KITTI crop, as fractions of the frame (int() of each bound).
EIGEN_KITTI = CropBox("eigen", 0.3324324, 0.91351351, 0.0359477, 0.96405229)
#: Garg et al.'s KITTI crop, as fractions of the frame (int() of each bound).
GARG_KITTI = CropBox("garg", 0.40810811, 0.99189189, 0.03594771, 0.96405229)

#: Every preset, in listing order.
PROTOCOLS: tuple[MetricProtocol, ...] = (
    MetricProtocol(
        "hu2019", reduction="image", delta_op="<=", rmse_mode="sqrt_of_mean_mse", clamp_pred=False,
        description="Hu et al. 2019: per-image MSE averaged then square-rooted; '<='; no crop, no cap",
    ),
    MetricProtocol(
        "you2021", reduction="image", rmse_mode="mean_of_rmse", max_depth=10.0,
        description="You et al. 2021: per-image RMSE averaged; '<'; 10 m cap; no Eigen crop",
    ),
    MetricProtocol(
        "bts", reduction="image", rmse_mode="mean_of_rmse", crop=EIGEN_NYU, max_depth=10.0, max_op="<",
        description="BTS on NYU: Eigen crop; 1e-3 < gt < 10; predictions clamped; '<'",
    ),
    MetricProtocol(
        "bts_kitti", reduction="image", rmse_mode="mean_of_rmse", crop=EIGEN_KITTI, max_depth=80.0, max_op="<",
        description="BTS on KITTI: KITTI Eigen crop; 1e-3 < gt < 80; predictions clamped; '<'",
    ),
    MetricProtocol(
        "fastdepth", reduction="image", rmse_mode="mean_of_rmse", units="mm",
        description="FastDepth, fixed: millimetres, per-image averages, mask = valid ground truth",
    ),
    MetricProtocol(
        "fastdepth_reference", reduction="image", rmse_mode="mean_of_rmse", units="mm",
        mask_op="or", min_depth=0.0, clamp_pred=False,
        description=(
            "FastDepth as released: mask (gt>0) OR (pred>0), a bug: pixels without ground "
            "truth count, so abs_rel and log10 become inf and rmse grows"
        ),
    ),
)


def _preset(protocol: MetricProtocol) -> Callable[[], MetricProtocol]:
    def factory() -> MetricProtocol:
        return protocol

    factory.__doc__ = protocol.description
    return factory


@hookimpl
def register_protocols(register: Any) -> None:
    """Register the published evaluation protocols."""
    for protocol in PROTOCOLS:
        register(protocol.name, _preset(protocol), description=protocol.description)
