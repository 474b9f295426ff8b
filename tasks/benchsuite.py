"""The whole benchmark suite: every benchmark of the project in one run, written as docs/benchmarks.md.

``python -m tasks.bench`` runs :func:`run_suite` with :data:`FULL` settings; ``--quick`` uses :data:`QUICK`
(small inputs, one round, no memory sampling) to check the suite end to end in about 3 minutes on 2 cores. Each
benchmark lives in :mod:`tasks.bench` or :mod:`backbones.bench`; this module chooses their settings,
measures the machine's ceiling, and renders every table with its ratio, absolute numbers and the achieved
FLOP/s as a fraction of that ceiling.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata

from tasks import bench
from tasks.bench.markdown import ROUND_SHARE, footer_line, part_footer

SECTIONS = ("backbone", "detector", "coco-eval", "training", "optimizer", "multitask", "export", "learning")


@dataclass(frozen=True)
class Settings:
    """Sizes and rounds of every benchmark in one suite run."""

    name: str
    backbone: tuple[str, int, int, int] = ("resnet50", 8, 224, 10)  # arch, batch, image side, rounds
    detector: tuple[int, tuple[int, int], int, int] = (2, (480, 640), 800, 6)  # images, (H, W), min_size, rounds
    coco_eval: tuple[int, int, int] = (5000, 100, 2)  # images, detections per image, rounds
    training: tuple[int, int] = (10, 9)  # iterations per round, rounds (3 rounds moved ratios by a tenth)
    training_backbone: str | None = None  # None: each recipe's own backbone
    training_overrides: tuple[str, ...] = ()
    # optimizer steps before the training rows' loss is compared with the bare loop's: after one, a float32 row
    # differs by one rounding of the update; after more, AdamW can grow that rounding (see training_section)
    numerics_steps: int = 3
    optimizer: tuple[tuple[str, ...], int] = (("resnet18", "resnet50"), 12)  # torchvision models, rounds
    multitask: tuple[str, int, int, int] = ("resnet50", 2, 512, 8)  # backbone, images, side, rounds
    export: dict[str, tuple[str, int]] = field(default_factory=lambda: dict(bench.EXPORT_MODELS))
    export_rounds: int = 10
    ceiling: tuple[int, int, int, int] = (2048, 8, 256, 56)  # matmul side, conv batch, channels, map side
    ceiling_rounds: int = 10
    memory: bool = True
    gpu_backbone: tuple[str, int, int, int] = ("resnet50", 256, 224, 20)  # arch, batch, side, rounds
    gpu_detector: tuple[int, tuple[int, int], int, int] = (2, (480, 640), 800, 10)  # images, (H, W), min_size, rounds
    # the time budget of each task's runs, the data's scale, the sets (None: every reporting set); "multitask":
    # each single-task run's budget, the multitask run having three times as long
    learning: tuple[dict[str, str], float, tuple[str, ...] | None] = (
        {"classify": "3m", "segment": "3m", "detect": "3m", "multitask": "2m"},
        1.0,
        None,
    )
    # The multitask rows' loss weightings: the default only. Fixed against uncertainty was measured once, on
    # 2026-11-24, and is kept in docs/results.md; naming both here doubles the multitask rows' 36 minutes.
    weightings: tuple[str, ...] = ("uncertainty",)


FULL = Settings(name="full")
QUICK = Settings(
    name="quick",
    backbone=("resnet18", 2, 64, 2),
    detector=(1, (128, 128), 128, 1),
    coco_eval=(200, 20, 1),
    training=(2, 1),
    training_backbone="resnet18",
    training_overrides=("train.workers=0",),
    numerics_steps=1,
    optimizer=(("resnet18",), 2),
    multitask=("resnet18", 1, 64, 1),
    export={"classify": ("resnet18", 64), "segment": ("resnet18", 64)},
    export_rounds=2,
    ceiling=(512, 1, 64, 28),
    ceiling_rounds=3,
    memory=False,
    # one single-task row (faces) and the multitask rows, which run segment alone as their reference: a coins
    # segment row of its own added 34 s of the suite's test on 2 cores for no path the others leave untried
    # 2 s a run, not 5: every path still runs (an epoch, evaluation, the reference loop), 14 s less on 2 cores
    learning=({"classify": "2s", "multitask": "2s"}, 0.1, ("faces", "coins")),
    weightings=("fixed",),
    gpu_backbone=("resnet18", 2, 64, 2),
    gpu_detector=(1, (128, 128), 128, 1),
)


def _ratio(value: float) -> str:
    return f"{value:.2f}×"


def _mib(value: float) -> str:
    return "—" if value != value else f"{value:.0f}"  # NaN: not measured


def _table(header: Sequence[str], align: str, rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Section:
    """One benchmark's part of the document, and the rows the summary repeats."""

    title: str
    text: str
    table: Callable[[float], str]  # the Markdown table, given the ceiling for "of peak"
    headlines: list[tuple[str, str]]  # (what, ratio text)
    command: str = ""  # how to run this part alone
    seconds: float = 0.0

    def markdown(self, peak: float) -> str:
        return (
            f"## {self.title}\n\n```\n{self.command}\n```\n\n{self.text}\n\n{self.table(peak)}\n\n"
            f"{footer_line(self.seconds, datetime.date.today().isoformat(), _cpu_name(), peak)}\n"
        )


CEILING_SPREAD = 0.15  # ceilings further apart than this are other machines: the ceiling's runs agree within ~5%


def part_ceiling(part: str) -> float | None:
    """The float32 ceiling in a part's last line (GFLOP/s), or None where it names none or has no such line."""
    footer = part_footer(part)
    return footer[2] if footer else None


