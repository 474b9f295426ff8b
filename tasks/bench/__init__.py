"""The project's benchmarks, each against its reference, interleaved in one run.

    python -m tasks.bench                      # all of them; rewrites docs/benchmarks.md
    python -m tasks.bench detector coco-eval   # some of them; prints their tables

The suite itself (settings, the machine's ceiling, the document) is :mod:`tasks.benchsuite`; the
backbone benchmark is :mod:`backbones.bench`. This module holds the task-level benchmarks: COCO
evaluation against pycocotools, the detector against torchvision, the training loop against a bare
loop, multi-task against separate models, and exported models against eager PyTorch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from tasks.metrics.coco import COCO_KEYS, coco_box_metrics


def synthetic_coco(num_images: int, detections_per_image: int, *, seed: int = 0) -> tuple[dict[str, Any], list]:
    """COCO-like ground truth (7 boxes per image on average, 80 categories, all three sizes) and
    ``detections_per_image`` scored results per image: jittered true boxes plus false positives."""
    rng = np.random.default_rng(seed)
    categories = [{"id": i, "name": f"class{i}"} for i in range(1, 81)]
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 640, "height": 480})
        count = int(rng.poisson(7))
        sizes = rng.choice([16.0, 64.0, 200.0], count)[:, None] * rng.uniform(0.6, 1.4, (count, 2))
        corners = rng.uniform(0, 1, (count, 2)) * (np.array([640.0, 480.0]) - sizes)
        labels = rng.integers(1, 81, count)
        for (x, y), (w, h), label in zip(corners, sizes, labels):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
        true = min(count, detections_per_image // 2)
        boxes = np.concatenate(
            [
                np.column_stack(
                    [corners[:true] + rng.normal(0, 3, (true, 2)), sizes[:true] * rng.uniform(0.9, 1.1, (true, 2))]
                ),
                np.column_stack(
                    [
                        rng.uniform(0, 560, (detections_per_image - true, 1)),
                        rng.uniform(0, 400, (detections_per_image - true, 1)),
                        rng.uniform(8, 80, (detections_per_image - true, 2)),
                    ]
                ),
            ]
        )
        classes = np.concatenate([labels[:true], rng.integers(1, 81, detections_per_image - true)])
        for box, label, score in zip(boxes, classes, rng.random(detections_per_image)):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [float(v) for v in box],
                    "score": float(score),
                }
            )
    return {"images": images, "annotations": annotations, "categories": categories}, results


K = TypeVar("K")


def interleaved(steps: dict[K, Callable[[], object]], rounds: int, *, warmup: bool = True) -> dict[K, list[float]]:
    """Seconds of each step per round, after one warm-up call each (``warmup``). The order rotates every round, so
    no candidate always runs right after the same neighbour (the allocator state a big step leaves
    behind favours whoever comes next)."""
    keys = list(steps)
    times: dict[K, list[float]] = {key: [] for key in keys}
    for step in steps.values() if warmup else ():
        step()
    for round_number in range(rounds):
        shift = round_number % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            steps[key]()
            times[key].append(time.perf_counter() - start)
    return times


def coco_eval_benchmark(num_images: int, detections: int, rounds: int) -> dict[str, Any]:
    gt, results = synthetic_coco(num_images, detections)
    metrics: dict[str, dict[str, Any]] = {}

    def evaluate(backend: str) -> Callable[[], None]:
        def call() -> None:
            metrics[backend] = coco_box_metrics(gt, results, backend=backend)  # type: ignore[arg-type]

        return call

    times = interleaved(
        {backend: evaluate(backend) for backend in ("faster-coco-eval", "pycocotools")}, rounds, warmup=False
    )
    difference = max(abs((metrics["faster-coco-eval"][k] or 0) - (metrics["pycocotools"][k] or 0)) for k in COCO_KEYS)
    seconds = {backend: statistics.median(values) for backend, values in times.items()}
    return dict(
        images=num_images,
        detections=len(results),
        seconds=seconds,
        speedup=seconds["pycocotools"] / seconds["faster-coco-eval"],
        max_difference=difference,
        AP=metrics["pycocotools"]["AP"],
    )


# the fast channels-last form with TorchScript's fusion in place of oneDNN's: for a one-off comparison
# (docs/results.md, "oneDNN's fused convolutions without TorchScript"), not one of DETECTOR_STEPS
FAST_TORCHSCRIPT = "ours (fast backbone, channels-last, TorchScript)"

DETECTOR_STEPS = (
    ("inference", "torchvision"),
    ("inference", "ours"),
    ("inference", "ours (fast backbone)"),
    ("inference", "ours (fast backbone, channels-last)"),
    ("train step", "torchvision"),
    ("train step", "ours"),
    ("train step", "ours (channels-last)"),
)


def _device_wait(device_type: str) -> Callable[[], None]:
    """What ends a timed step on a device: a CUDA sync, so the clock times the work and not its launch; else nothing."""
    import torch

    return torch.cuda.synchronize if device_type == "cuda" else (lambda: None)


def _detector_step(
    *,
    mode: str,
    candidate: str,
    images: int,
    size: tuple[int, int],
    min_size: int,
    threads: int,
    device: str = "cpu",
    amp: bool = False,
) -> Callable[[], None]:
    """One benchmark step, ready to call: the same seeded weights and inputs for every candidate, on ``device``,
    under float16 autocast on a GPU (bfloat16 on the CPU) where ``amp``. On a GPU each call waits for the device
    at its end, so that the caller's clock times the work, not its launch."""
    import contextlib

    import torch
    import torchvision

    from backbones.inference import fast_model_inference, optimize_for_inference
    from heads.detection import from_torchvision_state_dict
    from tasks.detect import build_model
    from tasks.recipes import amp_dtype, amp_scaler

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=min_size)
    if candidate != "torchvision":
        ours = build_model("resnet50", 91, min_size=min_size)
        ours.load_state_dict(from_torchvision_state_dict(model.state_dict()))
        model = ours
    model.to(device)
    if candidate == "ours (fast backbone)":  # the detect runner's eval and predict with AVX2 alone
        fast_model_inference(model, channels_last=False)
    elif candidate == "ours (fast backbone, channels-last)":  # the same with AVX-512
        fast_model_inference(model, channels_last=True)
    elif candidate == FAST_TORCHSCRIPT:  # the form before oneDNN's fused convolutions (not a default row)
        model.eval().to(memory_format=torch.channels_last)
        model.backbone = optimize_for_inference(model.backbone, onednn=False)
    elif candidate == "ours (channels-last)":  # as the engine trains with train.channels_last=true
        model.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    batch = [torch.rand(3, *size, generator=generator).to(device) for _ in range(images)]
    kind = torch.device(device).type
    wait = _device_wait(kind)

    def autocast() -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(kind, dtype=amp_dtype(kind), enabled=amp)

    if mode == "inference":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), autocast():
                model(batch)
            wait()

        return infer
    targets = [
        {
            "boxes": torch.tensor([[40.0, 60.0, 200.0, 220.0], [300.0, 100.0, 420.0, 300.0]], device=device),
            "labels": torch.tensor([3, 17], device=device),
        }
        for _ in range(images)
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5)
    scaler = amp_scaler(kind, amp)
    model.train()

    def train() -> None:
        with autocast():
            loss = sum(model(batch, targets).values())
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        wait()
        train.losses.append(loss.detach())  # type: ignore[attr-defined]

    train.losses = []  # type: ignore[attr-defined]  # every step's, for finite_losses after the rounds
    return train


