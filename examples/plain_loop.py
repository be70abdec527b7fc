"""An ordinary PyTorch training loop, made interpretable by adding three lines.

Run: ``python examples/plain_loop.py --steps 200``. The lines marked ``# depthsel``
are the whole integration: build the regularizer, attach its hooks around the
forward pass, add its loss. Everything else is the loop you already have.
"""

from __future__ import annotations

import argparse

import torch

import depthsel  # depthsel
from depthsel.testing import ToyDepthNet, toy_batch


def main(steps: int = 200, weight: float = 1.0, seed: int = 0) -> dict[str, float]:
    """Train a toy network with the selectivity term and return the first and last DS."""
    torch.manual_seed(seed)
    model = ToyDepthNet(width=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    binner = depthsel.get_binner("uniform", num_bins=8, min_depth=0.5, max_depth=10.0)
    reg = depthsel.SelectivityRegularizer(model, ["dec3"], binner, weight=weight)  # depthsel

    first = last = float("nan")
    for step in range(steps):
        image, depth = toy_batch(8, (32, 32), seed=step)
        with reg.attach():  # depthsel
            pred = model(image)
            loss = torch.nn.functional.l1_loss(pred, depth) + reg.loss(depth)  # depthsel
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ds = reg.last_stats()["dec3"]["target_ds"]
        first = ds if step == 0 else first
        last = ds
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  target DS {ds:.3f}")
    return {"first_ds": first, "last_ds": last}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--weight", type=float, default=1.0)
    args = parser.parse_args()
    main(args.steps, args.weight)
