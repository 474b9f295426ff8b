"""``python -m tasks.bench.gpu``: the GPU part alone, in a few minutes, into a document of its own.

    python -m tasks.bench.gpu                                  # docs/benchmarks-gpu.md, on the first CUDA device

The whole suite (``python -m tasks.bench``) runs its CPU parts first, for most of an hour, and adds this part only
at the end on a CUDA machine; a GPU lent for minutes needs this part alone. It writes the backbone with AMP,
channels-last and ``torch.compile``, and Faster R-CNN in float32 and with AMP, each against torchvision at the same
settings (``tasks.benchsuite.gpu_section``), and each task recipe's training step through our engine against a bare
loop (``training_section``), rated against the device's own float16 matmul throughput.
"""

from __future__ import annotations

import time
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from tasks.cli import run

    def _main(argv: Sequence[str] | None) -> int:
        import torch

        from tasks import bench
        from tasks.benchsuite import FULL, QUICK, gpu_section, training_section
        from tasks.cli import ArgumentParser
        from tasks.errors import UserError
        from tasks.io import write_text

        parser = ArgumentParser(prog="python -m tasks.bench.gpu", description=__doc__.splitlines()[0])
        parser.add_argument("--output", default="docs/benchmarks-gpu.md", help="the Markdown file to write")
        parser.add_argument(
            "--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default), or cpu to check the part runs"
        )
        parser.add_argument("--quick", action="store_true", help="small inputs and one round: checks the part runs")
        args = parser.parse_args(argv)
        if args.device == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {args.device}: no CUDA device is available here")
        settings = QUICK if args.quick else FULL
        started = time.perf_counter()
        dtype = "float16" if args.device == "cuda" else "float32"
        size = 1024 if args.quick else 8192
        peak = bench.matmul_gflops(size=size, rounds=settings.ceiling_rounds, device=args.device, dtype=dtype)
        section = gpu_section(settings, peak, device=args.device)
        section.command = "python -m tasks.bench.gpu" + (" --quick" if args.quick else "")
        training = training_section(settings, device=args.device)
        minutes = (time.perf_counter() - started) / 60
        versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}"
        header = (
            f"# Benchmarks on a GPU\n\nWritten by `{section.command}` on {time.strftime('%Y-%m-%d')} in "
            f"{minutes:.1f} min ({versions}; {dtype} matmul {peak:,.0f} GFLOP/s). Do not edit it by hand. The CPU's "
            "tables are in [benchmarks.md](benchmarks.md).\n\n"
        )
        body = f"## {section.title}\n\n```\n{section.command}\n```\n\n{section.text}\n\n{section.table(peak)}\n"
        body += (
            f"\n## Training on the GPU: seconds per iteration and time waiting for data\n\n{training.text}\n\n"
            f'On this device the engine trains in the recipe\'s precision there, and "of peak" divides by the '
            f"{dtype} matmul throughput above.\n\n{training.table(peak)}\n"
        )
        write_text(args.output, header + body)
        print(f"wrote {args.output}")
        return 0

    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
