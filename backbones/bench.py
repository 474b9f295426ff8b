"""Time a backbone against torchvision's and timm's same architecture, interleaved in one run.

    python -m backbones.bench --backbone resnet50 --batch-size 8 --image-size 224 --mode both

Each round times one step of every candidate in turn, so drift in clock speed or load hits
them all alike; the report is the median over rounds. Candidates at equal settings
(``--channels-last``, ``--inference-mode``, ``--compile`` apply to all) are compared with
torchvision; ``ours (best)`` (BatchNorm folded, channels-last, inference mode, TorchScript-frozen) and
``ours (best, Inductor)`` (the same through torch.compile with frozen weights) are compared with
torchvision's default eager model. Peak memory is CUDA's allocator peak on a GPU; on
a CPU it is the growth of resident memory during the first step of the
candidate, freshly built in a spawned interpreter of its own and sampled from /proc.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from backbones import build_backbone
from backbones.inference import optimize_for_inference


class _Trunk(nn.Module):
    """torchvision's or timm's ResNet without pooling and classifier: the same work as our c5."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.maxpool(m.act1(m.bn1(m.conv1(x)))) if hasattr(m, "act1") else m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))


@dataclass
class Candidate:
    name: str
    module: nn.Module
    step: str  # "forward" or "train"
    inference_mode: bool
    channels_last: bool
    times: list[float]
    amp: bool = False


