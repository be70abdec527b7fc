"""Train/test splits for sequences recorded in one place (e.g. 7-Scenes).

Consecutive video frames are near-duplicates. A random split of such a
sequence puts the neighbour of every test frame in the training set, so test
accuracy and selectivity measure memorisation, not generalisation. These
helpers split by *contiguous blocks* of frames and can leave a gap of frames
out between train and test blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

from depthsel.errors import DatasetError

__all__ = ["parse_frame_ranges", "contiguous_block_split", "select_indices"]

Range = tuple[int, int]


def parse_frame_ranges(spec: str | Sequence[Range], n: int) -> list[Range]:
    """Parse ``"0:50,80:100"`` (half-open, Python slice style) into ranges.

    Negative bounds count from the end and an empty bound means the start or
    end, as in slices. A sequence of ``(start, stop)`` pairs is also accepted.
    """
    pairs: list[tuple[int | None, int | None]] = []
    if isinstance(spec, str):
        for chunk in spec.split(","):
            chunk = chunk.strip()
            if not chunk:
                continue
            if ":" not in chunk:
                raise DatasetError(
                    f"frame range {chunk!r} has no ':'; write ranges as start:stop, e.g. '0:80,90:100'"
                )
            a, b = chunk.split(":", 1)
            try:
                pairs.append((int(a) if a.strip() else None, int(b) if b.strip() else None))
            except ValueError:
                raise DatasetError(f"frame range {chunk!r} is not start:stop with integers") from None
    else:
        pairs = [(int(a), int(b)) for a, b in spec]
    out: list[Range] = []
    for a, b in pairs:
        start, stop, _ = slice(a, b).indices(n)
        if stop <= start:
            raise DatasetError(f"frame range {a}:{b} is empty for {n} frames; give start < stop")
        out.append((start, stop))
    return out


def contiguous_block_split(
    n: int,
    test_fraction: float | None = 0.2,
    *,
    ranges: str | Sequence[Range] | None = None,
    num_test_blocks: int = 1,
    gap: int = 0,
) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into train and test indices by contiguous frame blocks.

    Parameters
    ----------
    n
        Number of frames, in temporal order.
    test_fraction
        Fraction of frames in the test set, used when ``ranges`` is ``None``.
        The test frames form ``num_test_blocks`` equal blocks spread evenly over
        the sequence, the last one ending at the last frame.
    ranges
        Explicit test ranges (``"80:100"`` or ``[(80, 100)]``); overrides ``test_fraction``.
    num_test_blocks
        Number of test blocks (more blocks cover more of the room, at the
        cost of more train/test boundaries).
    gap
        Frames dropped from *training* on each side of every test block, so
        no training frame is within ``gap`` frames of a test frame.

    Returns
    -------
    (train, test)
        Sorted, disjoint index lists.
    """
    if n <= 1:
        raise DatasetError(f"cannot split {n} frame(s); a split needs at least 2")
    if gap < 0:
        raise DatasetError(f"gap must be >= 0, got {gap}")
    if ranges is not None:
        blocks = parse_frame_ranges(ranges, n)
    else:
        if test_fraction is None or not 0 < test_fraction < 1:
            raise DatasetError(f"test_fraction must be in (0, 1), got {test_fraction}; or pass ranges=")
        if num_test_blocks < 1:
            raise DatasetError(f"num_test_blocks must be >= 1, got {num_test_blocks}")
        n_test = max(num_test_blocks, round(n * test_fraction))
        per = max(1, n_test // num_test_blocks)
        stride = n / num_test_blocks
        blocks = []
        for b in range(num_test_blocks):
            stop = round(stride * (b + 1))
            blocks.append((max(0, stop - per), stop))
    test = sorted({i for a, b in blocks for i in range(a, b)})
    banned = {i for a, b in blocks for i in range(max(0, a - gap), min(n, b + gap))}
    train = [i for i in range(n) if i not in banned]
    if not train or not test:
        raise DatasetError(
            f"split of {n} frames left train={len(train)}, test={len(test)}; "
            "use a smaller gap or test_fraction"
        )
    return train, test


def select_indices(
    n: int,
    *,
    indices: Sequence[int] | None = None,
    frames: str | Sequence[Range] | None = None,
    split: str | None = None,
    test_fraction: float = 0.2,
    gap: int = 0,
) -> list[int]:
    """Resolve the selection options of a dataset into row indices.

    At most one of ``indices``, ``frames`` or ``split`` may be given.
    ``split="train"``/``"test"`` uses :func:`contiguous_block_split`.
    """
    given = [k for k, v in (("indices", indices), ("frames", frames), ("split", split)) if v is not None]
    if len(given) > 1:
        raise DatasetError(f"pass only one of indices, frames or split (got {', '.join(given)})")
    if indices is not None:
        out = [int(i) for i in indices]
        bad = [i for i in out if not -n <= i < n]
        if bad:
            raise DatasetError(f"indices {bad[:5]} out of range for {n} rows; use 0..{n - 1}")
        return [i % n for i in out]
    if frames is not None:
        return [i for a, b in parse_frame_ranges(frames, n) for i in range(a, b)]
    if split is not None:
        if split not in ("train", "test", "all"):
            raise DatasetError(f"split must be 'train', 'test' or 'all', got {split!r}")
        if split == "all":
            return list(range(n))
        train, test = contiguous_block_split(n, test_fraction, gap=gap)
        return train if split == "train" else test
    return list(range(n))