def detector_benchmark(
    *,
    images: int,
    size: tuple[int, int],
    rounds: int,
    min_size: int,
    memory: bool = True,
    device: str = "cpu",
    amp: bool = False,
    candidates: Sequence[tuple[str, str]] = DETECTOR_STEPS,
) -> list[dict[str, Any]]:
    """Faster R-CNN R50-FPN inference and one SGD training step: ours against torchvision, same weights, on
    ``device`` (with ``amp``, both under autocast). ``candidates``: which of :data:`DETECTOR_STEPS` (each mode's
    torchvision row among them).

    Speed is the median over interleaved rounds. Peak memory is the growth of resident memory
    during each candidate's first step in a fresh interpreter (see backbones.bench).
    """
    import torch

    from backbones.bench import count_flops, first_call_memory_mb

    specs = {
        key: dict(
            mode=key[0],
            candidate=key[1],
            images=images,
            size=size,
            min_size=min_size,
            threads=torch.get_num_threads(),
            device=device,
            amp=amp,
        )
        for key in candidates
    }
    steps = {key: _detector_step(**spec) for key, spec in specs.items()}  # type: ignore[arg-type]
    modes = sorted({mode for mode, _ in specs})
    flops = {mode: count_flops(steps[(mode, "torchvision")]) / images for mode in modes}
    times = interleaved(steps, rounds)
    for (mode, name), step in steps.items():
        if mode != "inference":
            finite_losses(step.losses, f"the detector's {mode} ({name})")  # type: ignore[attr-defined]
    rows = []
    for (mode, name), values in times.items():
        seconds = statistics.median(values)
        reference_seconds = statistics.median(times[(mode, "torchvision")])
        peak = first_call_memory_mb(_detector_step, specs[(mode, name)]) if memory else float("nan")
        rows.append(
            dict(
                mode=mode,
                candidate=name,
                seconds_per_image=seconds / images,
                ratio=reference_seconds / seconds,
                peak_mb=peak,
                gflop_per_image=flops[mode] / 1e9,
            )
        )
    return rows