def count_flops(call: Callable[[], object]) -> float:
    """Floating-point operations of one ``call()`` (multiply and add counted apart, so 2 per MAC), as torch's
    FlopCounterMode counts them: convolutions and matrix products, forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        call()
    return float(counter.get_total_flops())


def step_flops(arch: str, mode: str, image_size: int) -> float:
    """FLOPs per image of one step of the plain backbone (to c5): ``forward``, or ``train`` (forward + backward).
    Every candidate of a benchmark computes this same trunk, so they share the number."""
    model = build_backbone(arch, out_levels=("c5",))
    x = torch.randn(2, 3, image_size, image_size)  # 2: training BatchNorm needs more than one value per channel
    if mode == "train":
        return count_flops(lambda: model(x)["c5"].mean().backward()) / 2
    model.eval()
    with torch.no_grad():
        return count_flops(lambda: model(x)) / 2


TORCHSCRIPT = "ours (best, TorchScript)"  # optimize_for_inference(onednn=False): the fusion by TorchScript's freezing
INDUCTOR = "ours (best, Inductor)"  # optimize_for_inference(compile=True): Inductor with frozen weights
BEST = ("ours (best)", TORCHSCRIPT, INDUCTOR)


def _build(name: str, arch: str, *, channels_last: bool, compile_model: bool, device: torch.device) -> nn.Module:
    if name == "ours":
        model: nn.Module = build_backbone(arch, out_levels=("c5",))
    elif name in BEST:  # built on its device: the fused form depends on it
        trunk = build_backbone(arch, out_levels=("c5",)).to(device).eval()
        model = optimize_for_inference(trunk, onednn=False if name == TORCHSCRIPT else None, compile=name == INDUCTOR)
    elif name.startswith("torchvision"):
        import torchvision

        model = _Trunk(torchvision.models.get_model(arch, weights=None))
    elif name == "timm":
        import timm

        model = _Trunk(timm.create_model(arch, pretrained=False))
    else:  # pragma: no cover
        raise ValueError(name)
    model = model.to(device)
    if channels_last and name not in BEST:
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model = torch.compile(model)  # type: ignore[assignment]
    return model


def _run_step(c: Candidate, x: torch.Tensor) -> None:
    if c.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    amp_dtype = torch.float16 if x.device.type == "cuda" else torch.bfloat16
    autocast = torch.autocast(x.device.type, dtype=amp_dtype, enabled=c.amp)
    if c.step == "train":
        c.module.train()
        with autocast:
            out = c.module(x)
            tensor = next(iter(out.values())) if isinstance(out, dict) else out
        tensor.float().mean().backward()
        return
    c.module.eval()
    context = torch.inference_mode() if c.inference_mode else torch.no_grad()
    with context, autocast:
        c.module(x)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_memory_mb(c: Candidate, x: torch.Tensor, device: torch.device, spec: dict[str, object]) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        _run_step(c, x)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    return first_call_memory_mb(_candidate_step, spec)


def first_call_memory_mb(factory: Callable[..., Callable[[], object]], kwargs: dict[str, Any]) -> float:
    """Growth of resident memory (MiB) during the first call of ``factory(**kwargs)()``.

    The factory runs in a freshly spawned interpreter (forking after torch's thread pools start
    can deadlock), and resident memory is sampled from /proc every 0.2 ms while the call runs.
    There is no warm-up: the allocator would keep a warm-up call's memory and hide the next one.
    The peak-RSS counter is useless here: importing torch alone peaks higher than a step.
    ``factory`` must be a module-level function so that it pickles by name.
    """
    with mp.get_context("spawn").Pool(1) as pool:
        return float(pool.apply(_first_call_rss_growth, (factory, kwargs)))


def _first_call_rss_growth(factory: Callable[..., Callable[[], object]], kwargs: dict[str, Any]) -> float:
    call = factory(**kwargs)
    gc.collect()
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as statm:

        def rss() -> int:
            statm.seek(0)
            return int(statm.read().split()[1]) * page

        before, peak, done = rss(), [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss())
                time.sleep(0.0002)

        sampler = threading.Thread(target=sample)
        sampler.start()
        call()
        done.set()
        sampler.join()
    return max(peak[0] - before, 0) / 2**20


def _candidate_step(**spec: Any) -> Callable[[], None]:
    torch.set_num_threads(int(spec["threads"]))
    c = _candidate(**spec)
    size = int(spec["image_size"])
    x = torch.randn(int(spec["batch_size"]), 3, size, size)
    return lambda: _run_step(c, x)


def _candidate(
    *,
    name: str,
    arch: str,
    mode: str,
    channels_last: bool,
    inference_mode: bool,
    compile_model: bool,
    device: str = "cpu",
    amp: bool = False,
    **_: object,
) -> Candidate:
    default = name == "torchvision (default)"
    cl = channels_last and not default
    module = _build(
        name, arch, channels_last=cl, compile_model=compile_model and not default, device=torch.device(device)
    )
    best = name in BEST
    im = (inference_mode or best) and not default
    return Candidate(name, module, mode, im, cl or best, [], amp=amp and not default and not best)


def benchmark(
    arch: str,
    *,
    batch_size: int,
    image_size: int,
    modes: Sequence[str],
    channels_last: bool,
    inference_mode: bool,
    compile_model: bool,
    rounds: int,
    warmup: int,
    device: torch.device,
    references: Sequence[str] = ("torchvision", "timm"),
    amp: bool = False,
    memory: bool = True,
    best: bool = True,
    against_float32: bool = False,
) -> list[dict[str, object]]:
    """Rows of {mode, candidate, images_per_s, ratio, reference, peak_mb, gflop_per_image}.

    ``amp`` runs every candidate but torchvision's default under autocast (bfloat16 on a CPU, float16 on CUDA).
    ``memory=False`` skips the peak-memory measurement (NaN), which on a CPU costs a fresh interpreter per row.
    ``best=False`` leaves out "ours (best)" and the torchvision default it is compared with.
    ``against_float32``: every candidate's ratio is to torchvision's default model (float32, NCHW, eager) in the
    same mode, as what ``amp`` and ``channels_last`` gain over a plain model.
    """
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    specs: list[dict[str, object]] = []
    for mode in modes:
        names = ["ours", *references]
        if mode == "forward" and best:
            names += [*BEST, "torchvision (default)"]
        elif against_float32:
            names += ["torchvision (default)"]
        specs += [
            dict(
                name=name,
                arch=arch,
                mode=mode,
                channels_last=channels_last,
                inference_mode=inference_mode,
                compile_model=compile_model,
                device=str(device),
                amp=amp,
                batch_size=batch_size,
                image_size=image_size,
                threads=torch.get_num_threads(),
            )
            for name in names
        ]
    candidates = [_candidate(**spec) for spec in specs]  # type: ignore[arg-type]
    for _ in range(warmup):
        for c in candidates:
            _run_step(c, x)
    for _ in range(rounds):
        for c in candidates:
            _sync(device)
            start = time.perf_counter()
            _run_step(c, x)
            _sync(device)
            c.times.append(time.perf_counter() - start)
            if c.step == "train":
                c.module.zero_grad(set_to_none=True)
    flops = {mode: step_flops(arch, mode, image_size) for mode in modes}
    rows = []
    for c, spec in zip(candidates, specs):
        speed = batch_size / statistics.median(c.times)
        reference_name = "torchvision (default)" if c.name in BEST or against_float32 else "torchvision"
        reference = next(r for r in candidates if r.name == reference_name and r.step == c.step)
        ratio = speed / (batch_size / statistics.median(reference.times))
        rows.append(
            dict(
                mode=c.step,
                candidate=c.name,
                images_per_s=speed,
                ratio=ratio,
                reference=reference_name,
                peak_mb=_peak_memory_mb(c, x, device, spec) if memory else float("nan"),
                gflop_per_image=flops[c.step] / 1e9,
            )
        )
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| step | candidate | images/s | ratio | against | GFLOP/s | peak memory (MiB) |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        gflops = r["gflop_per_image"] * r["images_per_s"]
        memory = "—" if r["peak_mb"] != r["peak_mb"] else f"{r['peak_mb']:.0f}"
        lines.append(
            f"| {r['mode']} | {r['candidate']} | {r['images_per_s']:.1f} | {r['ratio']:.2f}× | "
            f"{r['reference']} | {gflops:.1f} | {memory} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backbones.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--mode", choices=("forward", "train", "both"), default="both")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--inference-mode", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--amp", action="store_true", help="autocast: bfloat16 on a CPU, float16 on CUDA")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-timm", action="store_true")
    parser.add_argument(
        "--against-float32",
        action="store_true",
        help="ratios to torchvision's default float32 NCHW model: what --amp and --channels-last gain",
    )
    args = parser.parse_args(argv)
    modes = ("forward", "train") if args.mode == "both" else (args.mode,)
    device = torch.device(args.device)
    rows = benchmark(
        args.backbone,
        batch_size=args.batch_size,
        image_size=args.image_size,
        modes=modes,
        channels_last=args.channels_last,
        inference_mode=args.inference_mode,
        compile_model=args.compile,
        rounds=args.rounds,
        warmup=args.warmup,
        device=device,
        references=("torchvision",) if args.no_timm else ("torchvision", "timm"),
        amp=args.amp,
        against_float32=args.against_float32,
    )
    threads = torch.get_num_threads() if device.type == "cpu" else None
    print(
        f"{args.backbone}, batch {args.batch_size}, {args.image_size}px, device {device}"
        f"{f' ({threads} threads)' if threads else ''}, channels_last={args.channels_last}, "
        f"inference_mode={args.inference_mode}, compile={args.compile}, amp={args.amp}, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