def other_machines(document: str, fresh: str) -> tuple[float | None, list[str]]:
    """``fresh``'s float32 ceiling, and the titles of ``document``'s parts that ``fresh`` does not replace and that
    were measured at another ceiling (or at one not recorded), each with its ceiling: what an ``--update`` keeps
    from another machine."""
    from tasks.bench.markdown import split_parts

    _, old = split_parts(document)
    _, new = split_parts(fresh)
    ceilings = [c for c in map(part_ceiling, new.values()) if c is not None]
    if not ceilings:
        return None, []
    now = max(ceilings)
    kept = []
    for title, part in old.items():
        footer = part_footer(part)
        if title in new or footer is None:  # replaced, or not a measured part (Machine, Summary, Targets)
            continue
        ceiling = footer[2]
        if ceiling is None or abs(ceiling - now) > CEILING_SPREAD * now:
            kept.append(f"{title.removeprefix('## ')} ({'not recorded' if ceiling is None else f'{ceiling:.1f}'})")
    return now, kept


def _command(s: Settings, name: str) -> str:
    return f"python -m tasks.bench {name}{' --quick' if s.name == 'quick' else ''}"


def _flop_columns(gflop: float, per_second: float, peak: float) -> list[str]:
    """Achieved GFLOP/s and its fraction of the matmul ceiling, from FLOPs per unit and units per second."""
    achieved = gflop * per_second
    return [f"{achieved:.1f}", f"{achieved / peak:.0%}"]


def backbone_section(s: Settings) -> Section:
    import torch

    from backbones.bench import benchmark

    arch, batch, side, rounds = s.backbone
    rows = benchmark(
        arch,
        batch_size=batch,
        image_size=side,
        modes=("forward", "train"),
        channels_last=False,
        inference_mode=False,
        compile_model=False,
        rounds=rounds,
        warmup=1,
        device=torch.device("cpu"),
        memory=s.memory,
    )

    def table(peak: float) -> str:
        body = [
            [
                str(r["mode"]),
                str(r["candidate"]),
                f"{r['images_per_s']:.1f}",
                _ratio(r["ratio"]),  # type: ignore[arg-type]
                str(r["reference"]),
                *_flop_columns(r["gflop_per_image"], r["images_per_s"], peak),  # type: ignore[arg-type]
                _mib(r["peak_mb"]),  # type: ignore[arg-type]
            ]
            for r in rows
            if r["candidate"] != "torchvision (default)"
        ]
        return _table(
            ["step", "candidate", "images/s", "ratio", "against", "GFLOP/s", "of peak", "peak memory (MiB)"],
            "llrrlrrr",
            body,
        )

    flops = {r["mode"]: r["gflop_per_image"] for r in rows}
    text = (
        f"{arch}, batch {batch}, {side}×{side}, float32 on the CPU, median of {rounds} interleaved rounds. "
        '"forward" runs under `torch.no_grad()`; "train" is forward plus backward of the c5 map. Every candidate '
        "computes the same trunk (stem, layer1..layer4; ours returns c5 only): "
        f"{flops['forward']:.2f} GFLOP per image forward, {flops['train']:.2f} forward and backward. "
        '"ours (best)" is `backbones.optimize_for_inference` (BatchNorm folded, channels-last, each convolution '
        "fused with its ReLU and residual addition by oneDNN's operators in an FX graph, for any input size), "
        '"ours (best, TorchScript)" the same with the fusion left to TorchScript\'s freezing (the form before '
        '2026-12-07; TorchScript is deprecated from torch 2.14), and "ours (best, Inductor)" the same with '
        "`compile=True`: `torch.compile` with weight freezing and the C++ wrapper (its compile, once per input "
        "shape, is not timed, but its first step's peak memory includes it), all compared with torchvision's "
        "default eager model. Peak "
        "memory is the growth of resident memory during each candidate's first step, built alone in a fresh "
        "interpreter."
    )
    headlines = [
        (f"{arch} {r['mode']}, {r['candidate']} vs {r['reference']}", _ratio(r["ratio"]))  # type: ignore[arg-type]
        for r in rows
        if str(r["candidate"]).startswith("ours")
    ]
    title = "Backbone: forward and forward+backward against torchvision and timm"
    return Section(title, text, table, headlines)


def detector_section(s: Settings) -> Section:
    images, (height, width), min_size, rounds = s.detector
    rows = bench.detector_benchmark(
        images=images, size=(height, width), rounds=rounds, min_size=min_size, memory=s.memory
    )

    def table(peak: float) -> str:
        body = [
            [
                r["mode"],
                r["candidate"],
                f"{r['seconds_per_image']:.3f}",
                _ratio(r["ratio"]),
                *_flop_columns(r["gflop_per_image"], 1 / r["seconds_per_image"], peak),
                _mib(r["peak_mb"]),
            ]
            for r in rows
        ]
        return _table(
            ["step", "candidate", "s/image", "speed vs torchvision", "GFLOP/s", "of peak", "peak memory (MiB)"],
            "llrrrrr",
            body,
        )

    text = (
        f"Faster R-CNN R50-FPN, torchvision's `fasterrcnn_resnet50_fpn` against ours with torchvision's weights "
        f"loaded (random, seeded), {images} image(s) of {width}×{height} resized to {min_size} px, 91 classes, "
        'float32. "inference" is a batched forward under `torch.inference_mode()`; "train step" is forward, '
        "backward and an SGD step on two boxes per image. The fast backbone folds BatchNorm and freezes the "
        'trunk; "fast backbone, channels-last" also lays out every convolution of the heads in NHWC '
        "(`backbones.fast_model_inference`), the form in which `python -m tasks.detect eval` and `predict` run a "
        "checkpoint on a CPU with AVX-512 (with AVX2 alone they keep the heads NCHW, which measured faster there: "
        'docs/results.md). The "channels-last" train step is the layout that `--set train.channels_last=true` trains '
        "in (the auto recipe turns it on with bfloat16). torchvision's model is timed as it comes, NCHW: the "
        "layout would speed it too, so these rows measure our runner's defaults, not a faster kernel. "
        f"Median of {rounds} interleaved rounds after a warm-up round. FLOPs (convolutions and linear "
        "layers; RoIAlign and NMS are not counted) are torchvision's, per image: "
        + ", ".join(f"{r['gflop_per_image']:.0f} GFLOP {r['mode']}" for r in rows if r["candidate"] == "torchvision")
        + "."
    )
    headlines = [
        (f"Faster R-CNN {r['mode']}, {r['candidate']} vs torchvision", _ratio(r["ratio"]))
        for r in rows
        if r["candidate"] != "torchvision"
    ]
    return Section("Detector: Faster R-CNN against torchvision", text, table, headlines)


