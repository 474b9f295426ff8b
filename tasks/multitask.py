"""Classification, detection and segmentation from one backbone pass:
``python -m tasks.multitask [train|eval|predict] --tasks classify,detect,segment ...``.

Each image may carry labels for only some tasks (see :mod:`tasks.data.multitask`); a task's
loss is computed on the images that have its labels. metrics.json has one section per task
with the single-task runner's metrics, plus ``main``, the mean of each task's headline
number (accuracy, COCO AP, mIoU), which picks best.pt. With no ``--data`` it trains on the
built-in shapes dataset, which carries all three kinds of labels.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from backbones import TimmBackbone, build_backbone
from heads.classification import ClassificationHead
from heads.detection import DETECTION_LEVELS, FasterRCNNHead
from heads.multitask import TASKS, MultiTaskModel, Weighting
from heads.segmentation import DEFAULT_DECODER_CHANNELS, SegmentationLoss, UNetHead
from tasks import distributed, recipes
from tasks.checkpoint import load_model
from tasks.classify import Mistakes
from tasks.classify import write_figures as classification_figures
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
from tasks.data.embedded import shapes_dataset
from tasks.data.multitask import (
    MultiTaskData,
    MultiTaskDataset,
    MultiTaskPipeline,
    collate_multitask,
    load_multitask,
    load_multitask_splits,
    parse_sources,
)
from tasks.detect import DetectionHeadConfig
from tasks.detect import write_figures as detection_figures
from tasks.engine import Setup, evaluate_split, make_loader, resolve_device, seed_everything, start_processes
from tasks.errors import UserError
from tasks.explain import add_cam_options, cam_class_index, grad_cam, wants_cam
from tasks.export import (
    Exported,
    ExportSpec,
    calibration_inputs,
    default_target,
    export_and_check,
    quantize_and_report,
    serving_model,
)
from tasks.io import write_json
from tasks.metrics.classification import ClassificationMeter
from tasks.metrics.coco import Backend
from tasks.metrics.detection import score, to_results
from tasks.metrics.lanes import lane_meter
from tasks.metrics.segmentation import SegmentationMeter
from tasks.segment import lane_line
from tasks.segment import write_figures as segmentation_figures
from tasks.visualize import draw_detections, overlay_cam, overlay_mask, palette_mask, save_png

TASK = "multitask"
MAIN_METRICS = {"classify": "accuracy", "detect": "coco.AP", "segment": "mIoU"}


def build_model(
    backbone: str,
    tasks: Sequence[str],
    num_classes_per_task: dict[str, int],
    *,
    weights: str | None = None,
    detection_options: dict[str, Any] | None = None,
    decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
    attention: Literal["scse"] | None = None,
    loss_weights: dict[str, float] | None = None,
    weighting: Weighting = "fixed",
    dice_weight: float = 0.0,
    label_smoothing: float = 0.0,
    **backbone_options: Any,
) -> MultiTaskModel:
    """One backbone with the heads of ``tasks``; ``num_classes_per_task`` as each single-task
    ``build_model`` counts them (detection includes the background).

    The backbone returns the levels that the chosen heads read, and nothing more.
    """
    unknown = [name for name in tasks if name not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"tasks {unknown or list(tasks)} are invalid: choose from {', '.join(TASKS)}")
    missing = [name for name in tasks if name not in num_classes_per_task]
    if missing:
        raise ValueError(f"num_classes_per_task has no entry for {missing}")
    levels = {"classify": ("c5",), "detect": DETECTION_LEVELS, "segment": ("c1", "c2", "c3", "c4", "c5")}
    wanted = sorted({level for name in tasks for level in levels[name]})
    chosen = "out_levels" in backbone_options
    if not backbone.startswith("timm:"):
        backbone_options.setdefault("out_levels", tuple(wanted))
    net = build_backbone(backbone, weights=weights, **backbone_options)
    heads: dict[str, nn.Module] = {}
    if "classify" in tasks:
        level = None  # the deepest: c5
        if isinstance(net, TimmBackbone) and not chosen:  # a ViT's own map (c4), as classify's model reads it
            level = net.own_level
            if set(tasks) == {"classify"}:
                net.keep_levels(level)
        heads["classify"] = ClassificationHead(net.feature_info, num_classes_per_task["classify"], level=level)
    if "detect" in tasks:
        heads["detect"] = FasterRCNNHead(net.feature_info, num_classes_per_task["detect"], **(detection_options or {}))
    if "segment" in tasks:
        heads["segment"] = UNetHead(
            net.feature_info, num_classes_per_task["segment"], decoder_channels=decoder_channels, attention=attention
        )
    return MultiTaskModel(
        net,
        heads,
        loss_weights=loss_weights,
        weighting=weighting,
        segmentation_loss=SegmentationLoss(dice_weight=dice_weight),
        label_smoothing=label_smoothing,
    )


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    weights: str | None = None
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    frozen_stages: int = -1
    norm: Literal["bn", "frozen_bn", "sync_bn", "gn"] = "bn"
    zero_init_residual: bool | Auto = "auto"  # from scratch: true (tasks/recipes.py); torchvision: false
    # learned (Kendall et al.): on the learning benchmark's three sets it beat fixed weights in 4 of 9, tied 2,
    # lost 3 (set, task) pairs at equal time, and is ahead on the mean (docs/benchmarks.md, docs/results.md)
    weighting: Literal["fixed", "uncertainty"] = "uncertainty"
    classify_weight: float = 1.0  # the fixed weights (weighting: fixed)
    detect_weight: float = 1.0
    segment_weight: float = 1.0
    dice_weight: float = 1.0  # CE + Dice, as the segmentation runner: cross-entropy alone settles on background
    label_smoothing: float = 0.0
    decoder_channels: list[int] = field(default_factory=lambda: list(DEFAULT_DECODER_CHANNELS))
    attention: Literal["scse"] | None = None
    detection: DetectionHeadConfig = field(default_factory=DetectionHeadConfig)


@dataclass
class DataConfig:
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    image_size: int | Auto = "auto"
    hflip: float = 0.5
    scale_jitter: float | Auto = "auto"
    color_jitter: float | Auto = "auto"


@dataclass
class MultiTaskConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=8))
    output: str | None = None
    coco_backend: Literal["faster-coco-eval", "pycocotools"] = "faster-coco-eval"
    # predict lists and draws detections from this score, and the pictures of train and eval runs draw from it;
    # the metrics score every detection the model keeps (model.box_score_thresh, COCO's protocol)
    show_score_thresh: float = 0.3


class MultiTaskTask:
    """The engine's view: the model's weighted total in training; every task's metrics in evaluation."""

    name = TASK
    main_metric = "main"
    # each task's headline in results.png, before the classification section's many columns fill its lines
    headline_metrics = ("classify.accuracy", "detect.coco.AP", "segment.mIoU", "detect.coco.AP50", "segment.mDice")
    find_unused_parameters = True  # a head whose task has no labels in a batch gets no gradient

    def __init__(self, data: MultiTaskData, *, backend: Backend) -> None:
        self.data = data
        self.backend = backend
        self.detections: list[dict[str, Any]] = []  # the last evaluation's, as predictions.json has them
        self.mistakes: list[dict[str, Any]] = []  # the last evaluation's most confident classification mistakes

    def to_device(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        targets = {}
        for name, (indices, labels) in batch["targets"].items():
            if name == "detect":
                labels = [{k: v.to(device) for k, v in t.items()} for t in labels]
            else:
                labels = labels.to(device, non_blocking=True)
            targets[name] = (indices.to(device), labels)
        return {**batch, "images": batch["images"].to(device, non_blocking=True), "targets": targets}

    def losses(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        return model(batch["images"], batch["sizes"], batch["targets"])

    def evaluate(self, model: nn.Module, loader: Iterable[dict[str, Any]], device: torch.device) -> dict[str, Any]:
        names = self.data.class_names
        tasks = [name for name in TASKS if name in self.data.tasks]
        classify = ClassificationMeter(len(names["classify"])) if "classify" in tasks else None
        segment = SegmentationMeter(len(names["segment"])) if "segment" in tasks else None
        lanes = lane_meter(names["segment"], ignore_index=segment.ignore_index) if segment is not None else None
        mistakes = Mistakes()
        results: list[dict[str, Any]] = []
        read: list[int | str] = []  # the detection images scored: those that could be read
        for batch in loader:
            if batch["batch_size"] == 0:
                continue
            images = batch["images"].to(device, non_blocking=True)
            outputs = model(images, batch["sizes"])
            if classify is not None:
                indices, labels = batch["targets"]["classify"]
                if len(indices):
                    logits = outputs["classify"][indices.to(device)]
                    classify.update(logits, labels.to(device))
                    mistakes.update(logits, labels, torch.as_tensor(batch["indices"])[indices.cpu()])
            for n, (index, size, original) in enumerate(zip(batch["indices"], batch["sizes"], batch["original_sizes"])):
                sample = self.data.samples[index]
                if "detect" in outputs and sample.detection is not None:
                    output = rescale_detections(outputs["detect"][n], size, original)
                    results += to_results(sample.detection, output, self.data.detection)  # type: ignore[arg-type]
                    read.append(sample.detection.image_id)
                if segment is not None and batch["original_masks"][n] is not None:
                    predicted = resize_segmentation(outputs["segment"][n], size, original).argmax(dim=0)
                    segment.update(predicted, batch["original_masks"][n])
                    if lanes is not None:
                        lanes.update(predicted, batch["original_masks"][n])
        metrics: dict[str, Any] = {}
        if classify is not None:
            metrics["classify"] = classify.compute(names["classify"])
            self.mistakes = mistakes.gather(names["classify"])
        if "detect" in tasks:
            self.detections = [r for part in distributed.gather(results) for r in part]
            read_ids = {image for part in distributed.gather(read) for image in part}
            scored = self.data.detection.only(read_ids)  # type: ignore[union-attr]
            metrics["detect"] = score(scored, self.detections, backend=self.backend)
        if segment is not None:
            metrics["segment"] = segment.compute(names["segment"])
            if lanes is not None:
                metrics["segment"]["lane_f_score"] = lanes.compute()
        metrics["main"] = main_score(metrics)
        return metrics


def main_score(metrics: dict[str, Any]) -> float:
    """The mean of each present task's headline number (an undefined one counts as 0)."""
    values = []
    for name, key in MAIN_METRICS.items():
        if name in metrics:
            value: Any = metrics[name]
            for part in key.split("."):
                value = value[part]
            values.append(float(value or 0.0))
    return statistics.fmean(values) if values else 0.0


def rescale_detections(output: dict[str, Tensor], size: Sequence[int], original: Sequence[int]) -> dict[str, Tensor]:
    """Boxes from the resized image's pixels back to the original image's."""
    scale = torch.tensor(
        [original[1] / size[1], original[0] / size[0]] * 2, dtype=output["boxes"].dtype, device=output["boxes"].device
    )
    return {**output, "boxes": output["boxes"] * scale}


def resize_segmentation(logits: Tensor, size: Sequence[int], original: Sequence[int]) -> Tensor:
    """(K, H_pad, W_pad) logits cropped to the image and resized (bilinear) to its original size."""
    crop = logits[:, : size[0], : size[1]]
    return F.interpolate(crop[None].float(), size=tuple(original), mode="bilinear", align_corners=False)[0]


def _parse_tasks(text: str | None, configured: list[str]) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()] if text is not None else list(configured)
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise UserError(f"--tasks: unknown task {unknown[0]!r}: choose from {', '.join(TASKS)}")
    if not names:
        raise UserError(f"--tasks names no task: choose from {', '.join(TASKS)}")
    return [name for name in TASKS if name in names]


def _model_args(cfg: MultiTaskConfig, class_names: dict[str, list[str]]) -> dict[str, Any]:
    m = cfg.model
    tasks = list(m.tasks)
    counts = {name: len(class_names[name]) + (1 if name == "detect" else 0) for name in tasks}
    detection = to_dict(m.detection)
    detection["anchor_sizes"] = [list(a) for a in detection["anchor_sizes"]]
    return dict(
        backbone=m.backbone,
        tasks=tasks,
        num_classes_per_task=counts,
        detection_options=detection,
        decoder_channels=list(m.decoder_channels),
        attention=m.attention,
        loss_weights={name: getattr(m, f"{name}_weight") for name in tasks},
        weighting=m.weighting,
        dice_weight=m.dice_weight,
        label_smoothing=m.label_smoothing,
        frozen_stages=m.frozen_stages,
        norm=m.norm,
    )


def _sources(cfg: MultiTaskConfig) -> Any:
    if cfg.data.root is not None:
        return parse_sources(Path(cfg.data.root), cfg.model.tasks)
    root = shapes_dataset()
    if distributed.is_main():
        print(f"no --data given: using the built-in shapes dataset at {root} (labels, boxes and masks)")
    return parse_sources(root, cfg.model.tasks)


def _loader(cfg: MultiTaskConfig, data: MultiTaskData, *, train: bool) -> Any:
    d = cfg.data
    pipeline = MultiTaskPipeline(
        d.image_size,
        train=train,
        hflip=d.hflip,
        scale_jitter=d.scale_jitter,
        color_jitter=d.color_jitter,
        seed=cfg.train.seed,
    )
    return make_loader(
        MultiTaskDataset(data, pipeline, train=train),
        batch_size=recipes.batch_or_standard(cfg, TASK),
        train=train,
        workers=cfg.train.workers,
        collate_fn=collate_multitask,
        seed=cfg.train.seed,
    )


def _report(metrics: dict[str, Any], task: MultiTaskTask, run_dir: Path) -> None:
    """metrics.json, predictions.json, each task's figures in a folder of its name (those the single-task
    runner writes), and the summary."""
    if "classify" in metrics:
        folder = run_dir / "classify"
        folder.mkdir(exist_ok=True)
        names = task.data.class_names["classify"]
        classification_figures(metrics["classify"], names, folder, samples=task.data.samples, mistakes=task.mistakes)
    if "detect" in metrics:
        folder = run_dir / "detect"
        folder.mkdir(exist_ok=True)
        data = task.data.detection
        assert data is not None
        metrics = {**metrics}
        metrics["detect"], _ = detection_figures(metrics["detect"], task.detections, data, folder, backend=task.backend)
        write_json(run_dir / "predictions.json", task.detections)
    if "segment" in metrics:
        folder = run_dir / "segment"
        folder.mkdir(exist_ok=True)
        segmentation_figures(metrics["segment"], folder)
    write_json(run_dir / "metrics.json", metrics)

    def show(value: Any) -> str:  # undefined (no ground truth of that kind in the split): n/a, as the others print
        return "n/a" if value is None else f"{value:.4f}"

    lines = []
    if "classify" in metrics:
        c = metrics["classify"]
        lines.append(f"  classify  accuracy {show(c['accuracy'])}  F1 {show(c['f1_macro'])}")
    if "detect" in metrics:
        coco, voc = metrics["detect"]["coco"], metrics["detect"]["voc"]
        lines.append(f"  detect    AP {show(coco['AP'])}  AP50 {show(coco['AP50'])}  VOC mAP {show(voc['mAP'])}")
    if "segment" in metrics:
        seg = metrics["segment"]
        lines.append(f"  segment   mIoU {show(seg['mIoU'])}  mDice {show(seg['mDice'])}")
        if "lane_f_score" in seg:
            lines.append(f"            {lane_line(seg['lane_f_score'])}")
    print("\n".join(lines + [f"  main      {metrics['main']:.4f} (mean of the above headline numbers)"]))
    figures = ", ".join(f"{name}/" for name in TASKS if name in metrics)
    print(f"metrics.json and each task's figures ({figures}) are in {run_dir}")


def setup(cfg: MultiTaskConfig, *, resumed: frozenset[str] = frozenset()) -> Setup:
    """The model, task and loaders of a training run under ``cfg``."""
    check_backbone_name(cfg.model.backbone)
    seed_everything(cfg.train.seed)
    sources = _sources(cfg)
    train_data, val = load_multitask_splits(sources, cfg.data.train_split, cfg.data.val_split)
    boxes = [b for s in train_data.samples if s.detection is not None for b in s.detection.boxes[~s.detection.crowd]]
    facts = recipes.run_facts(
        TASK,
        cfg,
        device=resolve_device(cfg.train.device).type,
        train_images=len(train_data.samples),
        val_images=len(val.samples),
        num_classes=sum(len(names) for names in train_data.class_names.values()),
        image_sizes=recipes.sample_sizes([sample.path for sample in train_data.samples]),
        box_sizes=recipes.box_sides(boxes),
    )
    cfg, recipe = recipes.resolve_static(cfg, facts, resumed=resumed)
    model_args = _model_args(cfg, train_data.class_names)
    model = build_model(weights=cfg.model.weights, **_build_args(model_args), **recipes.init_options(cfg))
    task = MultiTaskTask(val, backend=cfg.coco_backend)

    def step_seconds_at(scale: float, rough: bool = False) -> float:
        """One training step on unaugmented training images of the resolved size times ``scale``."""
        size = round(cfg.data.image_size * scale)  # type: ignore[operator]
        probe = MultiTaskDataset(train_data, MultiTaskPipeline(size, train=False), train=True)
        device = resolve_device(cfg.train.device)
        return recipes.measure_batch(task, model, probe, collate_multitask, cfg.train, device, rough=rough)

    def step_seconds() -> float:  # rough, at the resolved size: it only chooses the scale
        return step_seconds_at(1.0, rough=True)

    sized = cfg.data.image_size
    cfg = recipes.resolve_length(cfg, recipe, facts, seconds_per_step=step_seconds, scale_probe=step_seconds_at)
    if cfg.data.image_size != sized:  # the budget shrank the input: anchors and proposal counts followed
        model_args = _model_args(cfg, train_data.class_names)
        model = build_model(weights=cfg.model.weights, **_build_args(model_args), **recipes.init_options(cfg))
    counts = ", ".join(f"{name} {count}" for name, count in train_data.counts.items())
    meta = dict(
        task=TASK,
        model_args=model_args,
        class_names=train_data.class_names,
        image_size=cfg.data.image_size,
        config=to_dict(cfg),
    )
    return Setup(
        model=model,
        task=task,
        train_loader=_loader(cfg, train_data, train=True),
        val_loader=_loader(cfg, val, train=False),
        meta=meta,
        summary=f"{cfg.model.backbone} with {', '.join(model.tasks)} heads: {len(train_data.samples)} train images "
        f"(labelled for {counts}), {len(val.samples)} val, {cfg.data.image_size}px, {cfg.train.epochs} epochs",
        val_data=val,
        config=cfg,
        recipe=recipe,
        input_size=(cfg.data.image_size, cfg.data.image_size),  # type: ignore[arg-type]
    )


def train(cfg: MultiTaskConfig, args: argparse.Namespace) -> int:
    resume = resume_from(args.resume, cfg.output)
    cfg, resumed = resumed_recipe(cfg, resume, TASK)
    parts = setup(cfg, resumed=resumed)
    metrics, run_dir = fit(TASK, cfg, parts, resume)
    if distributed.is_main():
        task: MultiTaskTask = parts.task  # type: ignore[assignment]
        _report(metrics, task, run_dir)
        if cfg.model.weighting == "uncertainty":
            model: MultiTaskModel = parts.model  # type: ignore[assignment]
            learned = ", ".join(f"{k} {v:.3f}" for k, v in model.task_weights().items())
            print(f"learned task weights: {learned}")
    return 0


def _build_args(model_args: dict[str, Any]) -> dict[str, Any]:
    args = dict(model_args)
    options = dict(args.pop("detection_options"))
    options["anchor_sizes"] = tuple(tuple(a) for a in options["anchor_sizes"])
    return {**args, "detection_options": options}


def _load_model(path: Path) -> tuple[MultiTaskModel, dict[str, Any]]:
    model, checkpoint = load_model(path, task=TASK, build=lambda args: build_model(**_build_args(args)))
    return model, checkpoint  # type: ignore[return-value]


def evaluate(cfg: MultiTaskConfig, args: argparse.Namespace) -> int:
    path = require_checkpoint(args)
    model, checkpoint = _load_model(path)
    class_names = {k: list(v) for k, v in checkpoint["class_names"].items()}
    cfg.model.tasks = list(model.tasks)
    cfg.data.image_size = int(checkpoint["image_size"])
    val = load_multitask(_sources(cfg), cfg.data.val_split, class_names=class_names, train_split=cfg.data.train_split)
    for name in model.tasks:
        if len(val.class_names[name]) != len(class_names[name]):
            raise UserError(
                f"checkpoint {path} has {len(class_names[name])} {name} classes but the data has "
                f"{len(val.class_names[name])}"
            )
    run_dir = new_run_dir(cfg.output, TASK, "eval")
    write_config(run_dir, cfg)
    device = resolve_device(cfg.train.device)
    task = MultiTaskTask(val, backend=cfg.coco_backend)
    metrics, skipped = evaluate_split(task, model.to(device), _loader(cfg, val, train=False), device)
    if distributed.is_main():
        if skipped is not None:
            print(skipped)
        _report(metrics, task, run_dir)
    return 0


def graph_outputs(tensors: Sequence[Tensor], names: Sequence[str], size: Sequence[int]) -> dict[str, Any]:
    """One image's exported-graph outputs (named by ``names``) as the eager model returns them in evaluation:
    ``{"classify": logits, "detect": [dict(boxes, labels, scores)], "segment": logits}``. The graph sees the
    padded image, so boxes are clipped to the image's own ``size`` (H, W), as the eager model does."""
    out = dict(zip(names, tensors))
    result: dict[str, Any] = {}
    if "logits" in out:
        result["classify"] = out["logits"].float()
    if "boxes" in out:
        boxes = out["boxes"].float().clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, float(size[1]))
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, float(size[0]))
        result["detect"] = [{"boxes": boxes, "labels": out["labels"], "scores": out["scores"].float()}]
    if "masks" in out:
        result["segment"] = out["masks"].float()
    return result


