from __future__ import annotations

import importlib.util
import os

# Each xdist worker takes its share of the cores, as torchrun's processes take one thread each: two workers of
# torch's default 2 threads on 2 cores ran 4 spinning OpenMP threads on 2 cores, and the suite took 680 s against
# 480 s (docs/results.md, "The test suite's time"). Set before torch is imported; a value the user set stays.
_threads = None
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    _threads = max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)  # for the runners' core plan and every subprocess

import pytest  # noqa: E402
import torch  # noqa: E402

if _threads is not None:  # in case torch was imported before this file
    torch.set_num_threads(_threads)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


def randomize_bn_stats(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine terms, so loading is checked for real."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


# The OpenVINO tests need the optional extra; make test leaves it out for now (docs/results.md says why).
NEEDS_OPENVINO = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
    reason="the optional extra .[openvino] is not installed (pip install -e '.[dev,openvino]'; make test installs it)",
)


def make_image_folder(root, *, classes=("red", "green", "blue"), per_class=(24, 4), size=32, seed=0):
    """A tiny learnable ImageFolder: each class a colour, with noise. Returns the root."""
    import numpy as np
    from PIL import Image

    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "gray": (120, 120, 120)}
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val"), per_class):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(np.array(colours[name]) + rng.normal(0, 25, (size, size, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root
