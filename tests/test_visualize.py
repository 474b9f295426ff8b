"""tasks.visualize: the drawings torchvision's utilities make for us, checked pixel by pixel."""

from __future__ import annotations

import struct

import numpy as np
import torch
from PIL import Image

from tasks.visualize import (
    PREDICTED_COLOUR,
    TRUTH_COLOUR,
    draw_detections,
    overlay_mask,
    pr_curve_png,
    save_png,
    voc_palette,
)


def test_overlay_blends_each_class_in_its_voc_colour_as_before() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = rng.choice([0, 1, 2, 15, 255], size=(40, 50)).astype(np.uint8)
    # the hand-written blend this replaced: background untouched, every other value (void included) half-blended
    colours = voc_palette()[mask].astype(np.float32)
    before = np.where((mask > 0)[..., None], 0.5 * image + 0.5 * colours, image).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(overlay_mask(image, mask)), before)
    np.testing.assert_array_equal(np.asarray(overlay_mask(image, np.zeros_like(mask))), image)


def test_overlay_of_a_read_only_image_makes_no_tensor_of_it(monkeypatch) -> None:
    """The image cache hands out read-only arrays; torch warns (once a process) when a tensor is made from one
    without a copy, so every array overlay_mask gives torch must be writable."""
    arrays = []
    from_numpy = torch.from_numpy
    monkeypatch.setattr(torch, "from_numpy", lambda array: arrays.append(array) or from_numpy(array))
    image = np.full((8, 10, 3), 50, np.uint8)
    image.flags.writeable = False
    mask = np.zeros((8, 10), np.uint8)
    mask[2:5, 3:7] = 1
    overlay = np.asarray(overlay_mask(image, mask))
    assert len(arrays) == 2 and all(array.flags.writeable for array in arrays)
    assert (overlay[2:5, 3:7] != 50).any() and (overlay[0] == 50).all()


def test_boxes_are_drawn_where_they_are_in_their_colours_on_an_enlarged_canvas() -> None:
    image = np.zeros((64, 32, 3), np.uint8)  # enlarged 8× (to 512 px on its longer side)
    drawn = np.asarray(
        draw_detections(
            image,
            np.array([[4.0, 20.0, 20.0, 40.0]]),
            ["square"],
            [0.9],
            truth_boxes=np.array([[2.0, 2.0, 10.0, 10.0]]),
            truth_labels=["circle"],
        )
    )
    assert drawn.shape == (512, 256, 3)
    assert tuple(drawn[250, 32]) == PREDICTED_COLOUR  # the predicted box's left edge (x 4·8, y from 160 to 320)
    assert tuple(drawn[319, 100]) == PREDICTED_COLOUR  # its bottom edge
    assert tuple(drawn[50, 16]) == TRUTH_COLOUR  # the true box's left edge (x 2·8)
    assert tuple(drawn[300, 100]) == (0, 0, 0)  # inside a box: untouched
    assert tuple(np.asarray(draw_detections(image, np.zeros((0, 4)), [], []))[250, 32]) == (0, 0, 0)


def test_pr_curve_without_any_defined_class_draws_without_a_warning() -> None:
    """A split with no box of any class (every precision undefined) still gets its picture, and matplotlib's
    warning about an empty legend does not reach the run's output."""
    import io
    import warnings

    from PIL import Image

    curves = {"recall": [i / 100 for i in range(101)], "precision": {"square": [None] * 101, "disc": [None] * 101}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png = pr_curve_png(curves)
    assert [str(w.message)[:60] for w in caught] == []
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size[0] > 100


def _zlib_level_class(png: bytes) -> int:
    """FLEVEL of the first IDAT chunk's zlib header (RFC 1950): 0 for zlib's fastest level, 2 for its default."""
    offset = 8  # the PNG signature
    while True:
        length, kind = struct.unpack(">I4s", png[offset : offset + 8])
        if kind == b"IDAT":
            return png[offset + 9] >> 6
        offset += 12 + length


def test_pictures_and_palette_masks_are_written_losslessly_at_zlibs_fastest_level(tmp_path) -> None:
    from tasks.segment import palette_mask

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    mask = palette_mask(rng.choice([0, 1, 2, 15, 255], size=(60, 80)).astype(np.uint8))
    for name, image in (("drawn", picture), ("mask", mask)):
        path = save_png(image, tmp_path / f"{name}.png")
        with Image.open(path) as read:
            assert read.mode == image.mode and read.getpalette() == image.getpalette()
            np.testing.assert_array_equal(np.asarray(read), np.asarray(image))
        assert _zlib_level_class(path.read_bytes()) == 0, name
        image.save(tmp_path / f"{name}-default.png")  # Pillow's default level, 6: the parser tells the two apart
        assert _zlib_level_class((tmp_path / f"{name}-default.png").read_bytes()) == 2