def coco_section(s: Settings) -> Section:
    images, detections, rounds = s.coco_eval
    row = bench.coco_eval_benchmark(images, detections, rounds)

    def table(peak: float) -> str:
        body = [
            [backend, f"{seconds:.2f}", _ratio(row["seconds"]["pycocotools"] / seconds), "—", "—"]
            for backend, seconds in row["seconds"].items()
        ]
        return _table(["backend", "seconds", "speed vs pycocotools", "GFLOP/s", "of peak"], "lrrrr", body)

    text = (
        f"{images:,} synthetic COCO images (640×480, 80 categories, about 7 boxes each in all three sizes) with "
        f"{detections} scored detections per image ({row['detections']:,} in all), through "
        "`tasks.metrics.coco.coco_box_metrics`: index, load results, evaluate, accumulate, summarize. "
        f"Median of {rounds} interleaved rounds. The twelve summary numbers agree to "
        f"{row['max_difference']:.1e} (AP {row['AP']:.4f}). Evaluation is not floating-point arithmetic, so it "
        "has no FLOP/s."
    )
    headlines = [("COCO evaluation, faster-coco-eval vs pycocotools", _ratio(row["speedup"]))]
    return Section("COCO evaluation: faster-coco-eval against pycocotools", text, table, headlines)


def _median_and_range(shares: Sequence[float]) -> str:
    """``60% (50-64%)``: the median of per-round shares, and their lowest and highest, each rounded the same way
    (so that the three keep their order)."""
    low = f"{min(shares):.0%}".rstrip("%")
    return f"{statistics.median(shares):.0%} ({low}-{max(shares):.0%})"


def _steps(count: int, noun: str = "step") -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def training_section(s: Settings, device: str = "cpu") -> Section:
    steps, rounds = s.training
    rows = []
    for task in bench.TRAINING_RECIPES:
        rows += bench.training_benchmark(
            task,
            steps=steps,
            rounds=rounds,
            backbone=s.training_backbone,
            overrides=s.training_overrides,
            numerics_steps=s.numerics_steps,
            device=device,
            ceiling_side=s.ceiling[0],
        )

    def table(peak: float) -> str:
        body = [
            [
                f"{r['task']}: {r['recipe']}",
                r["candidate"],
                r["precision"],
                "reference" if r["loss_drift"] is None else f"{r['loss_drift']:.1e}",
                f"{r['seconds_per_iter']:.3f}",
                f"{r['images_per_s']:.1f}",
                f"{r['data_fraction']:.1%}",
                _ratio(r["ratio"]),
                *_flop_columns(r["gflop_per_image"], r["images_per_s"], peak),
                _median_and_range(r["round_shares"]),
            ]
            for r in rows
        ]
        return _table(
            [
                "recipe",
                "loop",
                "precision",
                f"loss after {_steps(rows[0]['numerics_steps'])}, change",
                "s/iteration",
                "images/s",
                "waiting for data",
                "speed vs bare loop",
                "GFLOP/s",
                "of peak",
                ROUND_SHARE,
            ],
            "llllrrrrrrr",
            body,
        )

    text = (
        "Each task runner's packaged recipe on its built-in data (`python -m tasks.<task>` with no `--data`), "
        "trained through our engine (`Engine.train_epoch`: autocast, the non-finite loss check, gradient scaler, "
        "schedule and logging) and through a bare PyTorch loop (next batch, forward, backward, optimizer step, as "
        "in torchvision's reference scripts) with the same data loader settings, model weights, loss and "
        "optimizer settings. Both clip the gradients to the recipe's `train.clip_grad` (the bare loop with torch's "
        "`clip_grad_norm_`), and a loop whose loss is not finite in any step stops the benchmark: unclipped, "
        "the detector's bare loop diverged after about 17 steps and then timed NaN steps over fewer boxes. The "
        "engine takes torch's fused optimizer step (`build_optimizer`), the bare loop "
        "torch's default one, and the engine's datasets keep decoded images in memory (`train.cache_mb`), filled by "
        "one pass over the data before the rounds as a run's first epoch fills them, where the bare loop reads and "
        "decodes each file every time. Both loops run in one process after the runner's setup has fixed glibc's "
        "malloc thresholds (`tasks.heap`), so both keep their freed memory: the ratios leave out that gain, 0-20% of "
        'a step in results.md ("Freed memory kept for the next step"). '
        f"Each round runs {steps} iterations of each loop in turn, after one warm-up "
        f'round (worker start-up); median of {rounds} round(s). "waiting for data" is the share of the loop\'s wall '
        'time spent blocked on the DataLoader. FLOPs per image are one forward and backward pass; "of peak" divides '
        "by the float32 ceiling, so a bfloat16 row may pass 100%. Each round also times that ceiling's product "
        f'(best of 3 calls), in turn with the two loops, and "{ROUND_SHARE}" is the median over rounds of a '
        "loop's GFLOP/s over the ceiling of its own round, with the lowest and highest round in brackets: a shared "
        "host's ceiling moves with its neighbours' load "
        "(215-403 GFLOP/s within an hour on an AMD EPYC with Zen 5), and a loop timed in a slow spell reads low "
        'against the run\'s best ceiling, which "of peak" divides by.\n\n'
        "The engine trains in the precision and memory format that the auto recipe resolves on this machine "
        "(`train.amp`, `train.channels_last`: bfloat16 autocast and channels-last on a CPU with AMX or AVX-512 bf16 "
        'for inputs of 64 px or more, float32 otherwise); the bare loop stays in float32 NCHW. "change" is what that '
        "does to the numbers: the relative difference of the training loss after "
        f"{_steps(rows[0]['numerics_steps'], 'optimizer step')} on the same batches, from the same weights, "
        "with the same optimizer settings and random draws, between the bare loop's float32 NCHW with torch's "
        "default step and the engine's settings with the fused step. Where both are float32 that is float "
        "rounding: one rounding of the update after one step, and after more, AdamW (which divides each update "
        "by the root of its running mean of squared gradients) can grow a rounding difference in a near-zero "
        "gradient: 1e-7 to 2e-3 after 3 steps, depending on the batches drawn, for the classification recipe on "
        "an AVX2 CPU (docs/results.md). "
        "bfloat16 keeps 8 bits of mantissa (about 0.4% a rounding), and the optimizer carries each step's rounding "
        "into the next. The detector's losses change most: the RPN keeps its top proposals and samples boxes "
        "by their rounded scores, so after a few steps the losses are over partly different boxes. What counts is "
        "the accuracy of whole runs: the default jobs in both precisions are in [results.md](results.md)."
    )
    headlines = [
        (
            f"training, {r['task']}, our engine ({r['precision']}) vs a bare loop (data wait {r['data_fraction']:.0%})",
            _ratio(r["ratio"]),
        )
        for r in rows
        if r["candidate"] == "our engine"
    ]
    return Section("Training: seconds per iteration and time waiting for data", text, table, headlines)


