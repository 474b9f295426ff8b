"""tasks.tiles: overlap-tile prediction of large images, against whole-image prediction and by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tasks.tiles import predict_classes, window_starts


def test_window_starts_by_hand() -> None:
    assert window_starts(100, 128, 16) == [0]  # fits one tile
    assert window_starts(128, 128, 16) == [0]
    # stride 128 - 2·16 = 96: windows at 0 and 96, and the last one flush with the far side
    assert window_starts(300, 128, 16) == [0, 96, 172]
    assert window_starts(129, 128, 0) == [0, 1]


def test_a_pointwise_model_gives_the_same_classes_tiled_as_whole() -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, kernel_size=1)  # no context: every window must agree with the whole image
    images = torch.randn(2, 3, 300, 190)
    seen = []

    def forward(x):
        seen.append(tuple(x.shape[-2:]))
        return model(x)

    with torch.no_grad():
        whole = model(images).argmax(dim=1)
        tiled = predict_classes(forward, images, tile=64)
    assert torch.equal(tiled, whole)
    assert max(h for h, _ in seen) == 64 and max(w for _, w in seen) == 64  # the memory of one tile
    assert len(seen) == len(window_starts(300, 64, 8)) * len(window_starts(190, 64, 8))
    seen.clear()
    assert torch.equal(predict_classes(forward, images, tile=0), whole) and seen == [(300, 190)]
    assert torch.equal(predict_classes(forward, images, tile=300), whole) and seen[-1] == (300, 190)


@pytest.mark.parametrize(
    ("height", "width", "tile", "margin"), [(300, 190, 64, 8), (129, 257, 128, 20), (70, 64, 64, 0)]
)
def test_every_pixel_is_decided_with_the_margin_of_context_or_the_image_border(height, width, tile, margin) -> None:
    """The model answers, for each pixel, its distance to the nearest edge of the window it was shown in (capped at
    the margin): the kept answer must be the margin, or the pixel's own distance to the image's border."""

    def distance_to_window_edge(x):
        h, w = x.shape[-2:]
        rows = torch.arange(h).view(-1, 1)
        columns = torch.arange(w).view(1, -1)
        distance = torch.minimum(torch.minimum(rows, h - 1 - rows), torch.minimum(columns, w - 1 - columns))
        return nn.functional.one_hot(distance.clamp(max=margin), margin + 1).permute(2, 0, 1)[None].float()

    got = predict_classes(distance_to_window_edge, torch.zeros(1, 3, height, width), tile=tile, margin=margin)[0]
    rows = torch.arange(height).view(-1, 1)
    columns = torch.arange(width).view(1, -1)
    to_border = torch.minimum(torch.minimum(rows, height - 1 - rows), torch.minimum(columns, width - 1 - columns))
    assert torch.equal(got, to_border.clamp(max=margin))


def test_a_margin_of_half_the_tile_is_refused() -> None:
    with pytest.raises(ValueError, match="margin=32"):
        predict_classes(lambda x: x, torch.zeros(1, 3, 100, 100), tile=64, margin=32)
