"""PyTorch Lightning: depth selectivity as a callback plus one line in ``training_step``.

::

    from depthsel.integrations.lightning import SelectivityCallback

    class Net(L.LightningModule):
        def training_step(self, batch, batch_idx):
            pred = self.net(batch["image"])
            loss = F.l1_loss(pred, batch["depth"])
            return loss + SelectivityCallback.find(self.trainer).loss(batch["depth"])

    trainer = L.Trainer(callbacks=[SelectivityCallback(["net.dec2"], binner="sid")])

The callback builds a :class:`depthsel.SelectivityRegularizer` on ``setup``,
registers its hooks when fitting starts and removes them when fitting ends or
fails (``on_exception``, and ``teardown`` as a last resort), and logs the
depth selectivity of every training batch through ``pl_module.log``.

Lightning is imported only when a callback is created; without it that
raises a :class:`~depthsel.DepthselError` saying ``pip install depthsel[lightning]``.
"""

from __future__ import annotations

import importlib
from contextlib import ExitStack
from typing import Any

import torch

from ..errors import DepthselError

__all__ = ["SelectivityCallback", "lightning_callback_base"]

_INSTALL_HINT = "the Lightning integration needs Lightning: pip install depthsel[lightning]"
_REAL_CLASS: type | None = None


def lightning_callback_base() -> type:
    """Return Lightning's ``Callback`` class (``lightning`` or ``pytorch_lightning``)."""
    for module in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(module).Callback
        except ImportError:
            continue
    raise DepthselError(_INSTALL_HINT)


def _real_class() -> type:
    # Built once, on first use: a subclass of both this class and Lightning's Callback,
    # so Lightning's isinstance checks pass while the import stays lazy.
    global _REAL_CLASS
    if _REAL_CLASS is None:
        base = lightning_callback_base()
        _REAL_CLASS = type("SelectivityCallback", (SelectivityCallback, base), {
            "__module__": __name__,
            "__doc__": SelectivityCallback.__doc__,
        })
    return _REAL_CLASS