def optimizer_section(s: Settings) -> Section:
    archs, rounds = s.optimizer
    rows = [
        row
        for arch in archs
        for optimizer in bench.OPTIMIZER_SETTINGS
        for row in bench.optimizer_benchmark(arch=arch, optimizer=optimizer, rounds=rounds)
    ]

    def table(peak: float) -> str:
        body = [
            [
                r["model"],
                r["optimizer"],
                r["layout"],
                r["step"],
                f"{r['ms']:.1f}",
                _ratio(r["ratio"]),
                r["against"],
                "reference" if r["difference"] is None else f"{r['difference']:.1e}",
            ]
            for r in rows
        ]
        return _table(
            [
                "model",
                "optimizer",
                "weights",
                "step",
                "ms",
                "speed",
                "against",
                f"parameters after {rows[0]['steps']} steps, max difference from it",
            ],
            "llllrrlr",
            body,
        )

    settings = "; ".join(
        f"{name}: " + ", ".join(f"{k} {v}" for k, v in values.items() if k != "optimizer")
        for name, values in bench.OPTIMIZER_SETTINGS.items()
    )
    text = (
        "One optimizer step over every parameter of torchvision's model, with random gradients, in the groups the "
        "engine makes (`tasks.engine.param_groups`: no weight decay on norms and biases). Ours is "
        "`tasks.engine.build_optimizer`, which takes torch's fused step on the CPU and CUDA (one kernel over all the "
        "parameters). On NCHW weights the reference is the same optimizer with torch's default step (on the CPU a "
        "Python loop over the parameters, one small operation after another), and foreach is torch's CUDA default. "
        "On channels-last weights, the layout the engine trains in with bfloat16, the reference is torch's own "
        "fused optimizer: its CPU kernel copies every gradient that is not contiguous and leaves the copy unused, "
        "and ours hands it each such tensor as a contiguous permutation of itself (`tasks.engine.FusedSGD` and "
        "`FusedAdamW`). Each step runs on "
        f"its own copy of the model; median of {rounds} interleaved rounds after one warm-up step ({settings}). "
        "Every copy takes the same steps with the same gradients, so the last column is how far its parameters end "
        "from its reference's: float rounding, or none. An optimizer step is memory-bound elementwise work, so it "
        "has no GFLOP/s column."
    )
    headlines = [
        (
            f"optimizer step, {r['model']} {r['optimizer']}"
            + (", channels-last" if r["layout"] == "channels-last" else "")
            + f", ours (fused) vs {r['against']}",
            _ratio(r["ratio"]),
        )
        for r in rows
        if r["step"] == "ours (fused)"
    ]
    return Section("Optimizer step: torch's fused kernels against its default", text, table, headlines)


def multitask_section(s: Settings) -> Section:
    backbone, images, side, rounds = s.multitask
    rows = bench.multitask_benchmark(backbone=backbone, images=images, size=side, rounds=rounds, memory=s.memory)

    def table(peak: float) -> str:
        body = [
            [
                r["candidate"],
                f"{r['seconds_per_image']:.3f}",
                _ratio(r["ratio"]),
                f"{r['gflop_per_image']:.1f}",
                *_flop_columns(r["gflop_per_image"], 1 / r["seconds_per_image"], peak),
                f"{r['weights_mb']:.0f}",
                _mib(r["peak_mb"]),
            ]
            for r in rows
        ]
        return _table(
            [
                "candidate",
                "s/image",
                "speed vs three models",
                "GFLOP/image",
                "GFLOP/s",
                "of peak",
                "weights (MiB)",
                "peak activation memory (MiB)",
            ],
            "lrrrrrrr",
            body,
        )

    text = (
        f"{backbone} with a classification head (1000 classes), Faster R-CNN (FPN, RPN, RoI heads; 91 classes) and "
        f"a U-Net decoder (21 classes), inference on {images} image(s) of {side}×{side}, float32, random weights. "
        '"three single-task models" runs a classifier, a detector and a U-Net, each with its own backbone, one '
        'after the other; "one multi-task model" is `MultiTaskModel` with the three heads, which calls the '
        'backbone once; "the backbone alone" returns c1..c5, for scale. Each candidate\'s GFLOP/image is its own '
        f"work. Median of {rounds} interleaved rounds. Weights are the parameters and buffers held; peak activation "
        "memory is the growth of resident memory during the first call, in a fresh interpreter."
    )
    headlines = [(f"{backbone}, one multi-task model vs three single-task models", _ratio(rows[1]["ratio"]))]
    return Section("Multi-task: one backbone for three heads against three models", text, table, headlines)


