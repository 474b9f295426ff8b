"""Benchmarks of the task layer, each against its reference, interleaved in one run.

    python -m tasks.bench coco-eval --images 5000 --detections 100

``coco-eval`` times COCO box evaluation through faster-coco-eval (our default) and pycocotools
on the same synthetic ground truth and results, alternating, and checks that the twelve
summary numbers agree.
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


DETECTOR_STEPS = (
    ("inference", "torchvision"),
    ("inference", "ours"),
    ("inference", "ours (fast backbone)"),
    ("train step", "torchvision"),
    ("train step", "ours"),
)


def _detector_step(
    *, mode: str, candidate: str, images: int, size: tuple[int, int], min_size: int, threads: int
) -> Callable[[], None]:
    """One benchmark step, ready to call: the same seeded weights and inputs for every candidate."""
    import torch
    import torchvision

    from backbones.inference import fast_inference
    from heads.detection import from_torchvision_state_dict
    from tasks.detect import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=min_size)
    if candidate != "torchvision":
        ours = build_model("resnet50", 91, min_size=min_size)
        ours.load_state_dict(from_torchvision_state_dict(model.state_dict()))
        model = ours
    if candidate == "ours (fast backbone)":
        model.eval()
        model.backbone = fast_inference(model.backbone)
    generator = torch.Generator().manual_seed(0)
    batch = [torch.rand(3, *size, generator=generator) for _ in range(images)]
    if mode == "inference":
        model.eval()

        def infer() -> None:
            with torch.inference_mode():
                model(batch)

        return infer
    targets = [
        {
            "boxes": torch.tensor([[40.0, 60.0, 200.0, 220.0], [300.0, 100.0, 420.0, 300.0]]),
            "labels": torch.tensor([3, 17]),
        }
        for _ in range(images)
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5)
    model.train()

    def train() -> None:
        losses = model(batch, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    return train


def detector_benchmark(
    *, images: int, size: tuple[int, int], rounds: int, min_size: int, memory: bool = True
) -> list[dict[str, Any]]:
    """Faster R-CNN R50-FPN inference and one SGD training step: ours against torchvision, same weights.

    Speed is the median over interleaved rounds. Peak memory is the growth of resident memory
    during each candidate's first step in a fresh interpreter (see backbones.bench).
    """
    import torch

    from backbones.bench import first_call_memory_mb

    specs = {
        key: dict(
            mode=key[0], candidate=key[1], images=images, size=size, min_size=min_size, threads=torch.get_num_threads()
        )
        for key in DETECTOR_STEPS
    }
    steps = {key: _detector_step(**spec) for key, spec in specs.items()}  # type: ignore[arg-type]
    times = interleaved(steps, rounds)
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


def multitask_benchmark(*, backbone: str, images: int, size: int, rounds: int) -> list[dict[str, Any]]:
    """One forward of the three-headed model against the three single-task models on the same images."""
    import torch

    from backbones.bench import first_call_memory_mb

    specs = {
        name: dict(candidate=name, backbone=backbone, images=images, size=size, threads=torch.get_num_threads())
        for name in MULTITASK_CANDIDATES
    }
    steps = {name: _multitask_step(**spec) for name, spec in specs.items()}  # type: ignore[arg-type]
    times = interleaved(steps, rounds)
    reference = statistics.median(times[MULTITASK_CANDIDATES[0]])
    return [
        dict(
            candidate=name,
            seconds_per_image=statistics.median(values) / images,
            ratio=reference / statistics.median(values),
            peak_mb=first_call_memory_mb(_multitask_step, specs[name]),
            weights_mb=steps[name].weights_mb,
        )
        for name, values in times.items()
    ]


EXPORT_MODELS = {
    "classify": "resnet50 classifier, 1x3x224x224",
    "segment": "resnet34 U-Net, 1x3x256x256",
    "detect": "Faster R-CNN R50-FPN, one 512x512 image",
}


def _export_steps(task: str, folder: Any) -> dict[str, Callable[[], object]]:
    """Eager PyTorch, onnxruntime float32 and onnxruntime int8 on the same input, random weights."""
    from pathlib import Path

    import torch

    from tasks.export import Exported, export_onnx, quantize_int8

    torch.manual_seed(0)
    if task == "classify":
        from tasks.classify import build_model as build_classifier
        from tasks.classify import export_spec as classify_spec

        spec = classify_spec(build_classifier("resnet50", 1000), 224)
        spec.example = (spec.example[0][:1],)
    elif task == "segment":
        from tasks.segment import build_model as build_unet
        from tasks.segment import export_spec as segment_spec

        spec = segment_spec(build_unet("resnet34", 21), 256)
        spec.example = (spec.example[0][:1],)
    else:
        from tasks.detect import build_model as build_detector
        from tasks.detect import export_spec as detect_spec

        spec = detect_spec(build_detector("resnet50", 91, min_size=512, max_size=512), 512)
        spec.example = (torch.rand(3, 512, 512, generator=torch.Generator().manual_seed(0)),)
    fp32 = export_onnx(spec, Path(folder) / f"{task}.onnx")
    int8 = quantize_int8(fp32, Path(folder) / f"{task}.int8.onnx", [spec.example[0]] * 4)
    runtimes = {"onnxruntime float32": Exported(fp32), "onnxruntime int8": Exported(int8)}
    module, example = spec.module.eval(), spec.example

    def eager() -> None:
        with torch.inference_mode():
            module(*example)

    steps: dict[str, Callable[[], object]] = {"eager PyTorch float32": eager}
    for name, runtime in runtimes.items():
        steps[name] = lambda r=runtime: r(*example)  # type: ignore[misc]
    return steps


def export_benchmark(*, rounds: int, tasks: Sequence[str] = tuple(EXPORT_MODELS)) -> list[dict[str, Any]]:
    """Per task: eager PyTorch against onnxruntime float32 and int8, interleaved, same input."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for task in tasks:
            times = interleaved(_export_steps(task, folder), rounds)
            reference = statistics.median(times["eager PyTorch float32"])
            for name, values in times.items():
                seconds = statistics.median(values)
                rows.append(dict(model=EXPORT_MODELS[task], runtime=name, ms=seconds * 1000, ratio=reference / seconds))
    return rows


