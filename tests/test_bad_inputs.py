"""A corpus of malformed inputs, each run through the runner and command that reads it.

Every case must end in one of two ways, never in a traceback:
- one ``error: ...`` line on stderr that names the file (or option) at fault, and exit code 2;
- or the input is handled and the run goes on (exit 0), with a ``warning:`` line where something was skipped,
  clipped or dropped.

The corpus is built on the built-in shapes layout, which all four runners read (``train.csv`` for classify, COCO
boxes for detect, masks for segment, all three for multitask), so the same broken files reach every runner.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks import classify, detect, multitask, segment
from tasks.data.embedded import shapes_dataset

pytestmark = pytest.mark.slow

RUNNERS = {"classify": classify.main, "detect": detect.main, "segment": segment.main, "multitask": multitask.main}
SIZES = {
    "classify": ["--image-size", "32"],
    "detect": ["--set", "model.min_size=64", "--set", "model.max_size=64"],
    "segment": ["--image-size", "64"],
    "multitask": ["--image-size", "64"],
}
COMMON = ["--backbone", "resnet18", "--workers", "0", "--batch-size", "2"]


@dataclass
class Case:
    name: str
    task: str
    argv: list[str]
    needle: str  # what the error line must name (a file or an option); "" where the input may be handled


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The shapes data and a one-step checkpoint of every runner."""
    base = tmp_path_factory.mktemp("corpus")
    root = shapes_dataset(base / "shapes", size=64, train_images=12, val_images=3)
    checkpoints = {}
    for task, main in RUNNERS.items():
        out = base / f"{task}-run"
        argv = ["--data", str(root), "--output", str(out), "--epochs", "1", *COMMON, *SIZES[task]]
        assert main([*argv, "--set", "train.max_iters_per_epoch=1"]) == 0
        checkpoints[task] = out / "best.pt"
    return root, checkpoints


def _copy(root: Path, where: Path) -> Path:
    shutil.copytree(root, where)
    return where


def _yaml_cases(root: Path, folder: Path) -> list[Case]:
    texts = {
        "list-for-mapping": "train: [1, 2]\n",
        "string-epochs": "train: {epochs: many}\n",
        "string-lr": "train: {lr: fast}\n",
        "unknown-key": "trian: {epochs: 3}\n",
        "list-size": "data: {image_size: [1, 2]}\n",
        "syntax": "train: {epochs: 3\n",
        "top-level-list": "- train\n- data\n",
        "negative-batch": "train: {batch_size: -4}\n",
    }
    cases = []
    for key, text in texts.items():
        path = folder / f"{key}.yaml"
        path.write_text(text)
        for task in RUNNERS:
            argv = ["--config", str(path), "--data", str(root), "--output", str(folder / "o"), *COMMON]
            cases.append(Case(f"yaml {key}", task, argv, path.name))
    latin = folder / "latin1.yaml"
    latin.write_bytes("train: {epochs: 2}  # café\n".encode("latin-1"))
    cases += [Case("yaml latin-1", t, ["--config", str(latin), "--data", str(root)], latin.name) for t in RUNNERS]
    return cases


def _checkpoint_cases(root: Path, checkpoints: dict[str, Path], folder: Path) -> list[Case]:
    class Payload:  # a pickled object: weights_only must refuse it
        def __reduce__(self):
            return (print, ("unpickled!",))

    cases = []
    tasks = list(RUNNERS)
    for index, task in enumerate(tasks):
        good = torch.load(checkpoints[task], weights_only=True)
        variants: dict[str, object] = {
            "other-task": checkpoints[tasks[(index + 1) % len(tasks)]],
            "version": {**good, "format_version": 7},
            "unknown-arg": {**good, "model_args": {**good["model_args"], "wings": 2}},
            "no-model-args": {k: v for k, v in good.items() if k != "model_args"},
            "pickled": {**good, "evil": Payload()},
            "not-a-dict": [1, 2, 3],
        }
        if isinstance(good["class_names"], list):
            variants["fewer-classes"] = {**good, "class_names": good["class_names"][:1]}
        for key, content in variants.items():
            path = folder / f"{task}-{key}.pt"
            if isinstance(content, Path):
                shutil.copy(content, path)
            else:
                torch.save(content, path)
            needle = f"{path.name} cannot be read safely: it holds a Python object" if key == "pickled" else ""
            argv = ["eval", "--checkpoint", str(path), "--data", str(root)]
            cases.append(Case(f"checkpoint {key}", task, argv, needle))
        truncated = folder / f"{task}-truncated.pt"
        truncated.write_bytes(checkpoints[task].read_bytes()[:5000])
        empty = folder / f"{task}-empty.pt"
        empty.write_bytes(b"")
        for path, reason in ((truncated, "it is truncated or corrupted"), (empty, "the file is empty")):
            argv = ["eval", "--checkpoint", str(path), "--data", str(root)]
            cases.append(
                Case(
                    f"checkpoint {path.stem.split('-')[-1]}", task, argv, f"{path.name} cannot be read safely: {reason}"
                )
            )
        missing = folder / "nowhere.pt"
        cases.append(
            Case("checkpoint missing", task, ["eval", "--checkpoint", str(missing), "--data", str(root)], "nowhere.pt")
        )
    return cases