MULTITASK_CANDIDATES = ("three single-task models", "one multi-task model", "the backbone alone (c1..c5)")


class _Inference:
    """Inference of some models on one batch, in turn; ``weights_mb`` is their parameter and buffer memory."""

    def __init__(self, models: list[Any], batch: Any) -> None:
        self.models = models
        self.batch = batch
        tensors = [t for m in models for t in (*m.parameters(), *m.buffers())]
        self.weights_mb = sum(t.numel() * t.element_size() for t in tensors) / 2**20

    def __call__(self) -> None:
        import torch

        with torch.inference_mode():
            for model in self.models:
                model(self.batch)


def _multitask_step(*, candidate: str, backbone: str, images: int, size: int, threads: int) -> _Inference:
    """Inference on one batch: three single-task models in turn, or one model with the three heads."""
    import torch

    from tasks.multitask import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    counts = {"classify": 1000, "detect": 91, "segment": 21}
    if candidate == "one multi-task model":
        models = [build_model(backbone, list(counts), counts)]
    elif candidate.startswith("the backbone alone"):
        models = [build_model(backbone, ["segment"], counts).backbone]  # the levels all three heads read
    else:
        models = [build_model(backbone, [task], counts) for task in counts]
    batch = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(0))
    return _Inference([model.eval() for model in models], batch)


def multitask_benchmark(
    *, backbone: str, images: int, size: int, rounds: int, memory: bool = True
) -> list[dict[str, Any]]:
    """One forward of the three-headed model against the three single-task models on the same images."""
    import torch

    from backbones.bench import count_flops, first_call_memory_mb

    specs = {
        name: dict(candidate=name, backbone=backbone, images=images, size=size, threads=torch.get_num_threads())
        for name in MULTITASK_CANDIDATES
    }
    steps = {name: _multitask_step(**spec) for name, spec in specs.items()}  # type: ignore[arg-type]
    flops = {name: count_flops(step) / images for name, step in steps.items()}  # each candidate's own work
    times = interleaved(steps, rounds)
    reference = statistics.median(times[MULTITASK_CANDIDATES[0]])
    return [
        dict(
            candidate=name,
            seconds_per_image=statistics.median(values) / images,
            ratio=reference / statistics.median(values),
            peak_mb=first_call_memory_mb(_multitask_step, specs[name]) if memory else float("nan"),
            weights_mb=steps[name].weights_mb,
            gflop_per_image=flops[name] / 1e9,
        )
        for name, values in times.items()
    ]


EXPORT_MODELS = {
    "classify": ("resnet50", 224),
    "segment": ("resnet34", 256),
    "detect": ("resnet50", 512),
    "multitask": ("resnet50", 384),
}


def export_model_name(task: str, backbone: str, size: int) -> str:
    return {
        "classify": f"{backbone} classifier, 1×3×{size}×{size}",
        "segment": f"{backbone} U-Net, 1×3×{size}×{size}",
        "detect": f"Faster R-CNN {backbone}-FPN, one {size}×{size} image",
        "multitask": f"{backbone} multi-task (3 heads), 1×3×{size}×{size}",
    }[task]