def export_section(s: Settings) -> Section:
    rows = bench.export_benchmark(rounds=s.export_rounds, models=s.export)

    def table(peak: float) -> str:
        body = [
            [
                r["model"],
                r["runtime"],
                f"{r['ms']:.1f}",
                _ratio(r["ratio"]),
                *_flop_columns(r["gflop_per_call"], 1000 / r["ms"], peak),
            ]
            for r in rows
        ]
        return _table(["model", "runtime", "ms per call", "speed vs eager", "GFLOP/s", "of peak"], "llrrrr", body)

    text = (
        "Random weights, one input per call: eager PyTorch float32 (`torch.inference_mode()`) against the same "
        "model exported to ONNX (as `export --format onnx`) in onnxruntime's CPU provider, in float32 and "
        "quantized to int8 (as `export --quantize int8`: QDQ, per-channel weights, convolutions and matrix products; "
        "calibrated here on the benchmark input), and converted from that ONNX graph to OpenVINO (as `export --format "
        "openvino`, the `.[openvino]` extra) on its CPU plugin, in float32 (inference precision f32, the same threads "
        "as torch) and int8 (as `export --format openvino --quantize int8`: NNCF's post-training quantization of the "
        "convolutions and matrix products, calibrated on the same input; the detector's and the multi-task model's "
        "graphs, which hold If operations, are onnxruntime's int8 graphs converted by OpenVINO). Median of "
        f"{s.export_rounds} interleaved rounds. GFLOP/s counts the float32 model's FLOPs for every runtime, so an "
        "int8 row above 100% of the float32 ceiling is possible."
    )
    headlines = [
        (f"{r['model']}, {r['runtime']} vs eager", _ratio(r["ratio"]))
        for r in rows
        if r["runtime"] != "eager PyTorch float32"
    ]
    return Section("Export: onnxruntime and OpenVINO, float32 and int8, against eager PyTorch", text, table, headlines)


GPU_VARIANTS = (
    ("float32", dict(amp=False, channels_last=False, compile_model=False)),
    ("AMP + channels_last", dict(amp=True, channels_last=True, compile_model=False)),
    ("AMP + channels_last + torch.compile", dict(amp=True, channels_last=True, compile_model=True)),
)


GPU_DETECTOR_STEPS = (
    ("inference", "torchvision"),
    ("inference", "ours"),
    ("inference", "ours (fast backbone, channels-last)"),
    ("train step", "torchvision"),
    ("train step", "ours"),
    ("train step", "ours (channels-last)"),
)


def gpu_section(s: Settings, peak: float, *, device: str = "cuda", variants: Sequence[str] | None = None) -> Section:
    """The backbone on a GPU in float32, with AMP and channels-last, and compiled, against torchvision at the
    same settings, beside the published anchors. ``peak`` is this device's float16 matmul throughput."""
    import torch

    from backbones.bench import benchmark

    arch, batch, side, rounds = s.gpu_backbone
    body, headlines = [], []
    for label, options in GPU_VARIANTS:
        if variants is not None and label not in variants:
            continue
        rows = benchmark(
            arch,
            batch_size=batch,
            image_size=side,
            modes=("forward", "train"),
            inference_mode=False,
            rounds=rounds,
            warmup=3,
            device=torch.device(device),
            references=("torchvision",),
            memory=s.memory,
            best=False,  # the fused inference forms are CPU recipes (oneDNN's operators, Inductor's C++ wrapper)
            **options,  # type: ignore[arg-type]
        )
        for r in rows:
            if r["candidate"] in ("ours", "torchvision"):
                body.append(
                    [
                        label,
                        str(r["mode"]),
                        str(r["candidate"]),
                        f"{r['images_per_s']:.0f}",
                        _ratio(r["ratio"]),  # type: ignore[arg-type]
                        *_flop_columns(r["gflop_per_image"], r["images_per_s"], peak),  # type: ignore[arg-type]
                        _mib(r["peak_mb"]),  # type: ignore[arg-type]
                    ]
                )
                if r["candidate"] == "ours":
                    headlines.append((f"GPU {arch} {r['mode']}, {label}, ours vs torchvision", _ratio(r["ratio"])))  # type: ignore[arg-type]
    text_table = _table(
        ["settings", "step", "candidate", "images/s", "ratio", "GFLOP/s", "of float16 peak", "peak memory (MiB)"],
        "lllrrrrr",
        body,
    )
    images, (height, width), min_size, detector_rounds = s.gpu_detector
    detector_body = []
    for label, amp in (("float32", False), ("AMP", True)):
        if variants is not None and not any(v.startswith(label) for v in variants):
            continue
        rows = bench.detector_benchmark(
            images=images,
            size=(height, width),
            rounds=detector_rounds,
            min_size=min_size,
            memory=False,  # resident memory says nothing of a GPU's
            device=device,
            amp=amp,
            candidates=GPU_DETECTOR_STEPS,
        )
        for r in rows:
            detector_body.append(
                [
                    label,
                    str(r["mode"]),
                    str(r["candidate"]),
                    f"{r['seconds_per_image']:.4f}",
                    _ratio(r["ratio"]),
                    *_flop_columns(r["gflop_per_image"], 1 / r["seconds_per_image"], peak),
                ]
            )
            if r["candidate"] != "torchvision":
                headlines.append(
                    (f"GPU Faster R-CNN {r['mode']}, {label}, {r['candidate']} vs torchvision", _ratio(r["ratio"]))
                )
    detector_table = _table(
        ["detector settings", "step", "candidate", "s/image", "ratio", "GFLOP/s", "of float16 peak"],
        "lllrrrr",
        detector_body,
    )
    name = torch.cuda.get_device_name(0) if device == "cuda" else device
    text = (
        f"{arch}, batch {batch}, {side}×{side} on {name}, median of {rounds} interleaved rounds after 3 warm-up "
        'rounds; each setting applies to ours and to torchvision alike. "of float16 peak" divides by this GPU\'s '
        "float16 matmul throughput, measured in the same run. Published anchors: NVIDIA's ResNet-50 v1.5 reference "
        "trains at 2,470 images/s on an A100 with AMP (batch 256, their whole training step with DALI data "
        'loading); detectron2\'s R50-FPN Faster R-CNN infers at 0.038 s/image on a V100. The "train" rows here are '
        "forward and backward of the trunk, without optimizer or data loading.\n\n"
        f"The second table is Faster R-CNN R50-FPN as in the CPU's detector part ({images} image(s) of "
        f"{width}×{height} resized to {min_size} px, torchvision's weights in both, median of {detector_rounds} "
        "interleaved rounds), on the GPU in float32 and under float16 autocast (AMP, with a gradient scaler for the "
        "train step): torchvision's model and ours as built, ours in the form `eval` and `predict` run on a GPU "
        "(`fast_model_inference`: BatchNorm folded, the trunk frozen, every convolution channels-last), and ours "
        "training channels-last. Every step ends with `torch.cuda.synchronize()`, so each time is the device's work."
    )
    title = f"GPU: {arch} with AMP, channels_last and torch.compile"
    tables = text_table + "\n\n" + detector_table
    return Section(title, text, lambda _: tables, headlines)  # rated against its own float16 peak