def _broken_images(folder: Path, good: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    files = {
        "truncated.png": data[: len(data) // 3],
        "empty.png": b"",
        "text.jpg": b"this is not an image\n",
        "header-only.png": data[:8],
        "garbage.png": bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)),
    }
    paths = []
    for name, content in files.items():
        (folder / name).write_bytes(content)
        paths.append(folder / name)
    return paths


def _image_cases(root: Path, checkpoints: dict[str, Path], folder: Path) -> list[Case]:
    cases = []
    good = root / "val" / sorted(p.name for p in (root / "val").glob("*.png"))[0]
    broken = _broken_images(folder / "broken", good)
    mixed = folder / "mixed"
    mixed.mkdir()
    shutil.copy(good, mixed / "good.png")
    for path in broken:
        shutil.copy(path, mixed / path.name)
    for task, checkpoint in checkpoints.items():
        out = ["--output", str(folder / f"{task}-pred")]
        for path in broken:  # named on the command line: one line
            cases.append(
                Case(
                    f"predict {path.name}",
                    task,
                    ["predict", str(path), "--checkpoint", str(checkpoint), *out],
                    path.name,
                )
            )
        # inside a folder: skipped and counted, the good image predicted
        cases.append(Case("predict folder", task, ["predict", str(mixed), "--checkpoint", str(checkpoint), *out], ""))
    # the same bytes as a listed image of a dataset: eval skips and counts it, and scores the others
    for path in broken:
        data = _copy(root, folder / f"data-{path.stem}")
        (data / "val" / good.name).write_bytes(path.read_bytes())
        for task, checkpoint in checkpoints.items():
            argv = ["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--output", str(folder / "o")]
            cases.append(Case(f"dataset image {path.name}", task, argv, ""))
    return cases


def _coco_cases(root: Path, checkpoints: dict[str, Path], folder: Path) -> list[Case]:
    document = json.loads((root / "annotations" / "instances_val.json").read_text())

    def change(fn):
        d = json.loads(json.dumps(document))
        fn(d)
        return json.dumps(d)

    variants = {
        "not-json": "{images: [",
        "a-list": "[1, 2, 3]",
        "no-images": change(lambda d: d.pop("images")),
        "no-file-name": change(lambda d: d["images"][0].pop("file_name")),
        "bbox-strings": change(lambda d: d["annotations"][0].update(bbox=["a", "b", "c", "d"])),
        "bbox-three": change(lambda d: d["annotations"][0].update(bbox=[1, 2, 3])),
        "unknown-category": change(lambda d: d["annotations"][0].update(category_id=999)),
        "missing-image": change(lambda d: d["images"][0].update(file_name="gone.png")),
        "width-string": change(lambda d: d["images"][0].update(width="wide")),
        "annotations-dict": change(lambda d: d.update(annotations={"a": 1})),
        "category-no-id": change(lambda d: d["categories"][0].pop("id")),
        "no-image-id": change(lambda d: d["annotations"][0].pop("image_id")),
        "negative-box": change(lambda d: d["annotations"][0].update(bbox=[10, 10, -5, 8])),  # dropped: a warning
        "box-outside": change(lambda d: d["annotations"][0].update(bbox=[50, 50, 40, 40])),  # clipped: a warning
        "no-bbox-polygon": change(lambda d: [a.pop("bbox") for a in d["annotations"]]),  # boxes derived
        "no-width-height": change(lambda d: [(i.pop("width"), i.pop("height")) for i in d["images"]]),  # read
    }
    cases = []
    for key, text in variants.items():
        data = _copy(root, folder / f"coco-{key}")
        (data / "annotations" / "instances_val.json").write_text(text)
        for task in ("detect", "multitask"):
            argv = ["eval", "--checkpoint", str(checkpoints[task]), "--data", str(data), "--output", str(folder / "o")]
            cases.append(Case(f"coco {key}", task, argv, ""))
    return cases


