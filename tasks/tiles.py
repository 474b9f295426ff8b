"""Dense prediction of images larger than a tile, in overlapping tiles, with bounded memory.

A U-Net's activations grow with the input's pixels: a 6000×4000 photo at full resolution needs tens of GiB. Images
whose height or width exceed ``tile`` are therefore predicted tile by tile, U-Net's own overlap-tile strategy
(Ronneberger et al., 2015): each window of ``tile``×``tile`` pixels is predicted whole, and only its core, ``margin``
pixels in from every side that is not the image's border, is kept, so that every pixel is decided with at least
``margin`` pixels of context around it. The model sees one window at a time and the result is one class index per
pixel, so the memory is one window's activations plus the (H, W) index map, never (C, H, W) logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Forward = Callable[[Tensor], Tensor]  # (N, 3, h, w) -> logits (N, C, h, w)


def window_starts(size: int, tile: int, margin: int) -> list[int]:
    """Where the windows start along one side of ``size`` pixels: one window if the side fits a tile, else windows
    of ``tile`` whose cores (the window less ``margin`` on each inner side) cover the side without a gap."""
    if size <= tile:
        return [0]
    stride = tile - 2 * margin
    starts = list(range(0, size - tile, stride))
    return [*starts, size - tile]


def predict_classes(forward: Forward, images: Tensor, *, tile: int, margin: int | None = None) -> Tensor:
    """The argmax class of every pixel of ``images`` (N, 3, H, W), as a (N, H, W) tensor.

    Images whose sides both fit ``tile`` (0: any size) go through ``forward`` whole, as before; larger ones in
    overlapping windows (see the module's docstring). ``margin`` defaults to an eighth of the tile.
    """
    height, width = images.shape[-2:]
    if tile <= 0 or (height <= tile and width <= tile):
        return forward(images).argmax(dim=1)  # (N, H, W)
    margin = tile // 8 if margin is None else margin
    if not 0 <= 2 * margin < tile:
        raise ValueError(f"margin={margin} must be at least 0 and less than half the tile ({tile})")
    out: Tensor | None = None
    rows, columns = window_starts(height, tile, margin), window_starts(width, tile, margin)
    for top in rows:
        bottom = min(top + tile, height)
        keep_top = top + margin if top > 0 else 0
        keep_bottom = bottom - margin if bottom < height else height
        for left in columns:
            right = min(left + tile, width)
            keep_left = left + margin if left > 0 else 0
            keep_right = right - margin if right < width else width
            classes = forward(images[..., top:bottom, left:right]).argmax(dim=1)  # (N, h, w)
            if out is None:
                out = torch.empty((images.shape[0], height, width), dtype=classes.dtype, device=classes.device)
            out[:, keep_top:keep_bottom, keep_left:keep_right] = classes[
                :, keep_top - top : keep_bottom - top, keep_left - left : keep_right - left
            ]
    assert out is not None
    return out
