"""Image classification: ``python -m tasks.classify [train|eval|predict] ...``.

With no ``--data`` it trains on the built-in handwritten digits (scikit-learn's, written
once as an ImageFolder) with the packaged recipe ``configs/classify/digits.yaml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from backbones import Backbone, TimmBackbone, build_backbone
from backbones.inference import fast_inference
from heads.classification import ClassificationHead, Pool
from tasks import distributed, recipes
from tasks.checkpoint import load_model
from tasks.cli import (
    COMMON_FLAGS,
    PredictImages,
    check_backbone_name,
    command_flags,
    common_parser,
    export_format,
    fit,
    new_run_dir,
    require_checkpoint,
    resolve_config,
    resume_from,
    resumed_recipe,
    run,
    write_config,
)
from tasks.config import Auto, TrainConfig, to_dict
from tasks.data.embedded import digits_imagefolder
from tasks.data.folders import ClassificationDataset, Sample, collate_classification, load_split, path_label_rows
from tasks.data.holdout import DEFAULT_FRACTION, fraction_for_eval
from tasks.data.images import READ_ERRORS, load_rgb
from tasks.data.transforms import classification_eval, classification_train
from tasks.engine import (
    Setup,
    build_optimizer,
    evaluate_split,
    make_loader,
    resolve_device,
    seed_everything,
    start_processes,
)
from tasks.errors import UserError, name_list
from tasks.explain import add_cam_options, cam_class_index, grad_cam, input_view, wants_cam
from tasks.export import (
    Exported,
    ExportSpec,
    calibration_inputs,
    default_target,
    export_and_check,
    quantize_and_report,
    serving_model,
)
from tasks.io import atomic_write, read_text, write_json
from tasks.metrics.classification import ClassificationMeter, metrics_from_confusion
from tasks.visualize import confusion_png, image_grid_png, overlay_cam, save_png

TASK = "classify"
MISTAKES = 16  # the most confident mistakes drawn in mistakes.png


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    weights: str | None = None
    pool: Literal["avg", "max", "avgmax"] = "avg"
    dropout: float = 0.0
    freeze_backbone: bool = False
    frozen_stages: int = -1
    norm: Literal["bn", "frozen_bn", "sync_bn", "gn"] = "bn"
    zero_init_residual: bool | Auto = "auto"  # from scratch: true (tasks/recipes.py); torchvision: false
    drop_path_rate: float = 0.0
    label_smoothing: float = 0.0


@dataclass
class DataConfig:
    root: str | None = None
    format: Literal["auto", "folder", "csv"] = "auto"
    train_split: str = "train"
    val_split: str = "val"
    val_fraction: float = DEFAULT_FRACTION  # held out for validation where the data has no val split
    classes: list[str] | None = None
    image_size: int | Auto = "auto"
    crop_pct: float | Auto = "auto"
    scale_min: float | Auto = "auto"
    hflip: float = 0.5  # 0 for data where mirroring changes the label (digits, text)
    color_jitter: float | Auto = "auto"


@dataclass
class ClassifyConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size="auto"))
    output: str | None = None


class ClassificationModel(nn.Module):
    """A backbone and a classification head: images (N, 3, H, W) to logits (N, C)."""

    def __init__(self, backbone: Backbone, head: ClassificationHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        features = self.backbone(images)
        return self.head(features)


def build_model(
    backbone: str,
    num_classes: int,
    *,
    weights: str | None = None,
    pool: Pool = "avg",
    dropout: float = 0.0,
    freeze_backbone: bool = False,
    **backbone_options: Any,
) -> ClassificationModel:
    """A classifier on any registered backbone; ``backbone_options`` go to :func:`build_backbone`.

    ``freeze_backbone=True`` trains the head alone (a linear probe): the backbone gets
    ``requires_grad=False`` and stays in eval mode.
    """
    chosen = "out_levels" in backbone_options
    if not backbone.startswith("timm:"):
        backbone_options.setdefault("out_levels", ("c5",))
    net = build_backbone(backbone, weights=weights, **backbone_options)
    if isinstance(net, TimmBackbone) and not chosen:  # a ViT's own map, not its pyramid's pooled or upsampled ones
        net.keep_levels(net.own_level)
    if freeze_backbone:
        net.freeze([net])
    head = ClassificationHead(net.feature_info, num_classes, pool=pool, dropout=dropout)
    return ClassificationModel(net, head)


class ClassifyTask:
    """The engine's view of classification: cross-entropy in training, the meter in evaluation."""

    name = TASK
    main_metric = "accuracy"

    def __init__(self, class_names: Sequence[str], *, label_smoothing: float = 0.0) -> None:
        self.class_names = list(class_names)
        self.label_smoothing = label_smoothing
        self.mistakes: list[dict[str, Any]] = []  # the last evaluation's most confident mistakes, most first

    def to_device(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        return {
            **batch,
            "images": batch["images"].to(device, non_blocking=True),
            "labels": batch["labels"].to(device, non_blocking=True),
        }

    def losses(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        logits = model(batch["images"])
        return {"loss": F.cross_entropy(logits.float(), batch["labels"], label_smoothing=self.label_smoothing)}

    def evaluate(self, model: nn.Module, loader: Iterable[dict[str, Any]], device: torch.device) -> dict[str, Any]:
        meter = ClassificationMeter(len(self.class_names))
        mistakes = Mistakes()
        for batch in loader:
            if batch["batch_size"] == 0:
                continue
            batch = self.to_device(batch, device)
            logits = model(batch["images"])
            meter.update(logits, batch["labels"])
            mistakes.update(logits, batch["labels"], batch["indices"])
        self.mistakes = mistakes.gather(self.class_names)
        return meter.compute(self.class_names)


class Mistakes:
    """The split's most confident mistakes over batches and processes, for mistakes.png."""

    def __init__(self, keep: int = MISTAKES) -> None:
        self.keep = keep
        self.found: list[tuple[float, int, int, int]] = []  # (confidence, sample index, true, predicted)

    def update(self, logits: Tensor, labels: Tensor, indices: Tensor) -> None:
        """``indices``: each row's index into the split's samples."""
        confidence, predicted = logits.detach().float().softmax(dim=1).max(dim=1)
        labels = labels.cpu()
        wrong = predicted.cpu() != labels
        self.found += zip(
            confidence.cpu()[wrong].tolist(),
            torch.as_tensor(indices)[wrong].tolist(),
            labels[wrong].tolist(),
            predicted.cpu()[wrong].tolist(),
        )
        self.found = sorted(self.found, reverse=True)[: self.keep]

    def gather(self, class_names: Sequence[str]) -> list[dict[str, Any]]:
        """Every process's mistakes, most confident first, by class name."""
        gathered = sorted((m for part in distributed.gather(self.found) for m in part), reverse=True)[: self.keep]
        return [
            {"index": i, "true": class_names[t], "predicted": class_names[p], "confidence": c}
            for c, i, t, p in gathered
        ]


def _model_args(cfg: ClassifyConfig, num_classes: int) -> dict[str, Any]:
    m = cfg.model
    args: dict[str, Any] = dict(
        backbone=m.backbone,
        num_classes=num_classes,
        pool=m.pool,
        dropout=m.dropout,
        freeze_backbone=m.freeze_backbone,
        norm=m.norm,
        drop_path_rate=m.drop_path_rate,
    )
    if m.frozen_stages >= 0:
        args["frozen_stages"] = m.frozen_stages
    return args


def _data_root(cfg: ClassifyConfig) -> Path:
    if cfg.data.root is not None:
        return Path(cfg.data.root)
    root = digits_imagefolder()
    if distributed.is_main():
        print(f"no --data given: using the built-in handwritten digits at {root}")
    return root


def _dataset(cfg: ClassifyConfig, samples: list[Sample], *, train: bool) -> ClassificationDataset:
    d = cfg.data
    if train:
        transform = classification_train(
            d.image_size, scale_min=d.scale_min, hflip=d.hflip, color_jitter=d.color_jitter, seed=cfg.train.seed
        )
    else:
        transform = classification_eval(d.image_size, crop_pct=d.crop_pct)
    return ClassificationDataset(samples, transform)


def _loader(cfg: ClassifyConfig, dataset: ClassificationDataset, *, train: bool) -> Any:
    return make_loader(
        dataset,
        batch_size=recipes.batch_or_standard(cfg, TASK),
        train=train,
        workers=cfg.train.workers,
        collate_fn=collate_classification,
        seed=cfg.train.seed,
    )


def write_figures(
    metrics: dict[str, Any],
    class_names: Sequence[str],
    run_dir: Path,
    *,
    samples: Sequence[Any] = (),
    mistakes: Sequence[dict[str, Any]] = (),
) -> None:
    """The confusion matrix as counts and as each true class's shares, and the most confident mistakes of
    the split as an image grid (``samples``: the split's samples, each with a ``path``)."""
    confusion = metrics["confusion_matrix"]
    for name, normalize, title in (
        ("confusion_matrix.png", False, "confusion matrix (counts)"),
        ("confusion_matrix_normalized.png", True, "confusion matrix (share of each true class)"),
    ):
        png = confusion_png(confusion, class_names, normalize=normalize, title=title)
        atomic_write(run_dir / name, lambda handle, data=png: handle.write(data))
    pictures, titles = [], []
    for mistake in mistakes:
        try:
            pictures.append(load_rgb(samples[mistake["index"]].path))
        except (*READ_ERRORS, IndexError):
            continue
        titles.append(f"{mistake['true']} → {mistake['predicted']} {mistake['confidence']:.2f}")
    if pictures:
        png = image_grid_png(pictures, titles)
        atomic_write(run_dir / "mistakes.png", lambda handle: handle.write(png))


def _report(
    metrics: dict[str, Any],
    class_names: list[str],
    run_dir: Path,
    *,
    samples: Sequence[Sample] = (),
    mistakes: Sequence[dict[str, Any]] = (),
    written: str = "metrics, checkpoints, confusion matrices and mistakes.png",
) -> None:
    """The summary and the figures (see :func:`write_figures`)."""
    write_figures(metrics, class_names, run_dir, samples=samples, mistakes=mistakes)
    keys = ["accuracy", "top5", "precision_macro", "recall_macro", "f1_macro", "f1_weighted"]
    print("\n".join(f"  {key:<16} {metrics[key]:.4f}" for key in keys if key in metrics))
    print(f"{written} are in {run_dir}")


def setup(cfg: ClassifyConfig, *, resumed: frozenset[str] = frozenset()) -> Setup:
    """The model, task and loaders of a training run under ``cfg``, its auto fields resolved from the data."""
    check_backbone_name(cfg.model.backbone)
    seed_everything(cfg.train.seed)
    root = _data_root(cfg)
    d = cfg.data
    train_samples, class_names = load_split(
        root, d.train_split, fmt=d.format, classes=d.classes, val_fraction=d.val_fraction
    )
    val_samples, _ = load_split(root, d.val_split, fmt=d.format, classes=class_names, val_fraction=d.val_fraction)
    facts = recipes.run_facts(
        TASK,
        cfg,
        device=resolve_device(cfg.train.device).type,
        train_images=len(train_samples),
        val_images=len(val_samples),
        num_classes=len(class_names),
        image_sizes=recipes.sample_sizes([s.path for s in train_samples]),
    )
    given = cfg
    cfg, recipe = recipes.resolve_static(cfg, facts, resumed=resumed)
    model_args = _model_args(cfg, len(class_names))
    model = build_model(weights=cfg.model.weights, **model_args, **recipes.init_options(cfg))
    task = ClassifyTask(class_names, label_smoothing=cfg.model.label_smoothing)

    def step_seconds(images: int | None = None, optimizer: Any = None) -> float:
        # on evaluation-transformed images of the training size
        probe = _dataset(cfg, train_samples[: images or cfg.train.batch_size], train=False)
        device = resolve_device(cfg.train.device)
        return recipes.measure_batch(
            task, model, probe, collate_classification, cfg.train, device, images=images, optimizer=optimizer
        )

    spent = 0.0
    if recipes.weighs_batch(given, facts):  # a small set: is the step rule's halving worth its cost?
        began = time.perf_counter()
        cost = recipes.StepCost.measure(lambda n: step_seconds(n, lambda m: build_optimizer(m, cfg.train)))
        facts = dataclasses.replace(facts, batch_size=recipes.weigh_batch(facts, cost), step_cost=cost)
        cfg, recipe = recipes.resolve_static(given, facts, resumed=resumed)  # the rate follows the batch
        spent = time.perf_counter() - began
    cfg = recipes.resolve_length(cfg, recipe, facts, seconds_per_step=step_seconds, spent=spent)
    meta = dict(
        task=TASK,
        model_args=model_args,
        class_names=class_names,
        image_size=cfg.data.image_size,
        crop_pct=cfg.data.crop_pct,
        config=to_dict(cfg),
    )
    return Setup(
        model=model,
        task=task,
        train_loader=_loader(cfg, _dataset(cfg, train_samples, train=True), train=True),
        val_loader=_loader(cfg, _dataset(cfg, val_samples, train=False), train=False),
        val_data=val_samples,
        input_size=(cfg.data.image_size, cfg.data.image_size),  # type: ignore[arg-type]
        meta=meta,
        summary=f"{cfg.model.backbone}: {len(class_names)} classes, {len(train_samples)} train / "
        f"{len(val_samples)} val images, {cfg.train.epochs} epochs",
        config=cfg,
        recipe=recipe,
    )


def train(cfg: ClassifyConfig, args: argparse.Namespace) -> int:
    resume = resume_from(args.resume, cfg.output)
    cfg, resumed = resumed_recipe(cfg, resume, TASK)
    parts = setup(cfg, resumed=resumed)
    metrics, run_dir = fit(TASK, cfg, parts, resume)
    if distributed.is_main():
        task: ClassifyTask = parts.task  # type: ignore[assignment]
        _report(metrics, parts.meta["class_names"], run_dir, samples=parts.val_data, mistakes=task.mistakes)
    return 0


def _load_model(path: Path, *, fast: bool = True) -> tuple[ClassificationModel, dict[str, Any]]:
    """The checkpoint's model; ``fast``: its backbone through :func:`fast_inference` (eval and predict), else
    eager (exporters trace it, Grad-CAM hooks it)."""
    model, checkpoint = load_model(path, task=TASK, build=lambda args: build_model(**args))
    if fast:
        model.backbone = fast_inference(model.backbone)
    return model, checkpoint


def read_predictions(path: Path) -> list[tuple[int, Path, list[str]]]:
    """(line or entry number, image, classes best first) of a predictions file: ``predict``'s predictions.json
    (each entry's ``path`` and ``top5``), or a ``path,label`` CSV as the label files are (an optional header; one
    class a row). A relative image path is the CSV's own folder's, as in a label file; in a JSON it is as given to
    ``predict``: the current folder's, else the file's folder's."""
    if not path.is_file():
        raise UserError(f"--predictions {path} does not exist")
    rows: list[tuple[int, Path, list[str]]] = []
    if path.suffix.lower() == ".json":
        try:
            entries = json.loads(read_text(path, kind="predictions file"))
        except json.JSONDecodeError as error:
            raise UserError(f"predictions file {path} is not valid JSON: {error}") from None
        expected = (
            f"predictions file {path} must be a list of {{path, top5: [{{class, probability}}]}}, as predict writes"
        )
        if not isinstance(entries, list):
            raise UserError(expected)
        for number, entry in enumerate(entries, start=1):
            ranked = entry.get("top5") if isinstance(entry, dict) else None
            if not (isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(ranked, list)):
                raise UserError(f"{expected}; entry {number} is not")
            if not ranked or not all(isinstance(r, dict) and isinstance(r.get("class"), str) for r in ranked):
                raise UserError(f"predictions file {path}, entry {number}: top5 holds no {{class, probability}}")
            image = Path(entry["path"])
            if not image.is_absolute() and not image.exists():
                image = path.parent / image
            rows.append((number, image, [r["class"] for r in ranked]))
    else:
        for number, image, label in path_label_rows(path, kind="predictions file"):
            rows.append((number, path.parent / image, [label]))
    if not rows:
        raise UserError(f"predictions file {path} predicts no images")
    return rows


def score_predictions(
    path: Path, samples: Sequence[Sample], class_names: Sequence[str]
) -> tuple[dict[str, Any], list[str]]:
    """The metrics of the predictions file at ``path`` (:func:`read_predictions`) against ``samples``, and the class
    names they are over: the split's, then any class predicted that the split lacks (its recall has no images, its
    precision is 0). Predictions of images outside the split are left out, with a note; a split image with no
    prediction, or with two, is one line naming it. top-5 is scored where the file ranks classes (predict's JSON)
    and there are more than 5 classes, as with a model."""
    index = {sample.path.resolve(): i for i, sample in enumerate(samples)}
    ranked: dict[int, list[str]] = {}
    others = 0
    for number, image, classes in read_predictions(path):
        i = index.get(image.resolve())
        if i is None:
            others += 1
        elif i in ranked:
            raise UserError(f"predictions file {path}: image {samples[i].path} is predicted twice (again at {number})")
        else:
            ranked[i] = classes
    missing = [sample.path for i, sample in enumerate(samples) if i not in ranked]
    if missing:
        raise UserError(
            f"predictions file {path} predicts {len(samples) - len(missing)} of the split's {len(samples)} image(s); "
            f"none for {missing[0]} and {len(missing) - 1} other(s)"
        )
    if others:
        print(f"note: {others} prediction(s) in {path} are of images outside the split: left out")
    names = list(class_names)
    for classes in ranked.values():
        names += [name for name in classes[:1] if name not in names]
    position = {name: k for k, name in enumerate(names)}
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    hits = 0
    for i, classes in ranked.items():
        truth = samples[i].label
        confusion[truth, position[classes[0]]] += 1
        hits += class_names[truth] in classes[:5]
    ranks = path.suffix.lower() == ".json"
    return metrics_from_confusion(confusion, names, top5_hits=hits if ranks and len(names) > 5 else None), names


def evaluate(cfg: ClassifyConfig, args: argparse.Namespace) -> int:
    if args.predictions is not None:
        samples, class_names = load_split(
            _data_root(cfg), cfg.data.val_split, fmt=cfg.data.format, classes=cfg.data.classes,
            val_fraction=cfg.data.val_fraction,
        )  # fmt: skip
        metrics, names = score_predictions(Path(args.predictions), samples, class_names)
        if distributed.is_main():
            run_dir = new_run_dir(cfg.output, TASK, "eval")
            write_config(run_dir, cfg)
            write_json(run_dir / "metrics.json", metrics)
            _report(metrics, names, run_dir, samples=samples, written="metrics and confusion matrices")
        return 0
    path = require_checkpoint(args)
    model, checkpoint = _load_model(path)
    class_names = list(checkpoint["class_names"])
    root = _data_root(cfg)
    # As training reads its val split: labelled in the model's class order; a class the split lacks is scored
    # as absent (see the metrics section), a class the model does not know is a one-line error.
    try:
        fraction = fraction_for_eval(cfg.data.val_fraction, checkpoint)
        samples, _ = load_split(
            root, cfg.data.val_split, fmt=cfg.data.format, classes=class_names, val_fraction=fraction
        )
    except UserError as error:
        raise UserError(
            f"{error}; checkpoint {path} knows {len(class_names)} classes: {name_list(class_names)}"
        ) from None
    cfg.data.image_size, cfg.data.crop_pct = checkpoint["image_size"], checkpoint["crop_pct"]
    run_dir = new_run_dir(cfg.output, TASK, "eval")
    write_config(run_dir, cfg)
    device = resolve_device(cfg.train.device)
    model.to(device)
    task = ClassifyTask(class_names)
    metrics, skipped = evaluate_split(
        task, model, _loader(cfg, _dataset(cfg, samples, train=False), train=False), device
    )
    if distributed.is_main():
        if skipped is not None:
            print(skipped)
        write_json(run_dir / "metrics.json", metrics)
        _report(metrics, class_names, run_dir, samples=samples, mistakes=task.mistakes)
    return 0


def predict(cfg: ClassifyConfig, args: argparse.Namespace) -> int:
    path = require_checkpoint(args)
    images = PredictImages(args.inputs, "photo.jpg photos/")
    explain = wants_cam(args, path)
    eager: ClassificationModel | None = None
    if explain:  # Grad-CAM hooks the eager model's layers
        loaded, meta = _load_model(path, fast=False)
        eager = loaded
        model: Any = lambda x: (loaded(x),)  # noqa: E731
    else:
        model, meta = serving_model(path, _load_model)  # a checkpoint, or an exported file alone
    class_names = list(meta["class_names"])
    target = cam_class_index(args, path, class_names)
    transform = classification_eval(meta["image_size"], crop_pct=meta["crop_pct"])
    run_dir = new_run_dir(cfg.output, TASK, "predict")
    results = []
    for image_path, image in images:
        inputs = transform(image)[None]
        with torch.inference_mode():
            probs = model(inputs)[0].softmax(dim=1)[0]  # (C,)
        top = probs.topk(min(5, len(class_names)))
        ranked = [{"class": class_names[i], "probability": float(p)} for p, i in zip(top.values, top.indices)]
        entry: dict[str, Any] = {"path": str(image_path), "top5": ranked}
        if eager is not None:  # over the centre crop the model saw
            index = int(top.indices[0]) if target is None else target
            heat = grad_cam(eager.backbone, eager.head, inputs, [index])[0]
            picture = f"cam/{images.output_name(image_path)}.png"
            save_png(overlay_cam(input_view(inputs[0]), heat), run_dir / picture)
            entry["cam"] = {"class": class_names[index], "image": picture}
        results.append(entry)
        print(f"{image_path}: " + ", ".join(f"{r['class']} ({r['probability']:.3f})" for r in ranked))
    write_json(run_dir / "predictions.json", results)
    cams = " and Grad-CAM heat maps" if explain else ""
    print(
        f"{len(results)} image(s) predicted{f', {images.skipped} skipped' if images.skipped else ''}; "
        f"wrote {run_dir / 'predictions.json'}{cams}"
    )
    return 0


def export_spec(model: nn.Module, image_size: int) -> ExportSpec:
    """Normalised images (N, 3, H, W) in, logits (N, C) out; batch, height and width dynamic."""
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, image_size, image_size, generator=generator)
    other = torch.randn(1, 3, image_size + 32, image_size + 16, generator=generator)
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}}
    return ExportSpec(model.eval(), (example,), ["images"], ["logits"], axes, [(other,)])