def learning_section(s: Settings) -> Section:
    from tasks import bench_learning

    budgets, scale, names = s.learning
    single = {task: budget for task, budget in budgets.items() if task != "multitask"}
    rows = bench_learning.learning_rows(single, scale=scale, names=names)
    for row in rows:
        row["label"] = f"{row['task']} ({bench_learning.METRIC[row['task']]})"
        row["against"] = f"{row['setting'][0]} {row['setting'][1]:g}"
    if "multitask" in budgets:
        joined = [  # reporting sets only: the tuning sets (blobs) never report
            n
            for n in names or bench_learning.SETS
            if "multitask" in bench_learning.SETS[n].tasks and bench_learning.SETS[n].role == "report"
        ]
        multitask = bench_learning.multitask_rows(
            budgets["multitask"], scale=scale, names=joined, weightings=s.weightings
        )
        for row in multitask:
            how = "" if len(s.weightings) == 1 else f", {row['weighting']} weighting"
            row["label"] = f"multitask{how}: {row['task']} ({bench_learning.METRIC[row['task']]})"
            row["against"] = f"ours, {row['task']} alone"
            rows.append(row)

    def ratio(row: dict) -> float | None:
        reference = row["reference"]["metric"]
        return row["ours"]["metric"] / reference if reference > 0 else None

    def second(row: dict) -> str:
        ours, ref = row["ours"]["second"], row["reference"]["second"]
        return "" if ours is None or ref is None else f"{ours:.3f} / {ref:.3f}"

    def table(peak: float) -> str:
        body = []
        for row in rows:
            ours, ref = row["ours"], row["reference"]
            value = ratio(row)
            body.append(
                [
                    row["set"],
                    row["label"],
                    f"{ours['metric']:.3f}",
                    f"{ref['metric']:.3f}",
                    row["against"],
                    "—" if value is None else _ratio(value),
                    second(row),
                    row["budget"],
                    f"{ours['epochs']} / {ref['epochs']}",
                    f"{ours['wall']:.0f} / {ref['wall']:.0f}",
                    f"{ours['images_per_s']:.1f} / {ref['images_per_s']:.1f}",
                ]
            )
        return _table(
            [
                "set",
                "task (metric)",
                "ours",
                "reference",
                "reference setting",
                "ours / reference",
                "VOC mAP07 (ours / ref)",
                "budget",
                "epochs",
                "wall s (ours / ref)",
                "images/s (ours / ref)",
            ],
            "llrrlrrrrrr",
            body,
        )

    text = (
        "Our default command, `python -m tasks.<task> --data DIR --time BUDGET` and nothing else, against a tuned "
        "reference on the same data and the same time budget, each in a fresh interpreter, one after the other on "
        "each set. References: a torchvision ResNet-50 in a plain loop (classify), smp's U-Net on ResNet-34 with "
        "CE + Dice (segment), torchvision's FasterRCNN on its resnet_fpn_backbone (detect, COCO AP by pycocotools), "
        "at the data's own size, each with the best setting of a three-point learning-rate and optimizer sweep "
        "(docs/results.md has the sweeps). Multitask rows: one `python -m tasks.multitask --data DIR --time 3T` "
        "against our three single-task runs of `--time T` each, the same total time, with "
        f"`--set model.weighting={'|'.join(s.weightings)}` (fixed against uncertainty weighting is compared in "
        "docs/results.md). The sets "
        "(`tasks.data.benchmark_sets`, built from scikit-image's and scikit-learn's photos) are reporting sets: the "
        "auto recipe was not tuned on them. Wall seconds include start-up; images/s counts training images over "
        "training and evaluation time."
    )
    pending = sorted(f"{task} on {name}" for task, name in bench_learning.PENDING if task in budgets and scale == 1)
    if pending:
        text += (
            f" Not in the table: {', '.join(pending)}, where every reference setting stayed at the noise floor "
            "within the budget (docs/results.md)."
        )
    # No summary rows: this section runs for hours, so it is refreshed alone (--update), and the summary only
    # repeats the sections of one whole run.
    return Section("Learning on data the recipe was not tuned on", text, table, [])


BUILDERS: dict[str, Callable[[Settings], Section]] = {
    "backbone": backbone_section,
    "detector": detector_section,
    "coco-eval": coco_section,
    "training": training_section,
    "optimizer": optimizer_section,
    "multitask": multitask_section,
    "export": export_section,
    "learning": learning_section,
}