def _export_steps(task: str, backbone: str, size: int, folder: Any) -> tuple[dict[str, Callable[[], object]], float]:
    """Eager PyTorch, onnxruntime float32 and int8, and OpenVINO float32 and int8 where the extra is installed,
    on the same input, random weights; and the eager forward's FLOPs."""
    import importlib.util
    from pathlib import Path

    import torch

    from backbones.bench import count_flops
    from tasks.export import Exported, export_onnx, export_openvino, quantize_int8, quantize_openvino_int8

    torch.manual_seed(0)
    if task == "classify":
        from tasks.classify import build_model as build_classifier
        from tasks.classify import export_spec as classify_spec

        spec = classify_spec(build_classifier(backbone, 1000), size)
        spec.example = (spec.example[0][:1],)
    elif task == "segment":
        from tasks.segment import build_model as build_unet
        from tasks.segment import export_spec as segment_spec

        spec = segment_spec(build_unet(backbone, 21), size)
        spec.example = (spec.example[0][:1],)
    elif task == "detect":
        from tasks.detect import build_model as build_detector
        from tasks.detect import export_spec as detect_spec

        spec = detect_spec(build_detector(backbone, 91, min_size=size, max_size=size), size)
        spec.example = (torch.rand(3, size, size, generator=torch.Generator().manual_seed(0)),)
    else:  # one image: torchvision's detection export takes one
        from tasks.multitask import TASKS
        from tasks.multitask import build_model as build_multitask
        from tasks.multitask import export_spec as multitask_spec

        classes = {"classify": 1000, "detect": 91, "segment": 21}
        spec = multitask_spec(build_multitask(backbone, TASKS, classes), size)
    calibration = [spec.example[0]] * 4
    fp32 = export_onnx(spec, Path(folder) / f"{task}.onnx")
    int8 = quantize_int8(fp32, Path(folder) / f"{task}.int8.onnx", calibration)
    runtimes = {"onnxruntime float32": Exported(fp32), "onnxruntime int8": Exported(int8)}
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):  # the optional extra
        ir = export_openvino(spec, Path(folder) / f"{task}.xml")
        runtimes["OpenVINO float32"] = Exported(ir)
        runtimes["OpenVINO int8"] = Exported(
            quantize_openvino_int8(ir, Path(folder) / f"{task}.int8.xml", calibration, spec)
        )
    module, example = spec.module.eval(), spec.example

    def eager() -> None:
        with torch.inference_mode():
            module(*example)

    steps: dict[str, Callable[[], object]] = {"eager PyTorch float32": eager}
    for name, runtime in runtimes.items():
        steps[name] = lambda r=runtime: r(*example)  # type: ignore[misc]
    return steps, count_flops(eager)