def _voc_cases(root: Path, checkpoint: Path, folder: Path) -> list[Case]:
    """A VOC root made from the shapes val split, then broken one way at a time."""
    document = json.loads((root / "annotations" / "instances_val.json").read_text())
    names = {c["id"]: c["name"] for c in document["categories"]}

    def xml(entry, boxes) -> str:
        objects = "".join(
            f"<object><name>{names[a['category_id']]}</name><difficult>0</difficult><bndbox><xmin>{x + 1:.0f}</xmin>"
            f"<ymin>{y + 1:.0f}</ymin><xmax>{x + w:.0f}</xmax><ymax>{y + h:.0f}</ymax></bndbox></object>"
            for a in boxes
            for x, y, w, h in [a["bbox"]]
        )
        return (
            f"<annotation><filename>{entry['file_name']}</filename><size><width>{entry['width']}</width>"
            f"<height>{entry['height']}</height><depth>3</depth></size>{objects}</annotation>"
        )

    def build(where: Path) -> tuple[Path, list[str]]:
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (where / sub).mkdir(parents=True, exist_ok=True)
        ids = []
        for entry in document["images"]:
            stem = Path(entry["file_name"]).stem
            Image.open(root / "val" / entry["file_name"]).convert("RGB").save(where / "JPEGImages" / f"{stem}.jpg")
            boxes = [a for a in document["annotations"] if a["image_id"] == entry["id"]]
            (where / "Annotations" / f"{stem}.xml").write_text(xml(entry, boxes))
            ids.append(stem)
        (where / "ImageSets" / "Main" / "val.txt").write_text("\n".join(ids) + "\n")
        return where, ids

    def edit(where: Path, stem: str, old: str, new: str) -> None:
        path = where / "Annotations" / f"{stem}.xml"
        path.write_text(path.read_text().replace(old, new, 1))

    breakages = {
        "no-bndbox": lambda w, s: edit(w, s, "<bndbox>", "<box>"),
        "non-numeric": lambda w, s: edit(w, s, "<xmin>", "<xmin>x"),
        "inverted": lambda w, s: edit(w, s, "<xmax>", "<xmax>-"),  # xmax < xmin: dropped with a warning
        "negative": lambda w, s: edit(w, s, "<ymin>", "<ymin>-"),  # clipped with a warning
        "no-name": lambda w, s: edit(w, s, "<name>", "<label>"),
        "malformed": lambda w, s: (w / "Annotations" / f"{s}.xml").write_text("<annotation><object>"),
        "missing-xml": lambda w, s: (w / "Annotations" / f"{s}.xml").unlink(),
        "unknown-id": lambda w, s: (w / "ImageSets" / "Main" / "val.txt").write_text(f"{s}\nnot_there\n"),
        "missing-jpeg": lambda w, s: (w / "JPEGImages" / f"{s}.jpg").unlink(),
        "size-string": lambda w, s: edit(w, s, "<width>", "<width>wide"),
    }
    cases = []
    for key, breakage in breakages.items():
        where, ids = build(folder / f"voc-{key}")
        breakage(where, ids[0])
        argv = [
            "eval",
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(where),
            "--val-split",
            "val",
            "--output",
            str(folder / "o"),
        ]
        cases.append(Case(f"voc {key}", "detect", argv, ""))
    return cases


def _mask_cases(root: Path, checkpoints: dict[str, Path], folder: Path) -> list[Case]:
    first = sorted((root / "masks" / "val").glob("*.png"))[0]
    variants = {
        "other-size": lambda p: Image.new("L", (20, 30)).save(p),
        "rgb": lambda p: Image.new("RGB", (64, 64), (1, 2, 3)).save(p),
        "out-of-range": lambda p: Image.fromarray(np.full((64, 64), 77, np.uint8)).save(p),
        "missing": lambda p: p.unlink(),
        "not-an-image": lambda p: p.write_bytes(b"mask?"),
        "sixteen-bit-large": lambda p: Image.fromarray(np.full((64, 64), 3000, np.uint16)).save(p),
    }
    cases = []
    for key, breakage in variants.items():
        data = _copy(root, folder / f"mask-{key}")
        breakage(data / "masks" / "val" / first.name)
        for task in ("segment", "multitask"):
            argv = ["eval", "--checkpoint", str(checkpoints[task]), "--data", str(data), "--output", str(folder / "o")]
            cases.append(Case(f"mask {key}", task, argv, ""))
    return cases


