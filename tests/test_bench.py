"""The benchmark suite: one command runs every benchmark and writes the whole Markdown document."""

from __future__ import annotations

import re

import pytest

from backbones.bench import step_flops
from tasks.bench import main
from tasks.benchsuite import SECTIONS


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


def test_flop_counts_match_resnet50s_published_cost() -> None:
    forward = step_flops("resnet50", "forward", 224)
    assert forward == pytest.approx(2 * 4.09e9, rel=0.01)  # 4.1 GMAC per 224x224 image, less the classifier
    train = step_flops("resnet50", "train", 224)
    assert 2.9 < train / forward < 3.0  # backward is twice the forward, less the stem's input gradient


def test_quick_suite_writes_every_section_with_consistent_numbers(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "docs" / "benchmarks.md"
    assert main(["--quick", "--output", str(output)]) == 0
    text = output.read_text()
    assert text.startswith("# Benchmarks\n\nWritten by `python -m tasks.bench --quick`")
    assert "**Quick mode**" in text
    titles = re.findall(r"^## (.+)$", text, flags=re.M)
    assert titles[:2] == ["Machine", "Summary"] and len(titles) == 2 + len(SECTIONS)
    for name in SECTIONS:  # each part says how to run it alone
        assert f"python -m tasks.bench {name} --quick\n" in text

    ceilings = [
        float(v) for v in re.findall(r"(?:`torch.mm` \(MKL\)|1×1 convolution \(oneDNN\)) \| ([\d.]+) GFLOP/s", text)
    ]
    peak = float(re.search(r"the faster of the two \| \*\*([\d.]+) GFLOP/s", text).group(1))
    assert len(ceilings) == 2 and peak == max(ceilings)
    checked = 0
    for header in ("| step | candidate | images/s", "| recipe |", "| model | runtime |"):
        rows = _table_rows(text, header)
        assert rows
        for row in rows:
            gflops = float(row["GFLOP/s"])
            assert gflops > 0
            assert abs(float(row["of peak"].rstrip("%")) - 100 * gflops / peak) <= 1  # rounded GFLOP/s
            checked += 1
    assert checked >= 15

    training = _table_rows(text, "| recipe |")
    assert {row["recipe"].split(":")[0] for row in training} == {"classify", "detect", "segment", "multitask"}
    for row in training:
        seconds = float(row["s/iteration"])
        batch = int(re.search(r"batch (\d+)", row["recipe"]).group(1))
        assert float(row["images/s"]) == pytest.approx(batch / seconds, rel=0.02)  # every iteration is a full batch
        assert 0 <= float(row["waiting for data"].rstrip("%")) < 100
    bare = {row["recipe"]: float(row["s/iteration"]) for row in training if row["loop"] == "bare PyTorch loop"}
    for row in training:  # the ratio is the bare loop's time over this loop's
        ratio = float(row["speed vs bare loop"].rstrip("×"))
        assert ratio == pytest.approx(bare[row["recipe"]] / float(row["s/iteration"]), abs=0.02)

    summary = _table_rows(text, "| benchmark | ratio |")
    assert len(summary) >= len(SECTIONS) and all(re.fullmatch(r"\d+\.\d\d×", row["ratio"]) for row in summary)
    assert "wrote" in capsys.readouterr().out


def test_one_benchmark_prints_its_table_and_an_unknown_name_is_refused(tmp_path, capsys) -> None:
    assert main(["coco-eval", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "## COCO evaluation" in out and "## Detector" not in out
    rows = _table_rows(out, "| backend |")
    assert [row["backend"] for row in rows] == ["faster-coco-eval", "pycocotools"]
    assert main(["detectr"]) == 2
    assert capsys.readouterr().err == (
        "error: unknown benchmark 'detectr': choose from backbone, detector, coco-eval, training, multitask, export\n"
    )
    assert main(["--quick", "--rounds", "3"]) == 2  # an unknown option: one line too
    assert capsys.readouterr().err.count("\n") == 1
    blocker = tmp_path / "file"
    blocker.write_text("kept")
    assert main(["--quick", "--output", str(blocker / "benchmarks.md")]) == 2  # refused before anything runs
    assert capsys.readouterr().err.startswith(f"error: --output {blocker / 'benchmarks.md'}: cannot create its folder")
    assert main(["--quick", "--output", str(tmp_path)]) == 2
    assert blocker.read_text() == "kept"


def test_gpu_section_runs_its_settings_against_torchvision_on_any_device() -> None:
    from tasks.benchsuite import QUICK, gpu_section

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