def export_benchmark(*, rounds: int, models: dict[str, tuple[str, int]] | None = None) -> list[dict[str, Any]]:
    """Per task: eager PyTorch against onnxruntime (and OpenVINO) float32 and int8, interleaved, same input.
    ``models`` maps a task to its (backbone, input side); by default :data:`EXPORT_MODELS`."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for task, (backbone, size) in (models or EXPORT_MODELS).items():
            steps, flops = _export_steps(task, backbone, size, folder)
            times = interleaved(steps, rounds)
            reference = statistics.median(times["eager PyTorch float32"])
            for name, values in times.items():
                seconds = statistics.median(values)
                rows.append(
                    dict(
                        model=export_model_name(task, backbone, size),
                        runtime=name,
                        ms=seconds * 1000,
                        ratio=reference / seconds,
                        gflop_per_call=flops / 1e9,
                    )
                )
    return rows


TRAINING_RECIPES = {
    # task: (packaged recipe, backbone, what the recipe trains on)
    "classify": ("classify/digits", "resnet18", "digits, 32 px, batch 64, AdamW"),
    "detect": ("detect/shapes", "resnet50", "shapes, 128 px, batch 8, SGD (the main job)"),
    "segment": ("segment/shapes", "resnet34", "shapes, 128 px crops, batch 8, AdamW"),
    "multitask": ("multitask/shapes", "resnet50", "shapes, 128 px, batch 4, SGD, three heads"),
}


def _runner_setup(task: str, overrides: Sequence[str]) -> Any:
    """The runner's resolved config and training Setup under its packaged recipe (the built-in data) and the
    training table's backbone for the task (``TRAINING_RECIPES``; classify's is resnet18, where the runner's
    default is resnet50), plus ``--set`` overrides, which win."""
    import contextlib
    import importlib
    import io

    from tasks.cli import resolve_config

    module = importlib.import_module(f"tasks.{task}")
    defaults = {
        "classify": "ClassifyConfig",
        "detect": "DetectConfig",
        "segment": "SegmentConfig",
        "multitask": "MultiTaskConfig",
    }[task]
    args = argparse.Namespace(config=[], set=[f"model.backbone={TRAINING_RECIPES[task][1]}", *overrides])
    cfg = resolve_config(getattr(module, defaults)(), args, {}, embedded=TRAINING_RECIPES[task][0])
    with contextlib.redirect_stdout(io.StringIO()):  # "using the built-in data at ..."
        parts = module.setup(cfg)
    return parts.config, parts


def training_benchmark(
    task: str,
    *,
    steps: int,
    rounds: int,
    backbone: str | None = None,
    overrides: Sequence[str] = (),
    numerics_steps: int = 3,
    device: str = "cpu",
    ceiling_side: int = 2048,
) -> list[dict[str, Any]]:
    """Seconds per training iteration and the fraction spent waiting for the DataLoader: our engine's loop
    (``Engine.train_epoch``: autocast, loss check, scaler, schedule, logging) against a bare PyTorch loop
    (next batch, forward, backward, optimizer step, as torchvision's reference scripts do), on the same
    recipe, data, model weights, loss and optimizer. Each round runs ``steps`` iterations of each, in turn. The
    engine trains in the recipe's precision and memory format (``train.amp``, ``train.channels_last``) with the
    optimizer's fused step, the bare loop in float32 NCHW with torch's default step; :func:`precision_drift`
    measures what that changes in the loss. On ``device`` (``train.device``; on a GPU each loop's clock stops after
    a device sync, and the engine's precision is the recipe's there: float16 autocast with a gradient scaler).
    Every round also times the device's ceiling (:func:`round_ceiling`, ``ceiling_side``), and each row's
    ``round_shares`` are its FLOP rate over the ceiling of its own round, a share per timed round."""
    import contextlib
    import io
    import tempfile
    from pathlib import Path

    from backbones.bench import count_flops
    from tasks.engine import Engine, EpochStats, build_optimizer, resolve_device

    overrides = [*([f"model.backbone={backbone}"] if backbone else []), f"train.device={device}", *overrides]
    cfg, ours = _runner_setup(task, overrides)
    _, plain = _runner_setup(task, overrides)  # the same seeded weights, its own loader
    where = resolve_device(cfg.train.device)
    plain.model.to(where)
    wait = _device_wait(where.type)
    stats: dict[str, list[EpochStats]] = {"our engine": [], "bare PyTorch loop": []}
    optimizer = build_optimizer(plain.model, cfg.train, fused=False)  # torch's default step, as a plain loop has
    bare_step = bare_loop_step(plain, optimizer, cfg.train.clip_grad)

    def bare() -> None:
        plain.model.train()
        images = step = 0
        data = 0.0
        losses = []
        start = last = time.perf_counter()
        for batch in plain.train_loader:
            data += time.perf_counter() - last
            losses.append(bare_step(plain.task.to_device(batch, where)))
            images, step = images + int(batch["batch_size"]), step + 1
            last = time.perf_counter()
            if step >= steps:
                break
        wait()
        stats["bare PyTorch loop"].append(EpochStats(step, images, time.perf_counter() - start, data))
        finite_losses(losses, f"{task}'s bare PyTorch loop")

    with tempfile.TemporaryDirectory() as folder:
        engine = Engine(ours.model, ours.task, cfg.train, Path(folder), ours.meta)
        engine.prepare(steps)
        with contextlib.redirect_stdout(io.StringIO()):  # "image cache: ..."
            engine.cache_images(ours.train_loader)  # as fit() does
        for _ in ours.train_loader:  # one pass fills the cache, as a run's first epoch does
            pass

        def engine_epoch() -> None:
            with contextlib.redirect_stdout(io.StringIO()):  # the engine's per-epoch log line
                stats["our engine"].append(engine.train_epoch(ours.train_loader, len(stats["our engine"]), steps))

        batch = plain.task.to_device(next(iter(plain.train_loader)), where)
        flops = count_flops(lambda: plain.task.losses(plain.model, batch)["loss"].backward()) / batch["batch_size"]
        plain.model.zero_grad(set_to_none=True)
        drift = precision_drift(plain, cfg.train, steps=numerics_steps)
        ceilings: list[float] = []  # each round's, beside its loops
        ceiling = round_ceiling(where.type, ceiling_side)
        loops = {"our engine": engine_epoch, "bare PyTorch loop": bare}
        interleaved({**loops, "ceiling": lambda: ceilings.append(ceiling())}, rounds)
    reference = statistics.median(s.seconds_per_step for s in stats["bare PyTorch loop"][1:])
    rows = []
    for name, runs in stats.items():
        timed = runs[1:]  # the first is the warm-up (worker start-up)
        seconds = statistics.median(s.seconds_per_step for s in timed)
        images_per_step = sum(s.images for s in timed) / max(sum(s.steps for s in timed), 1)
        rows.append(
            dict(
                task=task,
                recipe=f"{cfg.model.backbone}, {TRAINING_RECIPES[task][2]}",
                candidate=name,
                seconds_per_iter=seconds,
                images_per_s=images_per_step / seconds,
                data_fraction=sum(s.data_seconds for s in timed) / sum(s.seconds for s in timed),
                round_shares=round_shares(flops, timed, ceilings[1:]),
                ratio=reference / seconds,
                gflop_per_image=flops / 1e9,
                precision=precision_name(cfg.train, where.type) if name == "our engine" else "float32",
                loss_drift=drift if name == "our engine" else None,
                numerics_steps=numerics_steps,
            )
        )
    return rows


def round_ceiling(device_type: str, side: int) -> Callable[[], float]:
    """The ceiling that each round of the training benchmark times beside its loops (GFLOP/s, the best of 3 calls):
    on a CPU the float32 ``side`` x ``side`` product as a 1x1 convolution (oneDNN, the machine table's ceiling),
    on a GPU the float16 matmul of 4 ``side`` (the GPU tables' "of peak")."""
    if device_type == "cpu":
        return lambda: gemm_as_conv_gflops(size=side, rounds=3)
    return lambda: matmul_gflops(size=4 * side, rounds=3, device=device_type, dtype="float16")


def round_shares(flops_per_image: float, rounds: Sequence[Any], ceilings: Sequence[float]) -> list[float]:
    """A loop's FLOP rate in each round (``flops_per_image`` times the round's images over its seconds) divided by
    the ceiling (GFLOP/s) timed in the same round: the share of what the host gave in that round. A shared host's
    ceiling moves with its neighbours' load (215-403 GFLOP/s within an hour on an AMD EPYC with Zen 5), so a loop
    timed in a slow spell reads low against the run's best ceiling."""
    if len(rounds) != len(ceilings) or not rounds:
        raise ValueError(f"{len(rounds)} timed round(s) against {len(ceilings)} ceiling(s)")
    return [flops_per_image * r.images / r.seconds / 1e9 / c for r, c in zip(rounds, ceilings, strict=True)]


def bare_loop_step(parts: Any, optimizer: Any, clip_grad: float | None) -> Callable[[dict[str, Any]], Any]:
    """One step of the training benchmark's bare PyTorch loop over a runner Setup's model: forward, backward,
    torch's ``clip_grad_norm_`` to the recipe's ``train.clip_grad`` where it sets one (as torchvision's reference
    scripts clip with ``--clip-grad-norm``), optimizer step. Returns the detached loss, with no sync. Unclipped,
    the main job's detector (learning rate 0.02 from the first step) diverged after 17-20 steps, and the table
    timed NaN steps over fewer boxes: about 0.5 s a step against 0.8-1.2 s (2026-12-07, AMD EPYC)."""
    import torch

    def step(batch: dict[str, Any]) -> Any:
        loss = parts.task.losses(parts.model, batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(parts.model.parameters(), clip_grad)
        optimizer.step()
        return loss.detach()

    return step


def finite_losses(losses: Sequence[Any], loop: str) -> None:
    """Raise where a timed loop's loss was not finite: its later steps would time NaN arithmetic over other
    work (the detector keeps fewer boxes), not training. One sync, after the timed steps."""
    import torch

    bad = int((~torch.isfinite(torch.stack(losses))).sum()) if losses else 0
    if bad:
        raise RuntimeError(f"{loop}: the loss was not finite in {bad} of {len(losses)} steps; its timings are void")


def precision_name(train: Any, device_type: str = "cpu") -> str:
    """How a resolved train config computes on a device: its autocast dtype and memory format."""
    from tasks.recipes import amp_dtype

    dtype = str(amp_dtype(device_type)).removeprefix("torch.") if train.amp else "float32"
    return f"{dtype}{', channels-last' if train.channels_last else ''}"


def first_batches(parts: Any, count: int) -> list[dict[str, Any]]:
    """The first ``count`` batches of a runner Setup's training loader (fewer where it holds fewer), on the device
    of its model."""
    device = next(parts.model.parameters()).device  # the runner's setup puts it on train.device
    return [parts.task.to_device(b, device) for b, _ in zip(parts.train_loader, range(count))]


def training_stepper(
    parts: Any, train: Any, *, amp: bool, channels_last: bool, fused: bool | None = None
) -> Callable[..., Any]:
    """One training step of a copy of a runner Setup's model, with the optimizer ``train`` builds (its fused step
    unless ``fused=False``), in bfloat16 autocast (``amp``) and channels-last or not, its gradients clipped to
    ``train.clip_grad`` as the engine clips them: ``step(batch)`` returns the loss after backward and the optimizer
    step; ``step(batch, update=False)`` only computes it; ``step.model`` is the copy it trains. Unclipped, the main
    job's detector (learning rate 0.02) diverged after about 16 steps, and a profile of its later steps timed NaN
    losses over fewer boxes: 290-320 ms a step against 420-440 ms."""
    import copy

    import torch

    from tasks.engine import build_optimizer, clip_gradients
    from tasks.recipes import amp_dtype, amp_scaler

    model = copy.deepcopy(parts.model).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, train, fused=fused)
    device = next(model.parameters()).device
    kind = device.type
    scaler = amp_scaler(kind, amp)  # as the engine scales float16's loss
    limit = train.clip_grad

    def step(batch: dict[str, Any], update: bool = True) -> Any:
        with torch.autocast(kind, dtype=amp_dtype(kind), enabled=amp):
            loss = parts.task.losses(model, batch)["loss"]
        if update:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if limit:
                scaler.unscale_(optimizer)
                clip_gradients(model, limit, device)
            scaler.step(optimizer)
            scaler.update()
        return loss

    step.model = model  # type: ignore[attr-defined]
    return step


def precision_drift(parts: Any, train: Any, *, steps: int) -> float:
    """The relative change in the training loss after ``steps`` optimizer steps on the same batches, from the
    same weights, with the same optimizer settings and the same random draws (the detector's box sampling),
    between the bare loop's float32 NCHW copy of ``parts.model`` with torch's default optimizer step and the
    engine's: ``train``'s precision and memory format, and the fused step. What the engine's speed settings
    change in the numbers; float rounding alone where the run stays in float32."""
    import torch

    *batches, last = first_batches(parts, steps + 1)
    losses = []
    for amp, channels_last, fused in ((False, False, False), (bool(train.amp), bool(train.channels_last), None)):
        # clipped on both sides, as both loops train: the change is the precision's and the step's alone
        step = training_stepper(parts, train, amp=amp, channels_last=channels_last, fused=fused)
        torch.manual_seed(0)
        for batch in batches:
            step(batch)
        losses.append(float(step(last, update=False).detach()))  # the loss after the steps, not yet stepped on
    reference, candidate = losses
    return abs(candidate - reference) / max(abs(reference), 1e-12)


# (layout, step, the step its speed and parameters are compared with); ours on channels-last weights against
# torch's own fused step on them, which copies every such gradient (tasks.engine.FusedSGD)
OPTIMIZER_STEPS = (
    ("NCHW", "torch's default", "torch's default"),
    ("NCHW", "foreach", "torch's default"),
    ("NCHW", "ours (fused)", "torch's default"),
    ("channels-last", "torch's fused", "torch's fused"),
    ("channels-last", "ours (fused)", "torch's fused"),
)
OPTIMIZER_SETTINGS = {  # TrainConfig fields of each optimizer: the digits and shapes recipes' kind of values
    "sgd": dict(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4),
    "adamw": dict(optimizer="adamw", lr=1e-3, weight_decay=0.05),
}


def optimizer_benchmark(*, arch: str, optimizer: str, rounds: int, seed: int = 0) -> list[dict[str, Any]]:
    """Milliseconds of one optimizer step over the parameters of torchvision's ``arch`` (random gradients), in
    the groups :func:`tasks.engine.param_groups` makes (no decay on norms and biases), each on its own copy of
    the model, interleaved. On NCHW weights, ours (:func:`tasks.engine.build_optimizer`, torch's fused step on
    the CPU) against torch's default step (``fused=False``: a Python loop over the parameters on the CPU) and
    ``foreach=True`` (torch's CUDA default); on channels-last weights, as the engine trains with bfloat16, ours
    against torch's own fused optimizer. Every copy takes the same number of steps with the same gradients, so
    each row also states how far its parameters end from its reference's."""
    import copy

    import torch
    import torchvision

    from tasks.config import TrainConfig
    from tasks.engine import build_optimizer, param_groups

    cfg = TrainConfig(**OPTIMIZER_SETTINGS[optimizer])
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None)
    generator = torch.Generator().manual_seed(seed)
    grads = [torch.randn(p.shape, generator=generator) * 1e-2 for p in model.parameters()]
    models, steps = {}, {}
    for layout, name, _ in OPTIMIZER_STEPS:
        key = (layout, name)
        form = torch.channels_last if layout == "channels-last" else torch.contiguous_format
        models[key] = copy.deepcopy(model).to(memory_format=form)
        for param, grad in zip(models[key].parameters(), grads):
            param.grad = grad.clone(memory_format=form if grad.dim() == 4 else torch.contiguous_format)
        if name == "torch's fused":
            kind = torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW
            options = {"momentum": cfg.momentum} if optimizer == "sgd" else {}
            steps[key] = kind(param_groups(models[key], cfg), lr=cfg.lr, fused=True, **options).step
        else:
            fused = None if name == "ours (fused)" else False
            steps[key] = build_optimizer(models[key], cfg, fused=fused, foreach=name == "foreach").step
    times = interleaved(steps, rounds)
    after = {key: torch.cat([p.detach().flatten() for p in m.parameters()]) for key, m in models.items()}
    rows = []
    for layout, name, against in OPTIMIZER_STEPS:
        seconds = statistics.median(times[layout, name])
        rows.append(
            dict(
                model=arch,
                optimizer={"sgd": "SGD", "adamw": "AdamW"}[optimizer],
                layout=layout,
                step=name,
                ms=seconds * 1000,
                against=against,
                ratio=statistics.median(times[layout, against]) / seconds,
                steps=rounds + 1,
                difference=None
                if name == against
                else float((after[layout, name] - after[layout, against]).abs().max()),
            )
        )
    return rows


def _best_seconds(call: Callable[[], object], rounds: int) -> float:
    """The fastest of ``rounds`` timed calls, after two warm-up calls: a ceiling is what the hardware can reach."""
    for _ in range(2):
        call()
    return min(interleaved({"call": call}, rounds, warmup=False)["call"])


def matmul_gflops(*, size: int = 2048, rounds: int = 10, device: str = "cpu", dtype: str = "float32") -> float:
    """Matrix-multiply throughput (GFLOP/s) of ``torch.mm`` on ``device`` in ``dtype`` (MKL's sgemm on a CPU)."""
    import torch

    kind = getattr(torch, dtype)
    a, b = torch.randn(size, size, dtype=kind, device=device), torch.randn(size, size, dtype=kind, device=device)

    def mm() -> None:
        torch.mm(a, b)
        if a.is_cuda:
            torch.cuda.synchronize()

    return 2 * size**3 / _best_seconds(mm, rounds) / 1e9


def gemm_as_conv_gflops(*, size: int = 2048, rows: int = 1024, rounds: int = 10) -> float:
    """The same float32 matrix product (``rows`` x ``size`` times ``size`` x ``size``) computed as a 1x1
    convolution, which a CPU build of torch hands to oneDNN rather than MKL."""
    import torch

    side = int(rows**0.5)
    maps, weight = torch.randn(1, size, side, side), torch.randn(size, size, 1, 1)
    return 2 * side * side * size * size / _best_seconds(lambda: torch.nn.functional.conv2d(maps, weight), rounds) / 1e9


def conv_gflops(*, batch: int = 8, channels: int = 256, side: int = 56, rounds: int = 10) -> float:
    """Throughput of one large float32 3x3 convolution (oneDNN on a CPU), for comparison with the matmul."""
    import torch

    weight, maps = torch.randn(channels, channels, 3, 3), torch.randn(batch, channels, side, side)
    seconds = _best_seconds(lambda: torch.nn.functional.conv2d(maps, weight, padding=1), rounds)
    return 2 * batch * channels * channels * 9 * side * side / seconds / 1e9
