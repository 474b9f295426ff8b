"""BDD100K's lane-marking F-scores against hand-computed cases and the toolkit's own steps (bdd100k/eval/lane.py):
scikit-image's dilation by a ``disk`` on whole masks (the toolkit calls ``binary_dilation``, deprecated since), and a
category's pixels picked from the bytes' bits."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage.morphology import dilation, disk

from tasks.data.public_sets import BDD_LANES
from tasks.metrics.lanes import BOUND_PIXELS, LaneMeter, lane_f_scores


def test_hand_computed_case() -> None:
    """A true vertical line at x = 10, y 5..24; the prediction 2 px to its right, y 5..14. No pixel is within 1 px
    of the other side: F 0. Within 2 px, every predicted pixel has the true one beside it (precision 1) and half the
    true ones a predicted one (recall 1/2): F 2/3. Within 5 px, a true pixel is found up to 4 rows past the
    prediction's end (4² + 2² ≤ 5²), 14 of 20: F 2 × 0.7 / 1.7. A category on neither side scores 1, one on one
    side only 0."""
    truth = np.zeros((30, 30), dtype=np.int64)
    predicted = np.zeros_like(truth)
    truth[5:25, 10] = 1
    predicted[5:15, 12] = 1
    truth[0, 0] = 3  # class 3 true, never predicted
    scores = lane_f_scores(truth, predicted, categories=[1, 2, 3])
    np.testing.assert_allclose(scores, [[0.0, 2 / 3, 14 / 17], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])


def _lane_bytes(rng: np.random.Generator, lines: int) -> np.ndarray:
    """A BDD100K lane mask: background bytes with bit 8 set, lines whose bytes hold a direction (32), a style (16)
    and a category (the low three bits)."""
    mask = np.full((72, 128), rng.choice([255, 8, 8 | 32]), dtype=np.uint8)
    for _ in range(lines):
        value = int(rng.integers(0, 2)) << 5 | int(rng.integers(0, 2)) << 4 | int(rng.integers(0, 8))
        start, end = rng.integers(0, (128, 72)), rng.integers(0, (128, 72))
        cv2.line(mask, tuple(int(v) for v in start), tuple(int(v) for v in end), value, int(rng.integers(1, 4)))
    return mask


def _toolkit_scores(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The toolkit's category sub-task for one image, on its bytes: (8 categories, 3 bounds)."""
    scores = np.zeros((8, len(BOUND_PIXELS)))
    for value in range(8):
        gt = ((truth & 7) == value) & ((truth >> 3) & 1 == 0)
        pd = ((predicted & 7) == value) & ((predicted >> 3) & 1 == 0)
        for column, bound in enumerate(BOUND_PIXELS):
            n_gt, n_pd = gt.sum(), pd.sum()
            if n_pd == 0 or n_gt == 0:
                precision, recall = (1.0 if n_pd == 0 else 0.0), (1.0 if n_gt == 0 else 0.0)
            else:
                precision = (pd & dilation(gt, disk(bound))).sum() / n_pd
                recall = (gt & dilation(pd, disk(bound))).sum() / n_gt
            total = precision + recall
            scores[value, column] = 2 * precision * recall / total if total else 0.0
    return scores


def _as_classes(lane_bytes: np.ndarray) -> torch.Tensor:
    """The loader's reading of a lane mask: background 0, category c as c + 1 (tasks.data.public_sets)."""
    table = np.array([0 if v & 8 else (v & 7) + 1 for v in range(256)], dtype=np.int64)
    return torch.from_numpy(table[lane_bytes])


def test_against_the_toolkits_steps_on_random_lane_masks() -> None:
    """Masks with every bit the toolkit reads; predictions that move, thicken, drop and invent lines. Each image's
    scores, and the meter's means over images per category and over categories, equal the toolkit's."""
    rng = np.random.default_rng(0)
    meter = LaneMeter(BDD_LANES, ignore_index=255)
    per_image = []
    for _ in range(12):
        truth = _lane_bytes(rng, int(rng.integers(0, 7)))
        predicted = np.roll(truth, tuple(rng.integers(-3, 4, size=2)), axis=(0, 1))
        predicted = cv2.dilate(predicted, np.ones((2, 2), np.uint8)) if rng.random() < 0.5 else predicted
        predicted = np.maximum(predicted, _lane_bytes(rng, int(rng.integers(0, 3))) & ~np.uint8(8))
        reference = _toolkit_scores(truth, predicted)
        ours = lane_f_scores(_as_classes(truth).numpy(), _as_classes(predicted).numpy(), categories=range(1, 9))
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12)
        per_image.append(reference)
        meter.update(_as_classes(predicted), _as_classes(truth))
    assert 0.1 < np.mean(per_image) < 0.9  # neither all found nor all missed
    result = meter.compute()
    means = np.mean(per_image, axis=0)
    assert result["images"] == 12 and list(result["per_class"]) == list(BDD_LANES[1:])
    for column, bound in enumerate(BOUND_PIXELS):
        assert result[f"F1_pix{bound}"] == pytest.approx(means[:, column].mean(), abs=1e-12)
        for row, name in enumerate(BDD_LANES[1:]):
            assert result["per_class"][name][f"F1_pix{bound}"] == pytest.approx(means[row, column], abs=1e-12)


def test_a_batchs_padding_is_left_out_of_both_masks() -> None:
    """A padded batch (void 255 beyond each image) scores as its images cropped: a prediction in the padding is
    neither right nor wrong."""
    rng = np.random.default_rng(1)
    truths = [_as_classes(_lane_bytes(rng, 4)) for _ in range(2)]
    found = [_as_classes(_lane_bytes(rng, 4)) for _ in range(2)]
    found[1][10:20, 30:40] = 3  # the same category in the first image's padding would only add wrong pixels
    cropped = LaneMeter(BDD_LANES, ignore_index=255)
    for f, t in zip(found, truths):
        cropped.update(f[:60, :100], t[:60, :100])
    padded_truth = torch.full((2, 72, 128), 255, dtype=torch.int64)
    padded_found = torch.stack(found)
    padded_found[:, 60:, :] = 3
    for n, t in enumerate(truths):
        padded_truth[n, :60, :100] = t[:60, :100]
    batched = LaneMeter(BDD_LANES, ignore_index=255)
    batched.update(padded_found, padded_truth)
    assert batched.compute() == cropped.compute()
    as_bytes = LaneMeter(BDD_LANES, ignore_index=255)  # masks read as uint8, as the loader keeps them
    as_bytes.update(padded_found.to(torch.uint8), padded_truth.to(torch.uint8))
    assert as_bytes.compute() == cropped.compute()


def test_no_images_have_no_scores() -> None:
    result = LaneMeter(BDD_LANES, ignore_index=255).compute()
    assert result["images"] == 0 and result["F1_pix1"] is None and result["per_class"]["crosswalk"]["F1_pix5"] is None