class ServedModel:
    """An exported (or eager) graph behind the eager model's evaluation call ``model(images, sizes)``, one
    image at a time (the detection graph takes one), for scoring exported files with :class:`MultiTaskTask`."""

    def __init__(self, run: Callable[..., Sequence[Tensor]], names: Sequence[str]) -> None:
        self.run = run
        self.names = list(names)

    def __call__(self, images: Tensor, sizes: Sequence[Sequence[int]]) -> dict[str, Any]:
        per_image = [graph_outputs(self.run(images[n : n + 1]), self.names, sizes[n]) for n in range(len(images))]
        merged: dict[str, Any] = {}
        for key in per_image[0] if per_image else ():
            parts = [item[key] for item in per_image]
            merged[key] = [d for part in parts for d in part] if key == "detect" else torch.cat(parts)
        return merged


def _load_graph(path: Path) -> tuple[ExportGraph, dict[str, Any]]:
    """A checkpoint as the exported graph runs it: images in, a tuple of named tensors out."""
    model, checkpoint = _load_model(path)
    graph = ExportGraph(model.eval())
    return graph, dict(
        tasks=list(model.tasks),
        class_names=checkpoint["class_names"],
        image_size=int(checkpoint["image_size"]),
        outputs=graph.output_names,
    )


def predict(cfg: MultiTaskConfig, args: argparse.Namespace) -> int:
    path = require_checkpoint(args)
    images = PredictImages(args.inputs, "photo.jpg photos/")
    eager: MultiTaskModel | None = None
    if wants_cam(args, path):  # Grad-CAM hooks the eager model's layers
        model, meta = _load_graph(path)
        eager = model.model
        if "classify" not in eager.tasks:
            raise UserError(f"--cam explains the classification head, and {path} has none (heads: {eager.tasks})")
    else:
        model, meta = serving_model(path, _load_graph)  # a checkpoint, or an exported file alone
    names = {k: list(v) for k, v in meta["class_names"].items()}
    target = cam_class_index(args, path, names["classify"]) if eager is not None else None
    pipeline = MultiTaskPipeline(int(meta["image_size"]), train=False)
    run_dir = new_run_dir(cfg.output, TASK, "predict")
    results = []
    for image_path, image in images:
        height, width = image.shape[:2]
        tensor, *_ = pipeline(
            image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros((height, width), np.uint8)
        )
        item = {"image": tensor, "index": 0, "original_size": (height, width), "label": None}
        batch = collate_multitask([{**item, "detection": None, "mask": None}])
        size = batch["sizes"][0]
        with torch.inference_mode():
            out = graph_outputs(model(batch["images"]), meta["outputs"], size)
        entry: dict[str, Any] = {"path": str(image_path)}
        name = f"{images.output_name(image_path)}.png"
        if "classify" in out:
            probs = out["classify"].softmax(dim=1)[0]
            top = probs.topk(min(5, len(names["classify"])))
            entry["classify"] = [
                {"class": names["classify"][i], "probability": float(p)} for p, i in zip(top.values, top.indices)
            ]
        if eager is not None:  # over the whole image: the model sees it resized, unpadded
            index = int(out["classify"][0].argmax()) if target is None else target
            heat = grad_cam(eager.backbone, eager.heads["classify"], tensor[None], [index])  # (1, h, w)
            heat = resize_segmentation(torch.from_numpy(heat), heat.shape[1:], (height, width))[0].numpy()
            save_png(overlay_cam(image, heat), run_dir / "cam" / name)
            entry["cam"] = {"class": names["classify"][index], "image": f"cam/{name}"}
        picture = image
        if "segment" in out:
            mask = resize_segmentation(out["segment"][0], size, (height, width)).argmax(dim=0).numpy()
            save_png(palette_mask(mask), run_dir / "masks" / name)
            entry["segment"] = f"masks/{name}"
            picture = np.asarray(overlay_mask(image, mask))
        if "detect" in out:
            found = rescale_detections(out["detect"][0], size, (height, width))
            keep = found["scores"] >= cfg.show_score_thresh
            boxes, labels, scores = found["boxes"][keep], found["labels"][keep], found["scores"][keep]
            entry["detect"] = [
                {"box": [round(float(v), 2) for v in b], "class": names["detect"][int(c) - 1], "score": float(s)}
                for b, c, s in zip(boxes, labels, scores)
            ]
            picture = np.asarray(
                draw_detections(picture, boxes.numpy(), [d["class"] for d in entry["detect"]], scores.tolist())
            )
        save_png(_as_image(picture), run_dir / "images" / name)
        entry["image"] = f"images/{name}"
        results.append(entry)
        print(f"{image_path}: " + "; ".join(_summary(entry)))
    write_json(run_dir / "predictions.json", results)
    skipped = f", {images.skipped} unreadable skipped" if images.skipped else ""
    print(f"{len(results)} image(s) predicted{skipped}; wrote {run_dir / 'predictions.json'} and pictures")
    return 0