# An OpenVINO graph whose one constant reads 16 bytes of a .bin that is not there.
IR_WITHOUT_WEIGHTS = """<?xml version="1.0"?>
<net name="m" version="11">
  <layers>
    <layer id="0" name="w" type="Const" version="opset1">
      <data element_type="f32" shape="4" offset="0" size="16"/>
      <output><port id="0" precision="FP32"><dim>4</dim></port></output>
    </layer>
    <layer id="1" name="out" type="Result" version="opset1">
      <input><port id="0" precision="FP32"><dim>4</dim></port></input>
    </layer>
  </layers>
  <edges><edge from-layer="0" from-port="0" to-layer="1" to-port="0"/></edges>
</net>
"""


def _exported_cases(root: Path, folder: Path) -> list[Case]:
    """Exported models that predict cannot serve: garbage and empty files in each format, and an OpenVINO graph
    without its .bin (without the OpenVINO extra, the .xml cases end in the line that names the extra)."""
    good = root / "val" / sorted(p.name for p in (root / "val").glob("*.png"))[0]
    files = {
        "garbage.onnx": b"not a graph",
        "empty.onnx": b"",
        "garbage.torchscript.pt": b"PK\x03\x04 not a zip archive",
        "garbage.xml": b"<net",
        "no-weights.xml": IR_WITHOUT_WEIGHTS.encode(),
    }
    cases = []
    for name, content in files.items():
        path = folder / "exported" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        for task in RUNNERS:
            argv = ["predict", str(good), "--checkpoint", str(path), "--output", str(folder / f"{task}-exported")]
            cases.append(Case(f"exported {name}", task, argv, name))
    return cases


def _prediction_file_cases(root: Path, folder: Path) -> list[Case]:
    variants = {
        "not-json": "[{",
        "a-dict": '{"image_id": 1}',
        "missing-keys": '[{"image_id": 1, "bbox": [1, 2, 3, 4]}]',
        "bbox-strings": '[{"image_id": 1, "category_id": 1, "bbox": ["a", 2, 3, 4], "score": 0.5}]',
        "unknown-image": '[{"image_id": 99999, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]',
        "score-string": '[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": "high"}]',
    }
    cases = []
    for key, text in variants.items():
        path = folder / f"predictions-{key}.json"
        path.write_text(text)
        argv = ["eval", "--predictions", str(path), "--data", str(root), "--output", str(folder / "o")]
        cases.append(Case(f"predictions {key}", "detect", argv, path.name))
    return cases


def test_the_bad_input_corpus_ends_in_one_line_errors_or_handled_runs_never_a_traceback(
    world, tmp_path, capsys
) -> None:
    root, checkpoints = world
    corpus = [
        *_yaml_cases(root, tmp_path),
        *_checkpoint_cases(root, checkpoints, tmp_path),
        *_image_cases(root, checkpoints, tmp_path),
        *_coco_cases(root, checkpoints, tmp_path),
        *_voc_cases(root, checkpoints["detect"], tmp_path),
        *_mask_cases(root, checkpoints, tmp_path),
        *_prediction_file_cases(root, tmp_path),
        *_exported_cases(root, tmp_path),
    ]
    assert len(corpus) >= 100 and {c.task for c in corpus} == set(RUNNERS)
    outcomes: Counter[str] = Counter()
    problems = []
    for case in corpus:
        capsys.readouterr()
        try:
            code = RUNNERS[case.task]([*case.argv, *SIZES[case.task]] if case.argv[0] != "predict" else case.argv)
        except BaseException as error:  # noqa: BLE001 - a traceback is exactly what is counted
            outcomes["traceback"] += 1
            problems.append(f"{case.task} {case.name}: {type(error).__name__}: {str(error)[:200]}")
            continue
        err = capsys.readouterr().err.strip()
        if code == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err:
            outcomes["one-line error"] += 1
            if case.needle and case.needle not in err:
                problems.append(f"{case.task} {case.name}: the error does not name {case.needle}: {err}")
        elif code == 0 and "Traceback" not in err:
            outcomes["warning, run went on" if "warning:" in err else "handled, run went on"] += 1
        else:
            outcomes["other"] += 1
            problems.append(f"{case.task} {case.name}: exit {code}, stderr {err[:300]!r}")
    print(f"bad-input corpus: {len(corpus)} cases over {len(RUNNERS)} runners: {dict(outcomes)}")
    assert outcomes["traceback"] == 0 and not problems, "\n".join(problems)
