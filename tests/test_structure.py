"""The install and the layout: a working torch/torchvision pair, one-way imports, atomic writes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {"backbones": set(), "heads": {"backbones"}, "tasks": {"heads", "backbones"}}


def test_torchvision_compiled_ops_run() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert torchvision.ops.nms(boxes, scores, 0.5).tolist() == [0, 2]
    pooled = torchvision.ops.roi_align(torch.ones(1, 1, 8, 8), [torch.tensor([[0.0, 0.0, 4.0, 4.0]])], (2, 2))
    assert torch.allclose(pooled, torch.ones(1, 1, 2, 2))


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package: str) -> None:
    forbidden = set(ALLOWED) - ALLOWED[package] - {package}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imported_packages(path) & forbidden
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_benchmarks_never_import_the_suite() -> None:
    """The suite (tasks.benchsuite, and the command line that runs it) imports the benchmarks, never the reverse."""
    for path in [ROOT / "tasks" / "bench" / "__init__.py", ROOT / "tasks" / "bench_learning.py"]:
        assert "tasks.benchsuite" not in _imported_modules(path), path.name
    assert "tasks.benchsuite" in _imported_modules(ROOT / "tasks" / "bench" / "__main__.py")


def test_classify_and_detect_start_without_timm() -> None:
    """``import timm`` loads its model zoo (about 0.4 s of a 4 s start-up, in every run, torchrun worker and
    bad-input exit). A plain ResNet needs none of it: timm is imported only for its layers where a model uses them
    (stochastic depth, ResNet-D's stride-1 pooling) and for ``timm:`` backbones."""
    import subprocess
    import sys

    code = (
        "import sys, tasks.classify, tasks.detect; from backbones import build_backbone; "
        "build_backbone('resnet50', out_levels=('c5',)); print('timm' in sys.modules); "
        "build_backbone('resnet18', drop_path_rate=0.1); print('timm' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "True"]  # and a model with stochastic depth does get timm's DropPath


def test_heads_use_only_the_shared_backbone_types() -> None:
    for path in sorted((ROOT / "heads").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("backbones"):
                assert node.module == "backbones.base", f"{path.name} imports {node.module}"


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path) -> None:
    from tasks.io import atomic_write, write_json

    target = write_json(tmp_path / "metrics.json", {"accuracy": 0.5})

    def explode(handle) -> None:
        handle.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, explode)
    assert target.read_text().strip().endswith("}") and '"accuracy": 0.5' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind


def test_lr_schedule_warms_up_then_decays() -> None:
    from tasks.config import TrainConfig
    from tasks.engine import lr_factor

    cosine = TrainConfig(schedule="cosine", min_lr_ratio=0.0)
    values = [lr_factor(s, total=100, warmup=10, cfg=cosine, steps_per_epoch=10) for s in range(101)]
    assert values[0] == pytest.approx(0.001) and values[10] == pytest.approx(1.0)
    assert values[55] == pytest.approx(0.5) and values[100] == pytest.approx(0.0, abs=1e-12)
    assert values[:11] == sorted(values[:11]) and values[10:] == sorted(values[10:], reverse=True)
    step = TrainConfig(schedule="step", step_milestones=[3, 6], step_gamma=0.1)
    assert [lr_factor(e * 10, total=100, warmup=0, cfg=step, steps_per_epoch=10) for e in (0, 3, 6)] == pytest.approx(
        [1.0, 0.1, 0.01]
    )


def test_backbone_learning_rate_scale_and_no_decay_on_norms() -> None:
    from tasks.classify import build_model
    from tasks.config import TrainConfig
    from tasks.engine import param_groups

    model = build_model("resnet18", 4)
    groups = param_groups(model, TrainConfig(lr=0.1, backbone_lr_scale=0.1, weight_decay=1e-4))
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    for group in groups:
        in_backbone = {id(p) in backbone_ids for p in group["params"]}
        assert len(in_backbone) == 1
        assert group["lr"] == pytest.approx(0.01 if in_backbone.pop() else 0.1)
        assert (group["weight_decay"] > 0) == all(p.ndim > 1 for p in group["params"])


# A measured figure in README's prose: a ratio, a decimal, a percentage or a duration. Versions are not.
FIGURE = re.compile(
    r"(?<![\w.])(?:\d+\.\d+×|\d+×|\d+\.\d+%?|\d+%|\d+ min \d+ s|\d+(?:\.\d+)? s|\d+(?:-\d+)? minutes)(?![\w.]*\d)"
)
VERSION_WORDS = ("Python ≥ ", "torch ", "torchvision ", "Python ")


def test_every_figure_readme_states_is_in_the_measured_docs() -> None:
    """README quotes measurements only from docs/benchmarks.md and docs/results.md, which commands write."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    docs = "".join((root / "docs" / name).read_text(encoding="utf-8") for name in ("benchmarks.md", "results.md"))
    prose = re.sub(r"```.*?```", "", readme, flags=re.S)  # commands and printed blocks are not quotes
    missing, checked = [], 0
    for match in FIGURE.finditer(prose):
        if prose[: match.start()].endswith(VERSION_WORDS):
            continue
        checked += 1
        if match.group(0) not in docs:
            line = prose[: match.start()].count("\n")
            missing.append(f"{match.group(0)!r} in: {prose.splitlines()[line].strip()[:100]}")
    assert not missing, "README figures not in docs/benchmarks.md or docs/results.md:\n" + "\n".join(missing)
    assert checked >= 15  # the pattern does find README's figures