def _as_image(picture: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(np.asarray(picture, np.uint8))


def _summary(entry: dict[str, Any]) -> list[str]:
    parts = []
    if "classify" in entry:
        best = entry["classify"][0]
        parts.append(f"class {best['class']} ({best['probability']:.2f})")
    if "detect" in entry:
        parts.append(f"{len(entry['detect'])} object(s)")
    if "segment" in entry:
        parts.append(f"mask {entry['segment']}")
    return parts


class ExportGraph(nn.Module):
    """The model as one graph of plain tensors: normalised images (N, 3, H, W) in; classification
    logits, detection boxes, labels and scores (of the first image), and segmentation logits out,
    for the heads present, in that order."""

    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model

    @property
    def output_names(self) -> list[str]:
        names = {"classify": ["logits"], "detect": ["boxes", "labels", "scores"], "segment": ["masks"]}
        return [name for task in self.model.tasks for name in names[task]]

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model(images)
        results: list[Tensor] = []
        if "classify" in out:
            results.append(out["classify"])  # (N, C)
        if "detect" in out:
            first = out["detect"][0]
            results += [first["boxes"], first["labels"], first["scores"]]  # (D, 4), (D,), (D,)
        if "segment" in out:
            results.append(out["segment"])  # (N, K, H, W)
        return tuple(results)


def export_spec(model: MultiTaskModel, image_size: int) -> ExportSpec:
    """Dynamic height and width; a dynamic batch too unless detection is among the heads, whose
    torchvision ONNX path takes one image."""
    graph = ExportGraph(model.eval())
    generator = torch.Generator().manual_seed(0)
    batch = 1 if "detect" in model.tasks else 2
    example = torch.randn(batch, 3, image_size, image_size, generator=generator)
    other = torch.randn(batch, 3, image_size // 2 + 32, image_size, generator=generator)
    axes = {"images": {2: "height", 3: "width"} if batch == 1 else {0: "batch", 2: "height", 3: "width"}}
    for name in graph.output_names:
        axes[name] = {0: "detections"} if name in ("boxes", "labels", "scores") else {}
    axes["masks"] = {2: "height", 3: "width"} if batch == 1 else {0: "batch", 2: "height", 3: "width"}
    axes["logits"] = {} if batch == 1 else {0: "batch"}
    axes = {k: v for k, v in axes.items() if k == "images" or k in graph.output_names}
    detections = ("boxes", "labels", "scores") if "detect" in model.tasks else None
    return ExportSpec(graph, (example,), ["images"], graph.output_names, axes, [(other,)], detections)


def export(cfg: MultiTaskConfig, args: argparse.Namespace) -> int:
    path = require_checkpoint(args)
    model, checkpoint = _load_model(path)
    fmt = export_format(args)
    metadata = dict(
        task=TASK,
        tasks=list(model.tasks),
        class_names=checkpoint["class_names"],
        image_size=int(checkpoint["image_size"]),
        outputs=ExportGraph(model).output_names,
    )
    spec = export_spec(model, int(checkpoint["image_size"]))
    target = default_target(path, fmt, args.output)
    print(export_and_check(spec, fmt, target, metadata))
    if args.quantize:
        class_names = {k: list(v) for k, v in checkpoint["class_names"].items()}
        cfg.model.tasks = list(model.tasks)
        cfg.data.image_size = int(checkpoint["image_size"])
        sources = _sources(cfg)
        train_data, val = load_multitask_splits(
            sources, cfg.data.train_split, cfg.data.val_split, class_names=class_names
        )
        calibration = calibration_inputs(
            MultiTaskDataset(train_data, MultiTaskPipeline(cfg.data.image_size, train=False), train=False),
            args.calibration_images,
            lambda item: collate_multitask([item])["images"],
        )
        loader = _loader(cfg, val, train=False)

        def main_metric(exported: Exported) -> float:
            task = MultiTaskTask(val, backend=cfg.coco_backend)
            served = ServedModel(exported.tensors, metadata["outputs"])
            return task.evaluate(served, loader, torch.device("cpu"))["main"]  # type: ignore[arg-type]

        print(quantize_and_report(target, calibration, main_metric, "main (mean of accuracy, AP, mIoU)", spec))
    return 0


FLAGS = {**COMMON_FLAGS, "coco_backend": "coco_backend"}
FLAGS.pop("format")


def _main(argv: Sequence[str] | None) -> int:
    parser = common_parser(TASK, "Train, evaluate, predict and export one backbone with several task heads.")
    parser.add_argument("--tasks", help="comma-separated subset of classify,detect,segment (default: all three)")
    parser.add_argument("--coco-backend", choices=("faster-coco-eval", "pycocotools"))
    add_cam_options(parser, by_class=True)
    args = parser.parse_args(argv)
    if args.format is not None and args.command != "export":
        raise UserError(
            "--format is set per task in a dataset YAML for multitask data (e.g. detect: {root: D, format: voc})"
        )
    cfg = resolve_config(MultiTaskConfig(), args, command_flags(args, FLAGS), embedded="multitask/shapes")
    cfg.model.tasks = _parse_tasks(args.tasks, cfg.model.tasks)
    if args.command in ("train", "eval"):
        start_processes(cfg.train)  # joins torchrun's process group, if any
    return {"train": train, "eval": evaluate, "predict": predict, "export": export}[args.command](cfg, args)


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