RESNET50_GFLOP = 8.2  # per 224x224 image forward: 4.1 GMAC


def matmul_gflops(*, size: int = 2048, rounds: int = 10) -> float:
    """This machine's float32 matrix-multiply throughput (GFLOP/s): the practical ceiling for convolutions."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = statistics.median(interleaved({"mm": lambda: torch.mm(a, b)}, rounds)["mm"])
    return 2 * size**3 / seconds / 1e9


def roofline(*, batch: int, rounds: int) -> list[dict[str, Any]]:
    """ResNet-50 forward at 224x224 as a fraction of the matmul ceiling: torchvision eager, ours, ours (best)."""
    import torch
    import torchvision

    from backbones import build_backbone
    from backbones.inference import optimize_for_inference

    peak = matmul_gflops()
    x = torch.randn(batch, 3, 224, 224)
    reference = torchvision.models.resnet50().eval()
    ours = build_backbone("resnet50", out_levels=("c5",)).eval()
    best = optimize_for_inference(build_backbone("resnet50", out_levels=("c5",)).eval())
    models = {"torchvision resnet50 (eager)": reference, "ours (eager)": ours, "ours (best)": best}

    def forward(model: Any) -> Callable[[], None]:
        def call() -> None:
            with torch.inference_mode():
                model(x)

        return call

    weight, maps = torch.randn(256, 256, 3, 3), torch.randn(batch, 256, 56, 56)
    conv = statistics.median(
        interleaved({"conv": lambda: torch.nn.functional.conv2d(maps, weight, padding=1)}, rounds)["conv"]
    )
    conv_gflops = 2 * batch * 256 * 256 * 9 * 56 * 56 / conv / 1e9
    times = interleaved({name: forward(model) for name, model in models.items()}, rounds)
    rows = [
        dict(name="float32 matmul 2048x2048 (the ceiling)", gflops=peak, fraction=1.0),
        dict(name="one 3x3 convolution, 256 channels at 56x56", gflops=conv_gflops, fraction=conv_gflops / peak),
    ]
    for name, values in times.items():
        achieved = RESNET50_GFLOP * batch / statistics.median(values)
        rows.append(dict(name=name, gflops=achieved, fraction=achieved / peak))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.bench", description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=("coco-eval", "detector", "multitask", "export", "roofline"))
    parser.add_argument("--backbone", default="resnet50", help="multitask: the shared backbone")
    parser.add_argument("--size", type=int, default=512, help="multitask: square image side")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100, help="per image")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="detector: images per call")
    parser.add_argument("--min-size", type=int, default=800, help="detector: the resize target")
    args = parser.parse_args(argv)
    if args.benchmark == "roofline":
        rows = roofline(batch=args.batch, rounds=args.rounds)
        print(f"ResNet-50 forward, batch {args.batch}, 224x224 ({RESNET50_GFLOP} GFLOP per image), float32")
        print("| what | GFLOP/s | fraction of matmul peak |\n|---|---:|---:|")
        for r in rows:
            print(f"| {r['name']} | {r['gflops']:.1f} | {r['fraction']:.0%} |")
        return 0
    if args.benchmark == "export":
        rows = export_benchmark(rounds=args.rounds)
        print(f"exported models on the CPU, random weights, median of {args.rounds} interleaved rounds")
        print("| model | runtime | ms per call | speed vs eager |\n|---|---|---:|---:|")
        for r in rows:
            print(f"| {r['model']} | {r['runtime']} | {r['ms']:.1f} | {r['ratio']:.2f}× |")
        return 0
    if args.benchmark == "multitask":
        rows = multitask_benchmark(backbone=args.backbone, images=args.batch, size=args.size, rounds=args.rounds)
        print(
            f"{args.backbone}: classification (1000) + Faster R-CNN (91) + U-Net (21) inference, {args.batch} images "
            f"of {args.size}x{args.size}, median of {args.rounds} interleaved rounds"
        )
        print(
            "| candidate | s/image | speed vs three models | weights (MiB) | peak activation memory (MiB) |\n"
            "|---|---:|---:|---:|---:|"
        )
        for r in rows:
            print(
                f"| {r['candidate']} | {r['seconds_per_image']:.3f} | {r['ratio']:.2f}× | {r['weights_mb']:.0f} "
                f"| {r['peak_mb']:.0f} |"
            )
        return 0
    if args.benchmark == "detector":
        rows = detector_benchmark(images=args.batch, size=(480, 640), rounds=args.rounds, min_size=args.min_size)
        print(
            f"Faster R-CNN R50-FPN, {args.batch} images of 640x480 resized to {args.min_size}, "
            f"median of {args.rounds} interleaved rounds"
        )
        print("| step | candidate | s/image | speed vs torchvision | peak memory (MiB) |\n|---|---|---:|---:|---:|")
        for r in rows:
            print(
                f"| {r['mode']} | {r['candidate']} | {r['seconds_per_image']:.3f} | {r['ratio']:.2f}× "
                f"| {r['peak_mb']:.0f} |"
            )
        return 0
    row = coco_eval_benchmark(args.images, args.detections, args.rounds)
    print(
        f"COCO box evaluation, {row['images']} images, {row['detections']} detections, "
        f"median of {args.rounds} interleaved rounds (index, load, evaluate, accumulate, summarize)"
    )
    print("| backend | seconds | speed-up vs pycocotools |\n|---|---:|---:|")
    for backend, seconds in row["seconds"].items():
        print(f"| {backend} | {seconds:.2f} | {row['seconds']['pycocotools'] / seconds:.2f}× |")
    print(f"largest difference over the 12 summary numbers: {row['max_difference']:.2e} (AP {row['AP']:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