def _versions() -> str:
    names = ["torch", "torchvision", "timm", "onnxruntime", "pycocotools", "faster-coco-eval"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return f"Python {platform.python_version()}, " + ", ".join(found)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_name() -> str:
    """The CPU's model and the vector instructions torch's kernels use on it, with its bfloat16 matrix units:
    "AMD EPYC (AVX512, AVX-512 bf16)", "AMD EPYC (AVX2)". Machines sold under one model name differ by twice in
    float32 speed and in which layout and precision win (docs/results.md), so every part names both."""
    import torch

    from tasks.recipes import cpu_bf16_units

    features = [torch.backends.cpu.get_cpu_capability()]
    if (units := cpu_bf16_units()) is not None:
        features.append(units)
    return f"{_cpu_model()} ({', '.join(features)})"


def _memory_gib() -> str:
    try:
        with open("/proc/meminfo") as info:
            kib = int(info.readline().split()[1])
        return f"{kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def machine(ceilings: dict[str, float]) -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    peak = max(ceilings["mm"], ceilings["gemm"])
    rows = [
        ["CPU", f"{_cpu_name()}, {os.cpu_count()} logical cores, torch uses {torch.get_num_threads()} threads"],
        ["memory", _memory_gib()],
        ["GPU", gpu],
        ["software", _versions()],
        ["float32 matrix multiply, `torch.mm` (MKL)", f"{ceilings['mm']:.1f} GFLOP/s"],
        ["the same product as a 1×1 convolution (oneDNN)", f"{ceilings['gemm']:.1f} GFLOP/s"],
        ['**the ceiling for "of peak"**: the faster of the two', f"**{peak:.1f} GFLOP/s**"],
        ["one float32 3×3 convolution (oneDNN)", f"{ceilings['conv']:.1f} GFLOP/s ({ceilings['conv'] / peak:.0%})"],
    ]
    return _table(["", ""], "ll", rows)


def measure_ceilings(settings: Settings) -> dict[str, float]:
    """GFLOP/s of the float32 matrix product through MKL (``mm``) and oneDNN (``gemm``), and of a 3x3 convolution."""
    side, batch, channels, maps = settings.ceiling
    rounds = settings.ceiling_rounds
    return dict(
        mm=bench.matmul_gflops(size=side, rounds=rounds),
        gemm=bench.gemm_as_conv_gflops(size=side, rounds=rounds),
        conv=bench.conv_gflops(batch=batch, channels=channels, side=maps, rounds=rounds),
    )


def run_suite(
    settings: Settings, sections: Sequence[str] = SECTIONS, *, log: Callable[[str], None] | None = None
) -> str:
    """Run the chosen benchmarks with ``settings`` and return the whole Markdown document."""
    import torch

    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    started = time.perf_counter()
    log("measuring the float32 matmul and convolution ceilings")
    ceilings = measure_ceilings(settings)
    parts: list[Section] = []
    for number, name in enumerate(sections, 1):
        log(f"[{number}/{len(sections)}] {name}")
        start = time.perf_counter()
        section = BUILDERS[name](settings)
        section.seconds = time.perf_counter() - start
        section.command = _command(settings, name)
        parts.append(section)
    if torch.cuda.is_available() and tuple(sections) == SECTIONS:
        log("GPU: the backbone with AMP, channels_last and torch.compile")
        start = time.perf_counter()
        gpu_peak = bench.matmul_gflops(size=8192, rounds=settings.ceiling_rounds, device="cuda", dtype="float16")
        section = gpu_section(settings, gpu_peak)
        section.seconds = time.perf_counter() - start
        section.command = "python -m tasks.bench  # on a CUDA machine; or python -m backbones.bench --device cuda --amp"
        parts.append(section)
    log("measuring the ceilings again")  # a ceiling is the best the hardware did: a slow spell must not lower it
    again = measure_ceilings(settings)
    ceilings = {key: max(value, again[key]) for key, value in ceilings.items()}
    peak = max(ceilings["mm"], ceilings["gemm"])
    minutes, seconds = divmod(int(time.perf_counter() - started), 60)
    command = "python -m tasks.bench" + (" --quick" if settings.name == "quick" else "")
    if tuple(sections) != SECTIONS:
        command += " " + " ".join(sections)
    summary = _table(["benchmark", "ratio"], "lr", [[what, ratio] for part in parts for what, ratio in part.headlines])
    quick = (
        "\n**Quick mode**: small inputs, a single round and no memory sampling. These numbers only show that the "
        "suite runs; they are not measurements.\n"
        if settings.name == "quick"
        else ""
    )
    gpu = (
        ""
        if torch.cuda.is_available()
        else "\nNo GPU was present, so there are no GPU tables; on a GPU machine run "
        "`python -m tasks.bench.gpu` (the backbone and Faster R-CNN against torchvision, float32 and AMP, into "
        "docs/benchmarks-gpu.md, in minutes).\n"
    )
    whole = tuple(sections) == SECTIONS
    written = "Written" if whole else "Last written"
    rerun = "Re-run that command to refresh this file" if whole else "`python -m tasks.bench` refreshes every part"
    header = f"""# Benchmarks

{written} by `{command}` on {datetime.date.today().isoformat()}, in {minutes} min {seconds:02d} s. {rerun}; do not
edit it by hand. Task accuracy of the built-in default jobs, and the int8 accuracy changes, are in
[results.md](results.md).
{quick}
Every table comes from one run in which ours and the reference alternate step by step (interleaved, the order
rotating every round), so load and clock drift hit both alike. A ratio is the reference's time divided by the
candidate's: above 1.00× the candidate is faster. Absolute numbers stand beside each ratio. "GFLOP/s" is the
achieved floating-point rate, with FLOPs counted by torch's `FlopCounterMode` (convolutions and matrix products,
multiply and add counted apart); "of peak" divides it by this machine's float32 matrix-multiply throughput,
measured at the start and at the end of the run (the best of several timed products, through MKL and through
oneDNN). ResNet-50 at 224×224 is 4.1 GMAC, 8.2 GFLOP, per image forward. The machine table is the latest run's;
each part's last line names the day, the CPU and the float32 ceiling it ran with (one CPU name covers machines of
twice the speed), and a ratio compares runs on one machine only. `--update` warns of the parts it keeps from
another ceiling.

## Machine

{machine(ceilings)}
{gpu}
## Summary

{summary}
"""
    return header + "\n" + "\n".join(part.markdown(peak) for part in parts)


def _merge_summary(old: str, fresh: str) -> str:
    """The summary section ``old`` with the headline rows of the benchmarks that ``fresh`` ran in place of its own.
    A row belongs to a benchmark by its label up to the first comma ("training, detect, ..."), which no two
    sections share; ``fresh``'s rows of a label that ``old`` lacks go at the end of the table."""

    def label(row: str) -> str:
        return row.strip("| ").split(",")[0]

    lines = old.rstrip("\n").split("\n")
    rows = [line for line in fresh.splitlines() if line.startswith("| ")][1:]  # below the header
    labels = {label(row) for row in rows}
    kept: list[str] = []
    for line in lines:
        if not line.startswith("| ") or line.startswith("| benchmark |") or label(line) not in labels:
            kept.append(line)
        elif any(label(row) == label(line) for row in rows):  # the label's first old row: the fresh rows go here
            kept += [row for row in rows if label(row) == label(line)]
            rows = [row for row in rows if label(row) != label(line)]
    table_end = max((i for i, line in enumerate(kept) if line.startswith("|")), default=len(kept) - 1)
    kept[table_end + 1 : table_end + 1] = rows
    return "\n".join(kept) + "\n"


def replace_sections(document: str, fresh: str) -> str:
    """``document`` with each ``## `` section that ``fresh`` also has replaced by ``fresh``'s (new ones appended),
    the header and the machine table ``fresh``'s (each part's last line names the day, CPU and ceiling it ran
    with); in the summary, the headline rows of the benchmarks that ``fresh`` ran replace theirs
    (:func:`_merge_summary`), and the other rows stay."""
    from tasks.bench.markdown import join_parts, split_parts

    _, old = split_parts(document)
    head, new = split_parts(fresh)
    skip = {"## Summary"}
    merged = {title: new.get(title, part) if title not in skip else part for title, part in old.items()}
    if "## Summary" in merged and "## Summary" in new:
        merged["## Summary"] = _merge_summary(merged["## Summary"], new["## Summary"])
    merged.update({title: part for title, part in new.items() if title not in merged and title not in skip})
    return join_parts(head, list(merged.values()))


def _main(argv: Sequence[str] | None) -> int:
    from pathlib import Path

    from tasks.bench.targets import with_targets
    from tasks.cli import ArgumentParser
    from tasks.errors import UserError
    from tasks.io import write_text

    parser = ArgumentParser(
        prog="python -m tasks.bench",
        description="Run the project's benchmarks, each against its reference, and write docs/benchmarks.md.",
    )
    parser.add_argument(
        "benchmarks", nargs="*", metavar="BENCHMARK", help=f"any of {', '.join(SECTIONS)} (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="small inputs and one round: checks the suite runs")
    parser.add_argument(
        "--output", help="the Markdown file to write (default: docs/benchmarks.md for the whole suite, else stdout)"
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="replace just the named benchmarks' sections in the existing --output (default docs/benchmarks.md)",
    )
    parser.add_argument(
        "--targets",
        action="store_true",
        help="run nothing: rewrite the Targets part of --output (default docs/benchmarks.md) from its tables",
    )
    args = parser.parse_args(argv)
    if args.targets:
        if args.benchmarks or args.update or args.quick:
            raise UserError("--targets runs no benchmark: give it no benchmark names, --update or --quick")
        output = args.output or "docs/benchmarks.md"
        try:
            document = Path(output).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(
                f"--output {output}: cannot read it ({getattr(error, 'strerror', None) or error})"
            ) from None
        print(f"wrote {write_text(output, with_targets(document))}")
        return 0
    unknown = [name for name in args.benchmarks if name not in SECTIONS]
    if unknown:
        hint = "; the GPU part alone is python -m tasks.bench.gpu" if unknown[0].lower() in ("gpu", "cuda") else ""
        raise UserError(f"unknown benchmark {unknown[0]!r}: choose from {', '.join(SECTIONS)}{hint}")
    sections = [name for name in SECTIONS if name in args.benchmarks] or list(SECTIONS)
    output = args.output or ("docs/benchmarks.md" if len(sections) == len(SECTIONS) or args.update else None)
    if args.update and not Path(output).is_file():
        raise UserError(f"--update needs an existing document to update: {output} does not exist")
    if output is not None:  # find out now, not after the benchmarks have run
        folder = Path(output).resolve().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"--output {output}: cannot create its folder ({error.strerror})") from None
        if Path(output).is_dir() or not os.access(folder, os.W_OK):
            raise UserError(f"--output {output}: not a writable file path")
    text = run_suite(QUICK if args.quick else FULL, sections)
    if args.update:
        document = Path(output).read_text(encoding="utf-8")
        now, kept = other_machines(document, text)
        text = replace_sections(document, text)
        if kept:  # a warning, not a refusal: a user may mean to keep them, and each part names its ceiling
            print(
                f"warning: {output} keeps parts measured at another float32 ceiling than this machine's {now:.1f} "
                f"GFLOP/s: {'; '.join(kept)}; re-run them here for one machine's figures",
                file=sys.stderr,
            )
    if output is not None:  # a whole document, or one updated: its goals against its tables
        text = with_targets(text)
    if output is None:
        print(text)
    else:
        print(f"wrote {write_text(output, text)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from tasks.cli import run

    return run(_main, argv)
