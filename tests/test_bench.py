"""The benchmark suite: one command runs every benchmark and writes the whole Markdown document."""

from __future__ import annotations

import re

import pytest
import torch

from backbones.bench import step_flops
from tasks.bench.markdown import ROUND_SHARE
from tasks.benchsuite import SECTIONS, main, part_ceiling
from tasks.recipes import cpu_bf16_units


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _table_rows(text: str, header_start: str) -> list[dict[str, str]]:
    """The body rows, keyed by column name, of the first Markdown table whose header starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = _cells(lines[start])
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, _cells(line))))
    return rows


def _interval(text: str) -> tuple[float, float]:
    """The values a number printed as ``text`` may stand for: plus or minus half its last digit."""
    number = re.search(r"-?\d+(?:\.(\d+))?", text)
    assert number is not None, text
    half = 0.5 * 10.0 ** -len(number.group(1) or "")
    value = float(number.group(0))
    return value - half, value + half


def _ratio_bounds(numerator: tuple[float, float], denominator: tuple[float, float]) -> tuple[float, float]:
    """Bounds of a / b for positive a and b in the given intervals (b's may reach 0 when printed as 0.000)."""
    (a_low, a_high), (b_low, b_high) = numerator, denominator
    return a_low / b_high, (a_high / b_low if b_low > 0 else float("inf"))


def _agrees(shown: str, low: float, high: float) -> bool:
    """A printed number agrees with a quantity known to lie in [low, high] if their intervals meet:
    a check of rounded figures that no machine speed can break."""
    shown_low, shown_high = _interval(shown)
    return shown_low <= high and low <= shown_high


def test_interval_check_catches_a_wrong_figure() -> None:
    assert _interval("1.7") == pytest.approx((1.65, 1.75)) and _interval("12%") == pytest.approx((11.5, 12.5))
    assert _agrees("1.7", 1.7349, 1.7351)  # the flaky case: 1.7 stands for 1.7349...
    assert not _agrees("1.8", 1.7349, 1.7351) and not _agrees("1.6", 1.7349, 1.7351)


def test_flop_counts_match_resnet50s_published_cost() -> None:
    forward = step_flops("resnet50", "forward", 224)
    assert forward == pytest.approx(2 * 4.09e9, rel=0.01)  # 4.1 GMAC per 224x224 image, less the classifier
    train = step_flops("resnet50", "train", 224)
    assert 2.9 < train / forward < 3.0  # backward is twice the forward, less the stem's input gradient


def test_against_float32_compares_every_candidate_with_the_plain_model_even_at_a_1x1_c5() -> None:
    """``--against-float32``: ratios to torchvision's default float32 NCHW model; a 32 px training step (c5 is
    1x1: BatchNorm needs a batch of more than one) is counted and timed without an error."""
    import torch

    from backbones.bench import benchmark

    rows = benchmark(
        "resnet18",
        batch_size=2,
        image_size=32,
        modes=("train",),
        channels_last=True,
        inference_mode=False,
        compile_model=False,
        rounds=1,
        warmup=0,
        device=torch.device("cpu"),
        references=("torchvision",),
        amp=True,
        memory=False,
        against_float32=True,
    )
    assert [(r["candidate"], r["reference"]) for r in rows] == [
        ("ours", "torchvision (default)"),
        ("torchvision", "torchvision (default)"),
        ("torchvision (default)", "torchvision (default)"),
    ]
    plain = next(r for r in rows if r["candidate"] == "torchvision (default)")
    for row in rows:
        assert row["ratio"] == pytest.approx(row["images_per_s"] / plain["images_per_s"])
    assert rows[0]["gflop_per_image"] == pytest.approx(step_flops("resnet18", "train", 32) / 1e9)


def test_quick_suite_writes_every_section_with_consistent_numbers(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "docs" / "benchmarks.md"
    assert main(["--quick", "--output", str(output)]) == 0
    text = output.read_text()
    assert text.startswith("# Benchmarks\n\nWritten by `python -m tasks.bench --quick`")
    assert "**Quick mode**" in text
    isa = torch.backends.cpu.get_cpu_capability()  # one model name covers CPUs of twice the speed: say which
    units = cpu_bf16_units()  # and its bfloat16 matrix units, where it has them: "(AVX512, AVX-512 bf16)"
    features = f"({isa}" + (f", {units})" if units else ")")
    tables = re.sub(r"(?s)## Targets.*?(?=^## )", "", text, flags=re.M)  # each goal repeats its part's CPU
    assert features in text.split("## Summary")[0] and tables.count(features) == 1 + len(SECTIONS)
    titles = re.findall(r"^## (.+)$", text, flags=re.M)
    assert titles[:3] == ["Machine", "Summary", "Targets"] and len(titles) == 3 + len(SECTIONS)
    for name in SECTIONS:  # each part says how to run it alone
        assert f"python -m tasks.bench {name} --quick\n" in text

    ceilings = [
        float(v) for v in re.findall(r"(?:`torch.mm` \(MKL\)|1×1 convolution \(oneDNN\)) \| ([\d.]+) GFLOP/s", text)
    ]
    peak_text = re.search(r"the faster of the two \| \*\*([\d.]+) GFLOP/s", text).group(1)
    peak = float(peak_text)
    assert len(ceilings) == 2 and peak == max(ceilings)
    # every part names the ceiling its "of peak" divides by: this run's, as the machine table states it
    assert re.findall(r"; float32 ceiling ([\d.]+) GFLOP/s\._\n", text) == [peak_text] * len(SECTIONS)
    checked = 0
    for header in ("| step | candidate | images/s", "| recipe |", "| model | runtime |"):
        rows = _table_rows(text, header)
        assert rows
        peak_low, peak_high = _interval(peak_text)
        for row in rows:
            gflops_low, gflops_high = _interval(row["GFLOP/s"])
            assert gflops_high > 0
            low, high = _ratio_bounds((100 * gflops_low, 100 * gflops_high), (peak_low, peak_high))
            assert _agrees(row["of peak"], low, high), row
            checked += 1
    assert checked >= 15

    training = _table_rows(text, "| recipe |")
    assert {row["recipe"].split(":")[0] for row in training} == {"classify", "detect", "segment", "multitask"}
    for row in training:  # every iteration is a full batch
        batch = int(re.search(r"batch (\d+)", row["recipe"]).group(1))
        assert _agrees(row["images/s"], *_ratio_bounds((batch, batch), _interval(row["s/iteration"]))), row
        assert 0 <= float(row["waiting for data"].rstrip("%")) < 100
        median, low, high = map(float, re.fullmatch(r"(\d+)% \((\d+)-(\d+)%\)", row[ROUND_SHARE]).groups())
        assert 0 < low <= median <= high < 1000  # each round's own ceiling (hand case below)
        change = row["loss after 1 step, change"]  # quick mode compares after one step: one rounding of the update
        if row["loop"] == "bare PyTorch loop":
            assert (row["precision"], change) == ("float32", "reference")
        elif row["precision"] == "float32":  # the fused step against the default, float32 NCHW: float rounding
            assert float(change) < 1e-4, row
        else:  # bfloat16's rounding, and for the detector other proposals kept and sampled: a change, not another loss
            assert 0 < float(change) < 1, row
    bare = {row["recipe"]: _interval(row["s/iteration"]) for row in training if row["loop"] == "bare PyTorch loop"}
    for row in training:  # the ratio is the bare loop's time over this loop's
        bounds = _ratio_bounds(bare[row["recipe"]], _interval(row["s/iteration"]))
        assert _agrees(row["speed vs bare loop"], *bounds), row

    optimizer = _table_rows(text, "| model | optimizer | weights | step |")
    steps = [("NCHW", s, "torch's default") for s in ("torch's default", "foreach", "ours (fused)")]
    steps += [("channels-last", s, "torch's fused") for s in ("torch's fused", "ours (fused)")]
    assert [(r["model"], r["optimizer"], r["weights"], r["step"], r["against"]) for r in optimizer] == [
        ("resnet18", name, *step) for name in ("SGD", "AdamW") for step in steps
    ]
    reference = {(r["optimizer"], r["weights"]): _interval(r["ms"]) for r in optimizer if r["step"] == r["against"]}
    for row in optimizer:  # the ratio is the reference step's time over this one's; the same update to float rounding
        bounds = _ratio_bounds(reference[row["optimizer"], row["weights"]], _interval(row["ms"]))
        assert _agrees(row["speed"], *bounds), row
        difference = row["parameters after 3 steps, max difference from it"]
        if row["step"] == row["against"]:
            assert difference == "reference", row
        elif row["weights"] == "channels-last":  # ours is torch's fused kernel on the same numbers, to the bit
            assert float(difference) == 0, row
        else:
            assert float(difference) < 1e-5, row

    learning = _table_rows(text, "| set | task (metric) |")
    assert [(row["set"], row["task (metric)"]) for row in learning] == [
        ("faces", "classify (accuracy)"),
        ("coins", "multitask: classify (accuracy)"),
        ("coins", "multitask: detect (AP)"),
        ("coins", "multitask: segment (mIoU)"),
    ]
    for row in learning:  # the ratio is our metric over the reference's
        assert 0 <= float(row["ours"]) <= 1 and 0 <= float(row["reference"]) <= 1
        voc = row["VOC mAP07 (ours / ref)"]
        assert (voc != "") == ("detect" in row["task (metric)"]), row
        assert voc == "" or all(0 <= float(v) <= 1 for v in voc.split(" / ")), row
        if row["ours / reference"] != "—":
            bounds = _ratio_bounds(_interval(row["ours"]), _interval(row["reference"]))
            assert _agrees(row["ours / reference"], *bounds), row

    summary = _table_rows(text, "| benchmark | ratio |")
    assert len(summary) >= len(SECTIONS) and all(re.fullmatch(r"\d+\.\d\d×", row["ratio"]) for row in summary)
    assert "wrote" in capsys.readouterr().out

    # the goals, read back from the tables above: the training goal names every engine row's task, precision and ratio
    goals = {row["goal"]: row for row in _table_rows(text, "| goal | measured |")}
    assert len(goals) == 6 and all(row["measured on"].endswith(features) for row in goals.values())
    engine = [row for row in training if row["loop"] == "our engine"]
    train = goals["training: every task's recipe step at least 1.25× a bare PyTorch loop"]
    assert train["measured"] == ", ".join(
        f"{row['recipe'].split(':')[0]} ({row['precision']}) {row['speed vs bare loop']}" for row in engine
    )
    slow = [row for row in engine if float(row["speed vs bare loop"].rstrip("×")) < 1.25]
    assert (train["verdict"] == "met") == (not slow)


def test_one_benchmark_prints_its_table_and_an_unknown_name_is_refused(tmp_path, capsys) -> None:
    assert main(["coco-eval", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "## COCO evaluation" in out and "## Detector" not in out
    rows = _table_rows(out, "| backend |")
    assert [row["backend"] for row in rows] == ["faster-coco-eval", "pycocotools"]
    assert main(["detectr"]) == 2
    assert capsys.readouterr().err == (
        "error: unknown benchmark 'detectr': "
        "choose from backbone, detector, coco-eval, training, optimizer, multitask, export, learning\n"
    )
    assert main(["gpu"]) == 2  # the GPU part has a command of its own, named
    assert capsys.readouterr().err.endswith("; the GPU part alone is python -m tasks.bench.gpu\n")
    assert main(["--quick", "--rounds", "3"]) == 2  # an unknown option: one line too
    assert capsys.readouterr().err.count("\n") == 1
    blocker = tmp_path / "file"
    blocker.write_text("kept")
    assert main(["--quick", "--output", str(blocker / "benchmarks.md")]) == 2  # refused before anything runs
    assert capsys.readouterr().err.startswith(f"error: --output {blocker / 'benchmarks.md'}: cannot create its folder")
    assert main(["--quick", "--output", str(tmp_path)]) == 2
    assert blocker.read_text() == "kept"


def test_gpu_section_runs_its_settings_against_torchvision_on_any_device() -> None:
    from tasks.benchsuite import GPU_DETECTOR_STEPS, QUICK, gpu_section

    section = gpu_section(QUICK, 100.0, device="cpu", variants=("float32", "AMP + channels_last"))
    rows = _table_rows(section.table(0.0), "| settings |")  # rated against the GPU's own peak, given above
    assert [(r["settings"], r["step"], r["candidate"]) for r in rows] == [
        (settings, step, candidate)
        for settings in ("float32", "AMP + channels_last")
        for step in ("forward", "train")
        for candidate in ("ours", "torchvision")
    ]
    assert all(r["ratio"] == "1.00×" for r in rows if r["candidate"] == "torchvision")
    assert "2,470 images/s" in section.text and "0.038 s/image" in section.text
    detector = _table_rows(section.table(0.0), "| detector settings |")  # Faster R-CNN on the device, both precisions
    assert [(r["detector settings"], r["step"], r["candidate"]) for r in detector] == [
        (settings, step, candidate) for settings in ("float32", "AMP") for step, candidate in GPU_DETECTOR_STEPS
    ]
    for row in detector:  # each ratio is torchvision's time over the row's, within the printed rounding
        reference = next(
            r
            for r in detector
            if (r["detector settings"], r["step"], r["candidate"])
            == (row["detector settings"], row["step"], "torchvision")
        )
        bounds = _ratio_bounds(_interval(reference["s/image"]), _interval(row["s/image"]))
        assert _agrees(row["ratio"], *bounds), row
    assert {h[0] for h in section.headlines} >= {
        "GPU Faster R-CNN inference, AMP, ours (fast backbone, channels-last) vs torchvision",
        "GPU Faster R-CNN train step, float32, ours (channels-last) vs torchvision",
    }


def test_the_gpu_part_alone_writes_its_own_document_or_says_there_is_no_gpu(tmp_path, monkeypatch, capsys) -> None:
    import tasks.benchsuite
    from tasks.bench import gpu
    from tasks.benchsuite import Section

    calls = []

    def part(settings, peak, *, device):  # the part itself is run for real by the test above
        calls.append((settings.name, device))
        return Section("GPU: a part", "what it measures", lambda p: f"| step |\n|---|\n| {p:.1f} |", [])

    def training(settings, *, device):  # run for real on the CPU by the quick suite's test
        calls.append(("training", device))
        return Section("Training", "each recipe's step", lambda p: "| recipe |\n|---|\n| a |", [])

    monkeypatch.setattr(tasks.benchsuite, "gpu_section", part)
    monkeypatch.setattr(tasks.benchsuite, "training_section", training)
    output = tmp_path / "benchmarks-gpu.md"
    assert gpu.main(["--quick", "--device", "cpu", "--output", str(output)]) == 0
    text = output.read_text()
    assert calls == [("quick", "cpu"), ("training", "cpu")]
    assert "\n## Training on the GPU: seconds per iteration and time waiting for data\n\neach recipe's step\n" in text
    assert text.startswith("# Benchmarks on a GPU\n\nWritten by `python -m tasks.bench.gpu --quick` on ")
    peak = re.search(r"float32 matmul ([\d,]+) GFLOP/s", text).group(1)
    assert "## GPU: a part\n\n```\npython -m tasks.bench.gpu --quick\n```\n\nwhat it measures\n\n| step |" in text
    assert _agrees(re.search(r"^\| ([\d.]+) \|$", text, flags=re.M).group(1), *_interval(peak.replace(",", "")))
    if not torch.cuda.is_available():
        capsys.readouterr()
        assert gpu.main(["--output", str(tmp_path / "other.md")]) == 2
        assert capsys.readouterr().err.strip() == "error: --device cuda: no CUDA device is available here"
        assert not (tmp_path / "other.md").exists()
    assert gpu.main(["--device", "tpu"]) == 2  # argparse's one line, not torch.device's traceback
    assert "argument --device: invalid choice: 'tpu'" in capsys.readouterr().err


def test_update_replaces_the_named_sections_the_header_and_their_summary_rows() -> None:
    from tasks.benchsuite import replace_sections

    document = (
        "# Benchmarks\n\nhead\n\n## Machine\n\nold machine\n\n## Summary\n\n| a |\n\n## Backbone\n\nold b\n\n"
        "## Learning\n\nold l\n"
    )
    fresh = (
        "# Benchmarks\n\nnew head\n\n## Machine\n\nnew machine\n\n## Summary\n\n## Learning\n\nnew l\n\n## Extra\n\nx\n"
    )
    merged = replace_sections(document, fresh)
    assert merged == (  # the latest run's header and machine; each part's footer names its own day and CPU
        "# Benchmarks\n\nnew head\n\n## Machine\n\nnew machine\n\n## Summary\n\n| a |\n\n## Backbone\n\nold b\n\n"
        "## Learning\n\nnew l\n\n## Extra\n\nx\n"
    )
    # the summary's rows of the benchmarks that ran again are replaced in place, by label up to the first comma
    summary = (
        "| benchmark | ratio |\n|---|---:|\n| forward, a | 1× |\n| training, x, old | 2× |\n| training, y | 3× |\n"
    )
    again = "| benchmark | ratio |\n|---|---:|\n| training, x (bf16) | 4× |\n| training, z | 5× |\n| new, w | 6× |\n"
    merged = replace_sections(
        document.replace("| a |\n", summary), fresh.replace("## Summary\n\n", f"## Summary\n\n{again}\n")
    )
    assert merged.split("## Summary\n\n")[1].split("\n\n")[0].splitlines() == [
        "| benchmark | ratio |",
        "|---|---:|",
        "| forward, a | 1× |",
        "| training, x (bf16) | 4× |",
        "| training, z | 5× |",
        "| new, w | 6× |",
    ]


def test_update_names_the_kept_parts_that_another_machine_measured() -> None:
    from tasks.benchsuite import Section, other_machines

    # each part's last line names the ceiling its "of peak" divides by, and reads back
    written = Section("Backbone", "text", lambda peak: f"| of peak at {peak:.1f} |", []).markdown(212.4)
    assert written.rstrip().endswith("; float32 ceiling 212.4 GFLOP/s._") and part_ceiling(written) == 212.4
    assert "| of peak at 212.4 |" in written

    def part(title: str, ceiling: str) -> str:
        return f"## {title}\n\ntext\n\n_This part took 1.0 min, on 2026-12-04, AMD EPYC (AVX512){ceiling}._\n\n"

    document = (
        "# Benchmarks\n\nhead\n\n## Machine\n\nm\n\n## Summary\n\n| a |\n\n"
        + part("Backbone", "; float32 ceiling 428.0 GFLOP/s")  # twice this machine's: another machine
        + part("Detector", "; float32 ceiling 190.0 GFLOP/s")  # within 15%: this machine's spread
        + part("Training", "; float32 ceiling 100.0 GFLOP/s")  # replaced by the run: not kept
        + part("Learning", "")  # written before parts named their ceiling
    )
    fresh = "# Benchmarks\n\nnew\n\n## Summary\n\n" + part("Training", "; float32 ceiling 212.4 GFLOP/s")
    assert part_ceiling(part("Learning", "")) is None
    assert other_machines(document, fresh) == (212.4, ["Backbone (428.0)", "Learning (not recorded)"])
    assert other_machines(document, "# Benchmarks\n\n## Summary\n\n| a |\n") == (None, [])  # nothing measured


def test_update_warns_of_what_it_keeps_from_another_machine_and_writes_the_document(tmp_path, capsys) -> None:
    output = tmp_path / "benchmarks.md"
    footer = "_This part took 76.3 min, on 2026-12-04, AMD EPYC (AVX512); float32 ceiling 1.0 GFLOP/s._"
    kept = f"## Learning\n\nold l\n\n{footer}\n"
    output.write_text("# Benchmarks\n\nhead\n\n## Machine\n\nm\n\n## Summary\n\n| a |\n\n" + kept)
    assert main(["coco-eval", "--quick", "--update", "--output", str(output)]) == 0
    err = capsys.readouterr().err.splitlines()
    warning = [line for line in err if line.startswith("warning:")]
    assert len(warning) == 1 and f"{output} keeps parts measured at another float32 ceiling" in warning[0]
    assert "Learning (1.0)" in warning[0]
    text = output.read_text()
    assert kept in text and "## COCO evaluation" in text  # a warning only: the update is written, the old part kept
    fresh = text.split("## COCO evaluation")[1].split("\n## ")[0]
    assert part_ceiling(fresh) is not None and part_ceiling(fresh) > 1.0


def _part(title: str, header: str, rows: list[str], day: str = "2026-12-04, AMD EPYC (AVX512)") -> str:
    lines = [header, "|" + "---|" * header.count(" | ") + "---|", *rows]
    return f"## {title}\n\ntext\n\n" + "\n".join(lines) + f"\n\n_This part took 1.0 min, on {day}._\n\n"


def test_targets_read_each_goal_from_the_tables_and_judge_it() -> None:
    from tasks.bench.targets import with_targets

    head = "# Benchmarks\n\nhead\n\n## Machine\n\nm\n\n## Summary\n\n| benchmark | ratio |\n|---|---:|\n\n"
    backbone = _part(
        "Backbone: forward",
        "| step | candidate | images/s | ratio | against |",
        [
            "| forward | ours | 36.0 | 1.00× | torchvision |",
            "| forward | ours (best) | 47.9 | 1.34× | torchvision (default) |",
            "| forward | ours (best, Inductor) | 54.0 | 1.51× | torchvision (default) |",
            "| train | ours (best) | 9.0 | 0.90× | torchvision |",  # a train row: not an inference form
        ],
    )
    detector = _part(
        "Detector: Faster R-CNN",
        "| step | candidate | s/image | speed vs torchvision |",
        [
            "| inference | torchvision | 1.3 | 1.00× |",
            "| inference | ours | 1.2 | 1.08× |",
            "| inference | ours (fast backbone) | 1.1 | 1.19× |",
            "| train step | torchvision | 5.8 | 1.00× |",
            "| train step | ours | 5.3 | 1.10× |",
        ],
        day="2026-12-05, AMD EPYC (AVX2); float32 ceiling 107.9 GFLOP/s",  # the ceiling is not part of the CPU
    )
    training = _part(
        "Training: seconds per iteration",
        f"| recipe | loop | precision | waiting for data | speed vs bare loop | of peak | {ROUND_SHARE} |",
        [  # the goal reads the share of each round's own ceiling, not of the run's best
            "| classify: resnet18, batch 64 | our engine | float32 | 2.5% | 1.30× | 46% | 50% |",
            "| classify: resnet18, batch 64 | bare PyTorch loop | float32 | 12.5% | 1.00× | 34% | 37% |",
            "| detect: resnet50, batch 4 | our engine | bfloat16, channels-last | 1.2% | 1.20× | 55% | 65% (52-70%) |",
            "| segment: resnet34, batch 8 | our engine | float32 | 2.0% | 1.25× | 59% | 59% |",
        ],
    )
    document = with_targets(head + backbone + detector + training)
    titles = re.findall(r"^## (.+)$", document, flags=re.M)
    assert titles[:3] == ["Machine", "Summary", "Targets"] and len(titles) == 6
    assert with_targets(document) == document  # rewritten in place, never twice
    goals = {row["goal"].split(" at ")[0]: row for row in _table_rows(document, "| goal | measured |")}
    checks = {  # goal: (measured, verdict, measured on)
        "training: every task's recipe step": (
            "classify (float32) 1.30×, detect (bfloat16, channels-last) 1.20×, segment (float32) 1.25×",
            "not met: detect (bfloat16, channels-last) 1.20×",
            "2026-12-04, AMD EPYC (AVX512)",
        ),
        "training: detect and segment": ("detect 65%, segment 59%", "not met: segment 59%", None),
        "training: waiting for data": ("classify 2.5%, detect 1.2%, segment 2.0%", "not met: classify 2.5%", None),
        "Faster R-CNN train step": ("ours 1.10×", "met", "2026-12-05, AMD EPYC (AVX2)"),
        "Faster R-CNN inference": (
            "ours 1.08×, ours (fast backbone) 1.19×",
            "not met: the best, ours (fast backbone), is 1.19×",
            None,
        ),
        "best inference mode": ("ours (best) 1.34×, ours (best, Inductor) 1.51×", "met", None),
    }
    assert set(goals) == set(checks)
    for name, (measured, verdict, day) in checks.items():
        assert (goals[name]["measured"], goals[name]["verdict"]) == (measured, verdict), name
        assert day is None or goals[name]["measured on"] == day
        assert goals[name]["more in docs/results.md"].startswith('"')
    assert "no GPU was present" in document
    missing = {row["goal"]: row for row in _table_rows(with_targets(head), "| goal | measured |")}
    assert {(row["measured"], row["verdict"]) for row in missing.values()} == {("not in this document", "not measured")}


def test_targets_option_rewrites_that_part_alone_and_refuses_what_it_cannot_do(tmp_path, capsys) -> None:
    document = tmp_path / "benchmarks.md"
    text = "# Benchmarks\n\nhead\n\n## Summary\n\n| benchmark | ratio |\n|---|---:|\n\n## Backbone\n\nb\n"
    document.write_text(text)
    assert main(["--targets", "--output", str(document)]) == 0
    written = document.read_text()
    assert written.startswith(text.split("## Backbone")[0] + "## Targets\n") and written.endswith("## Backbone\n\nb\n")
    for argv in (["--targets", "backbone"], ["--targets", "--update"], ["--targets", "--quick"]):
        assert main([*argv, "--output", str(document)]) == 2
        assert capsys.readouterr().err.startswith("error: --targets runs no benchmark")
    assert main(["--targets", "--output", str(tmp_path / "missing.md")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --output {tmp_path / 'missing.md'}: cannot read it")
    assert document.read_text() == written


def test_learning_rows_table_shows_the_ratio_to_the_reference_or_none() -> None:
    from tasks.bench_learning import rows_table

    def row(name: str, ours: float, reference: float) -> dict:
        return {
            "set": name,
            "task": "segment",
            "setting": ("adamw", 0.003),
            "ours": {"metric": ours, "epochs": 5, "images_per_s": 9.126},
            "reference": {"metric": reference},
        }

    joint = {**row("coins", 0.9, 0.95), "weighting": "uncertainty"}
    del joint["setting"]
    lines = rows_table([row("horses", 0.6, 0.48), row("blank", 0.1, 0.0), joint]).splitlines()
    assert lines[2] == "| horses | segment (mIoU) | 0.480 (adamw 0.003) | 0.600 | 1.25× | 5, 9.13 |"
    assert lines[3].split(" | ")[4] == "n/a" and len(lines) == 5
    assert lines[4] == "| coins | multitask: segment (mIoU) | 0.950 (alone) | 0.900 | 0.95× | 5, 9.13 |"


def test_the_full_learning_section_reports_on_reporting_sets_only(monkeypatch) -> None:
    """The tuning sets (role "tune": textures, blobs) never appear in the learning table, the multitask rows
    included: a run of the full section's set choice with the runs themselves stubbed out."""
    from tasks import bench_learning
    from tasks.benchsuite import FULL, learning_section

    asked: dict[str, list[str]] = {}

    def single(budgets, *, scale, names):  # chooses its own sets: reporting ones when names is None
        return []

    def multitask(budget, *, scale, names, weightings):
        asked["multitask"] = list(names)
        return []

    monkeypatch.setattr(bench_learning, "learning_rows", single)
    monkeypatch.setattr(bench_learning, "multitask_rows", multitask)
    learning_section(FULL)
    tuning = {name for name, s in bench_learning.SETS.items() if s.role == "tune"}
    assert tuning >= {"textures", "blobs"}
    assert asked["multitask"] and not tuning & set(asked["multitask"])
    assert set(asked["multitask"]) == {
        n for n, s in bench_learning.SETS.items() if s.role == "report" and "multitask" in s.tasks
    }


def test_the_training_profile_ranks_operators_by_their_own_time(tmp_path, monkeypatch) -> None:
    """``python -m tasks.bench.profile``: a resnet18 digits step's operators, most self time first; the shares are
    of the whole profiled step, and the convolutions are among the top."""
    from tasks.bench.profile import markdown, profile_training

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    overrides = ["model.backbone=resnet18", "train.workers=0"]
    step_ms, rows, precision = profile_training("classify", steps=1, warmup=1, top=5, amp=False, overrides=overrides)
    assert precision == "float32" and len(rows) == 5
    assert [r["ms_per_step"] for r in rows] == sorted((r["ms_per_step"] for r in rows), reverse=True)
    for row in rows:
        assert row["ms_per_step"] == pytest.approx(row["share"] * step_ms, rel=1e-6)
    assert sum(r["share"] for r in rows) <= 1 + 1e-9
    assert any("convolution" in r["operator"] for r in rows)
    assert markdown(step_ms, rows, precision).splitlines()[2].startswith(f"| `{rows[0]['operator']}` |")


def test_the_training_profile_refuses_more_steps_than_the_data_holds_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    from tasks.bench.profile import main

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    common = ["--task", "classify", "--set", "train.workers=0"]
    assert main([*common, "--steps", "0"]) == 2
    assert capsys.readouterr().err == "error: --steps and --top must be 1 or more, --warmup 0 or more (now 0, 10, 3)\n"
    assert main([*common, "--steps", "500", "--warmup", "2"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(
        r"error: --steps 500 with --warmup 2 needs 502 batches, and classify's built-in data holds (\d+): use fewer "
        r"steps\n",
        err,
    ), err


def test_a_detector_train_step_whose_loss_is_not_finite_voids_the_benchmark(monkeypatch) -> None:
    """The detector benchmark's train steps keep their losses, and a NaN among them stops it with one line: a
    diverged step times other work (fewer boxes kept), as the training table's bare loop once did."""
    import tasks.bench as bench

    step_of = bench._detector_step

    def diverging(**spec):
        step = step_of(**spec)

        def nan_after() -> None:
            step()
            step.losses[-1] = step.losses[-1] * float("nan")

        nan_after.losses = step.losses
        return nan_after

    kwargs = dict(images=1, size=(64, 64), rounds=1, min_size=64, memory=False)
    rows = bench.detector_benchmark(**kwargs, candidates=[("train step", "torchvision")])
    assert [r["candidate"] for r in rows] == ["torchvision"]
    monkeypatch.setattr(bench, "_detector_step", diverging)
    with pytest.raises(RuntimeError, match=r"^the detector's train step \(torchvision\): the loss was not finite"):
        bench.detector_benchmark(**kwargs, candidates=[("train step", "torchvision")])


def test_a_rounds_share_divides_by_the_ceiling_timed_in_that_round() -> None:
    from tasks.bench import round_shares
    from tasks.benchsuite import _median_and_range
    from tasks.engine import EpochStats

    rounds = [EpochStats(10, 80, 4.0, 0.1), EpochStats(10, 80, 8.0, 0.1), EpochStats(10, 80, 5.0, 0.1)]
    # 2 GFLOP an image: 40, 20 and 32 GFLOP/s against ceilings of 100, 25 and 40: 40%, 80%, 80%
    assert round_shares(2e9, rounds, [100.0, 25.0, 40.0]) == pytest.approx([0.4, 0.8, 0.8])
    # against the best ceiling alone the same rounds read 40%, 20% and 32%
    shares = round_shares(2e9, rounds, [100.0] * 3)
    assert shares == pytest.approx([0.4, 0.2, 0.32])
    assert _median_and_range(shares) == "32% (20-40%)"
    with pytest.raises(ValueError, match="3 timed round"):
        round_shares(2e9, rounds, [100.0, 25.0])