def export(cfg: ClassifyConfig, args: argparse.Namespace) -> int:
    path = require_checkpoint(args)
    model, checkpoint = _load_model(path, fast=False)  # eager: exporters trace it
    fmt = export_format(args)
    metadata = dict(
        task=TASK,
        class_names=list(checkpoint["class_names"]),
        image_size=checkpoint["image_size"],
        crop_pct=checkpoint["crop_pct"],
    )
    spec = export_spec(model, int(checkpoint["image_size"]))
    target = default_target(path, fmt, args.output)
    print(export_and_check(spec, fmt, target, metadata))
    if args.quantize:
        class_names = list(checkpoint["class_names"])
        cfg.data.image_size, cfg.data.crop_pct = checkpoint["image_size"], checkpoint["crop_pct"]
        root = _data_root(cfg)
        d, fraction = cfg.data, fraction_for_eval(cfg.data.val_fraction, checkpoint)
        train_samples, _ = load_split(root, d.train_split, fmt=d.format, classes=class_names, val_fraction=fraction)
        val_samples, _ = load_split(root, d.val_split, fmt=d.format, classes=class_names, val_fraction=fraction)
        calibration = calibration_inputs(
            _dataset(cfg, train_samples, train=False), args.calibration_images, lambda item: item["image"][None]
        )
        loader = _loader(cfg, _dataset(cfg, val_samples, train=False), train=False)

        def accuracy(exported: Exported) -> float:
            def run(x: Tensor) -> Tensor:
                return exported.tensors(x)[0]

            return ClassifyTask(class_names).evaluate(run, loader, torch.device("cpu"))["accuracy"]  # type: ignore[arg-type]

        print(quantize_and_report(target, calibration, accuracy, "accuracy", spec))
    return 0


FLAGS = {**COMMON_FLAGS, "freeze_backbone": "model.freeze_backbone", "backbone_lr_scale": "train.backbone_lr_scale"}


def _main(argv: Sequence[str] | None) -> int:
    parser = common_parser(TASK, "Train, evaluate and predict image classifiers.")
    parser.add_argument("--freeze-backbone", action="store_true", default=None, help="train the head only")
    parser.add_argument("--backbone-lr-scale", type=float, help="backbone learning rate = lr × this")
    parser.add_argument(
        "--predictions",
        help="eval: score this predictions file (predict's predictions.json, or a path,label CSV), with no model",
    )
    add_cam_options(parser, by_class=True)
    args = parser.parse_args(argv)
    cfg = resolve_config(ClassifyConfig(), args, command_flags(args, FLAGS), embedded="classify/digits")
    if args.command in ("train", "eval"):
        start_processes(cfg.train)  # joins torchrun's process group, if any
    commands = {"train": train, "eval": evaluate, "predict": predict, "export": export}
    return commands[args.command](cfg, args)


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