class SelectivityCallback:
    """Adds the depth-selectivity loss of You et al. (ICCV 2021) to Lightning training.

    Parameters
    ----------
    layers
        Layer specification, relative to the LightningModule (or to its
        ``model_attr`` submodule): names, globs, types or predicates.
    binner
        A :class:`~depthsel.Binner`, a registry name (``depthsel binners``) or a config dict.
    objective
        ``"assign"`` (Eq. 5, default) or ``"regularize"`` (Eq. 4), or an instance.
    weight
        ``lambda``; mutable through :attr:`weight` for schedules, and saved in checkpoints.
    model_attr
        Attribute of the LightningModule holding the depth network, e.g. ``"net"``;
        ``None`` hooks the LightningModule itself.
    log_prefix
        Prefix of the logged metrics (``depthsel/ds``, ``depthsel/<layer>/target_ds``,
        ``.../argmax_ds``, ``.../peak_on_target``), the names a dissection uses.
    prog_bar
        Show the mean DS in the progress bar.
    **regularizer_options
        Passed to :class:`~depthsel.SelectivityRegularizer` (``preset``,
        ``fit_bins_to_units``, ``assignment``, ``align_corners``...).

    Raises
    ------
    DepthselError
        When Lightning is not installed.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> "SelectivityCallback":
        if cls is SelectivityCallback:
            cls = _real_class()
        return object.__new__(cls)

    def __init__(
        self,
        layers: Any,
        binner: Any,
        objective: Any = "assign",
        weight: float = 0.1,
        *,
        model_attr: str | None = None,
        log_prefix: str = "depthsel/",
        prog_bar: bool = True,
        **regularizer_options: Any,
    ) -> None:
        self.layers = layers
        self.binner = binner
        self.objective = objective
        self._weight = float(weight)
        self.model_attr = model_attr
        self.log_prefix = log_prefix
        self.prog_bar = prog_bar
        self.regularizer_options = dict(regularizer_options)
        self.regularizer: Any = None
        self._stack: ExitStack | None = None
        self._pending_log: dict[str, dict[str, float]] | None = None

    # ------------------------------------------------------------- access
    @staticmethod
    def find(trainer: Any) -> "SelectivityCallback":
        """Return the (single) SelectivityCallback among ``trainer.callbacks``."""
        found = [cb for cb in getattr(trainer, "callbacks", []) if isinstance(cb, SelectivityCallback)]
        if len(found) != 1:
            raise DepthselError(
                f"expected exactly one SelectivityCallback in trainer.callbacks, found {len(found)}; "
                "pass it as Trainer(callbacks=[SelectivityCallback(...)])"
            )
        return found[0]

    @property
    def weight(self) -> float:
        """``lambda`` of the loss; setting it also updates a built regularizer."""
        return self._weight

    @weight.setter
    def weight(self, value: float) -> None:
        self._weight = float(value)
        if self.regularizer is not None:
            self.regularizer.weight = self._weight

    @property
    def attached(self) -> bool:
        """Whether the capture hooks are registered now."""
        return self._stack is not None

    # ------------------------------------------------------ Lightning hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Build the regularizer once, for fitting (layer names are checked here)."""
        if stage != "fit" or self.regularizer is not None:
            return
        from ..regularizer import SelectivityRegularizer

        model = pl_module if self.model_attr is None else getattr(pl_module, self.model_attr, None)
        if not isinstance(model, torch.nn.Module):
            raise DepthselError(
                f"SelectivityCallback(model_attr={self.model_attr!r}): the LightningModule has no "
                "such nn.Module attribute"
            )
        self.regularizer = SelectivityRegularizer(model, self.layers, self.binner, self.objective,
                                                  self._weight, **self.regularizer_options)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Register the hooks for the whole fit (training and validation loops)."""
        if self.regularizer is None:
            self.setup(trainer, pl_module, "fit")
        self._detach()
        stack = ExitStack()
        stack.enter_context(self.regularizer.attach())
        self._stack = stack

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Log DS of the batch whose :meth:`loss` was just computed."""
        stats, self._pending_log = self._pending_log, None
        if not stats:
            return
        total = stats.get("_total", {})
        if "score" in total:
            pl_module.log(f"{self.log_prefix}ds", total["score"], on_step=True, on_epoch=True,
                          prog_bar=self.prog_bar)
        for layer, values in stats.items():
            if layer == "_total":
                continue
            for key in ("target_ds", "argmax_ds", "peak_on_target"):
                value = values.get(key)
                if value is not None and value == value:  # NaN: nothing was measured
                    pl_module.log(f"{self.log_prefix}{layer}/{key}", value, on_step=False, on_epoch=True)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """Remove the hooks."""
        self._detach()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Remove the hooks when fitting fails or is interrupted."""
        self._detach()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Last resort: never leave hooks behind."""
        self._detach()

    def state_dict(self) -> dict[str, Any]:
        """Saved in Lightning checkpoints: the current weight (for schedules)."""
        return {"weight": self._weight}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if "weight" in state_dict:
            self.weight = state_dict["weight"]

    # ------------------------------------------------------------- the loss
    def loss(self, depth: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``-weight * DS`` for the batch the module just ran on; add it to the training loss.

        Parameters
        ----------
        depth
            Ground-truth depth ``[B, 1, H, W]`` (or ``[B, H, W]``) in metres.
        valid
            Optional validity mask of the same shape.
        """
        if self.regularizer is None or not self.attached:
            raise DepthselError(
                "SelectivityCallback.loss() was called outside trainer.fit(); the hooks are only "
                "registered while fitting"
            )
        value = self.regularizer.loss(depth, valid)
        self._pending_log = self.regularizer.last_stats()
        return value

    def _detach(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
