"""Object detection: ``python -m tasks.detect [train|eval|predict] ...``, Faster R-CNN + FPN on any backbone.

Data is COCO (``annotations/instances_<split>.json``) or Pascal VOC (``Annotations/``,
``ImageSets/Main/``), detected from the layout. metrics.json holds a ``coco`` and a ``voc``
section for either. ``eval --predictions FILE`` scores any detector's COCO-results file.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from backbones import build_backbone, fast_model_inference
from heads.detection import DETECTION_LEVELS, FasterRCNN, FasterRCNNHead
from tasks import distributed, recipes
from tasks.checkpoint import check_num_classes, load_model
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
from tasks.data import kitti
from tasks.data.coco import is_number, read_json
from tasks.data.detection import DetectionData, DetectionDataset, collate_detection
from tasks.data.detection_splits import load_detection_splits
from tasks.data.embedded import shapes_dataset
from tasks.data.holdout import DEFAULT_FRACTION, fraction_for_eval
from tasks.data.images import READ_ERRORS, load_rgb
from tasks.data.sampling import aspect_ratio_groups
from tasks.data.transforms import detection_eval, detection_train
from tasks.data.yolo import yolo_lines
from tasks.engine import Setup, evaluate_split, make_loader, resolve_device, seed_everything, start_processes
from tasks.errors import UserError
from tasks.explain import add_cam_options, eigen_cam, wants_cam
from tasks.export import (
    Exported,
    ExportSpec,
    calibration_inputs,
    default_target,
    export_and_check,
    quantize_and_report,
    serving_model,
)
from tasks.io import atomic_write, write_json, write_text
from tasks.metrics.coco import Backend
from tasks.metrics.detection import (
    detection_confusion,
    f1_by_confidence,
    pr_curves,
    resolve_labels,
    score,
    to_results,
)
from tasks.visualize import confusion_png, draw_detections, f1_curve_png, overlay_cam, pr_curve_png, save_png

TASK = "detect"
PNG_COUNT = 8


def build_model(
    backbone: str,
    num_classes: int,
    *,
    weights: str | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    frozen_stages: int | None = None,
    norm: str | None = None,
    zero_init_residual: bool = False,
    **head_options: Any,
) -> FasterRCNN:
    """Faster R-CNN + FPN on ``backbone``; ``num_classes`` counts the background (COCO: 91).

    With pretrained ``weights`` the backbone defaults to frozen BatchNorm and a frozen stem and
    first stage (torchvision's ``trainable_backbone_layers=3``); from scratch it defaults to
    trainable BatchNorm and nothing frozen, because frozen statistics that were never learned
    are only the initial ones (torchvision PR #5443). ``head_options`` go to
    :class:`heads.detection.FasterRCNNHead`. With default options on ``resnet50`` the model
    has exactly the parameters, and with the same weights the same detections, as
    torchvision's ``fasterrcnn_resnet50_fpn``.
    """
    pretrained = weights is not None
    options: dict[str, Any] = dict(out_levels=DETECTION_LEVELS)
    if zero_init_residual:  # from scratch (tasks.recipes): every residual block starts as the identity
        options["zero_init_residual"] = True
    options["norm"] = norm or ("frozen_bn" if pretrained else "bn")  # torchvision's, for timm models too
    options["frozen_stages"] = frozen_stages if frozen_stages is not None else (1 if pretrained else -1)
    net = build_backbone(backbone, weights=weights, **options)
    head = FasterRCNNHead(net.feature_info, num_classes, **head_options)
    return FasterRCNN(net, head, min_size=min_size, max_size=max_size)


@dataclass
class DetectionHeadConfig:
    """The Faster R-CNN head's options (heads.detection.FasterRCNNHead), shared with tasks.multitask."""

    anchor_sizes: list[list[int]] | Auto = "auto"  # torchvision: [[32], [64], [128], [256], [512]]
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    rpn_pre_nms_top_n_train: int | Auto = "auto"  # torchvision: 2000, 1000, 2000, 1000, 512
    rpn_pre_nms_top_n_test: int | Auto = "auto"
    rpn_post_nms_top_n_train: int | Auto = "auto"
    rpn_post_nms_top_n_test: int | Auto = "auto"
    box_batch_size_per_image: int | Auto = "auto"
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    fpn_channels: int | Auto = "auto"  # torchvision: 256 and 1024; a CPU time budget: 128 and 256 (tasks/recipes.py)
    representation_size: int | Auto = "auto"


@dataclass
class ModelConfig(DetectionHeadConfig):
    backbone: str = "resnet50"
    weights: str | None = None
    min_size: int | Auto = "auto"  # torchvision: 800
    max_size: int | Auto = "auto"  # torchvision: 1333
    frozen_stages: int | None = None
    norm: Literal["bn", "frozen_bn", "sync_bn", "gn"] | None = None
    zero_init_residual: bool | Auto = "auto"  # from scratch: true (tasks/recipes.py); torchvision: false


@dataclass
class DataConfig:
    root: str | None = None
    format: Literal["auto", "coco", "voc", "yolo", "kitti", "labelme", "cityscapes", "bdd100k", "widerface"] = "auto"
    train_split: str | None = None
    val_split: str | None = None
    val_fraction: float = DEFAULT_FRACTION  # held out for validation where the data has no val split
    classes: list[str] | None = None
    hflip: float = 0.5
    scale_jitter: float | Auto = "auto"
    color_jitter: float | Auto = "auto"
    aspect_ratio_grouping: bool = True


@dataclass
class DetectConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=4))
    output: str | None = None
    coco_backend: Literal["faster-coco-eval", "pycocotools"] = "faster-coco-eval"
    # predict lists and draws detections from this score, and the pictures of train and eval runs draw from it;
    # the metrics score every detection the model keeps (model.box_score_thresh, COCO's protocol)
    show_score_thresh: float = 0.3


class DetectTask:
    """The engine's view of detection: the detector's four losses, COCO and VOC scoring."""

    name = TASK
    main_metric = "coco.AP"

    def __init__(self, data: DetectionData, *, backend: Backend) -> None:
        self.data = data
        self.backend = backend
        self.last_results: list[dict[str, Any]] = []

    def to_device(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        return {
            **batch,
            "images": [image.to(device, non_blocking=True) for image in batch["images"]],
            "targets": [{k: v.to(device) for k, v in t.items()} for t in batch["targets"]],
        }

    def losses(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        losses = model(batch["images"], batch["targets"])
        return {"loss": sum(losses.values()), **losses}

    def evaluate(self, model: nn.Module, loader: Iterable[dict[str, Any]], device: torch.device) -> dict[str, Any]:
        results: list[dict[str, Any]] = []
        read: list[int | str] = []
        for batch in loader:
            if batch["batch_size"] == 0:
                continue
            outputs = model(self.to_device(batch, device)["images"])
            for index, output in zip(batch["indices"], outputs):
                results += to_results(self.data.samples[index], output, self.data)
                read.append(self.data.samples[index].image_id)
        self.last_results = [r for part in distributed.gather(results) for r in part]
        scored = self.data.only({image for part in distributed.gather(read) for image in part})
        return score(scored, self.last_results, backend=self.backend)


def _model_args(cfg: DetectConfig, num_classes: int) -> dict[str, Any]:
    m = cfg.model
    built_apart = ("weights", "backbone", "anchor_sizes", "aspect_ratios", "zero_init_residual")
    args = {k: v for k, v in to_dict(m).items() if k not in built_apart}
    return dict(
        backbone=m.backbone,
        num_classes=num_classes,
        anchor_sizes=[list(a) for a in m.anchor_sizes],
        aspect_ratios=list(m.aspect_ratios),
        pretrained=m.weights is not None,
        **args,
    )


def _build_from_args(args: dict[str, Any], weights: str | None = None, **init: Any) -> FasterRCNN:
    args = dict(args)
    pretrained = args.pop("pretrained", False)
    if pretrained and weights is None:  # rebuilding a fine-tuned model: keep its norm and freezing
        args["norm"] = args.get("norm") or "frozen_bn"
        args["frozen_stages"] = 1 if args.get("frozen_stages") is None else args["frozen_stages"]
    args["anchor_sizes"] = tuple(tuple(a) for a in args["anchor_sizes"])
    return build_model(weights=weights, **args, **init)


def _data(cfg: DetectConfig, *, need_train: bool) -> tuple[DetectionData | None, DetectionData]:
    root = Path(cfg.data.root) if cfg.data.root is not None else shapes_dataset()
    if cfg.data.root is None and distributed.is_main():
        print(f"no --data given: using the built-in shapes dataset at {root}")
    train, val = load_detection_splits(
        root,
        fmt=cfg.data.format,
        train_split=cfg.data.train_split,
        val_split=cfg.data.val_split,
        classes=cfg.data.classes,
        need_train=need_train,
        val_fraction=cfg.data.val_fraction,
    )
    for data in (train, val):
        message = data.fixes.report(data.source) if data is not None else None
        if message and distributed.is_main():
            print(message)
    return train, val


def _loader(cfg: DetectConfig, data: DetectionData, *, train: bool) -> Any:
    d = cfg.data
    transform = (
        detection_train(hflip=d.hflip, scale_jitter=d.scale_jitter, color_jitter=d.color_jitter, seed=cfg.train.seed)
        if train
        else detection_eval()
    )
    return make_loader(
        DetectionDataset(data, transform, train=train),
        batch_size=recipes.batch_or_standard(cfg, TASK),
        train=train,
        workers=cfg.train.workers,
        collate_fn=collate_detection,
        seed=cfg.train.seed,
        groups=aspect_ratio_groups([(s.width, s.height) for s in data.samples]) if d.aspect_ratio_grouping else None,
    )


def write_figures(
    metrics: dict[str, Any], results: list[dict[str, Any]], data: DetectionData, run_dir: Path, *, backend: Backend
) -> tuple[dict[str, Any], dict[str, Any]]:
    """pr_curve.png and f1_curve.png at IoU 0.5 (from the COCO evaluator's arrays), and the confusion matrix of
    classes and background at IoU 0.5 and the best-F1 confidence, as counts and as shares. Returns ``metrics``
    with that matrix added (rows true, columns predicted, the last one background) and the F1 curve."""
    curves = pr_curves(data, results, backend=backend)
    f1 = f1_by_confidence(curves)
    confusion = detection_confusion(data, results, confidence=f1["best_confidence"])
    matrix = {"iou": 0.5, "confidence": f1["best_confidence"], "counts": confusion.tolist()}
    atomic_write(run_dir / "pr_curve.png", lambda handle: handle.write(pr_curve_png(curves)))
    atomic_write(run_dir / "f1_curve.png", lambda handle: handle.write(f1_curve_png(f1)))
    names = [*data.class_names, "background"]
    where = f"IoU 0.5, confidence ≥ {f1['best_confidence']:.2f}"
    for suffix, normalize, title in (
        ("", False, f"boxes ({where})"),
        ("_normalized", True, f"share of each true row ({where})"),
    ):
        png = confusion_png(confusion, names, normalize=normalize, title=title)
        atomic_write(run_dir / f"confusion_matrix{suffix}.png", lambda handle, png=png: handle.write(png))
    return {**metrics, "confusion_matrix": matrix}, f1


def _report(
    metrics: dict[str, Any],
    results: list[dict[str, Any]],
    data: DetectionData,
    run_dir: Path,
    *,
    show: float,
    backend: Backend,
) -> None:
    """metrics.json, predictions.json, the first images with their boxes and the figures of
    :func:`write_figures`, with the summary printed."""
    metrics, f1 = write_figures(metrics, results, data, run_dir, backend=backend)
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "predictions.json", results)
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    if "kitti" in metrics:  # KITTI's label files: a result file per image too, as its devkit reads them
        for sample in data.samples:
            text = kitti.result_text(by_image.get(sample.image_id, []))
            write_text(run_dir / "kitti" / f"{sample.image_id}.txt", text)
    for sample in data.samples[:PNG_COUNT]:
        try:
            image = load_rgb(sample.path)
        except READ_ERRORS:
            continue
        found = [r for r in by_image.get(sample.image_id, []) if r["score"] >= show]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in found)]
        picture = draw_detections(
            image,
            boxes,
            [r["category_name"] for r in found],
            [r["score"] for r in found],
            truth_boxes=sample.boxes[~sample.crowd],  # a crowd region (COCO's, KITTI's DontCare) is no object
            truth_labels=[data.class_names[i - 1] for i in sample.labels[~sample.crowd]],
        )
        save_png(picture, run_dir / "images" / f"{Path(str(sample.image_id)).name}.png")
    coco, voc = metrics["coco"], metrics["voc"]
    rows = [
        ("COCO AP", coco["AP"]),
        ("COCO AP50", coco["AP50"]),
        ("COCO AP75", coco["AP75"]),
        ("COCO AR100", coco["AR100"]),
        ("VOC mAP07", voc["mAP07"]),
        ("VOC mAP", voc["mAP"]),
    ]
    print("\n".join(f"  {name:<12} {value:.4f}" if value is not None else f"  {name:<12} n/a" for name, value in rows))
    print(f"  {'best F1':<12} {f1['best_f1']:.4f} at confidence {f1['best_confidence']:.2f} (IoU 0.5)")
    if "kitti" in metrics:  # KITTI's label files: the benchmark's own levels
        levels = metrics["kitti"]["AP40"]
        parts = [
            f"{name} {' / '.join('n/a' if v is None else f'{v:.4f}' for v in by_level.values())}"
            for name, by_level in levels.items()
        ]
        print(f"  {'KITTI AP40':<12} {', '.join(parts)} (easy / moderate / hard)")
    files = "metrics.json, predictions.json, " + ("kitti/ (a result file per image), " if "kitti" in metrics else "")
    print(f"{files}images/, pr_curve.png, f1_curve.png and confusion matrices are in {run_dir}")


def setup(cfg: DetectConfig, *, resumed: frozenset[str] = frozenset()) -> Setup:
    """The model, task and loaders of a training run under ``cfg``, its auto fields resolved from the data."""
    check_backbone_name(cfg.model.backbone)
    seed_everything(cfg.train.seed)
    train_data, val_data = _data(cfg, need_train=True)
    assert train_data is not None
    boxes = [b for s in train_data.samples for b in s.boxes[~s.crowd]]  # a crowd region is no object's size
    facts = recipes.run_facts(
        TASK,
        cfg,
        device=resolve_device(cfg.train.device).type,
        train_images=len(train_data.samples),
        val_images=len(val_data.samples),
        num_classes=len(train_data.class_names),
        image_sizes=tuple((s.width, s.height) for s in train_data.samples[:: max(len(train_data.samples) // 200, 1)]),
        box_sizes=recipes.box_sides(boxes),
    )
    cfg, recipe = recipes.resolve_static(cfg, facts, resumed=resumed)
    model_args = _model_args(cfg, len(train_data.class_names) + 1)
    model = _build_from_args(model_args, cfg.model.weights, **recipes.init_options(cfg))
    task = DetectTask(val_data, backend=cfg.coco_backend)

    def step_seconds_at(scale: float, rough: bool = False) -> float:
        """One training step on unaugmented training images, which the detector resizes to its sizes × ``scale``."""
        transform = model.transform
        sizes = transform.min_size, transform.max_size
        shorter = round(cfg.model.min_size * scale)  # type: ignore[operator]
        transform.min_size, transform.max_size = (shorter,), max(round(cfg.model.max_size * scale), shorter)  # type: ignore[operator]
        try:
            probe = DetectionDataset(train_data, detection_eval(), train=True)
            device = resolve_device(cfg.train.device)
            return recipes.measure_batch(task, model, probe, collate_detection, cfg.train, device, rough=rough)
        finally:
            transform.min_size, transform.max_size = sizes

    def step_seconds() -> float:  # rough, at the resolved sizes: it only chooses the scale
        return step_seconds_at(1.0, rough=True)

    sized = cfg.model.min_size
    cfg = recipes.resolve_length(cfg, recipe, facts, seconds_per_step=step_seconds, scale_probe=step_seconds_at)
    if cfg.model.min_size != sized:  # the budget shrank the images: anchors and proposal counts followed
        model_args = _model_args(cfg, len(train_data.class_names) + 1)
        model = _build_from_args(model_args, cfg.model.weights, **recipes.init_options(cfg))
    meta = dict(
        task=TASK,
        model_args=model_args,
        class_names=train_data.class_names,
        category_ids=train_data.category_ids,
        config=to_dict(cfg),
    )
    return Setup(
        model=model,
        task=task,
        train_loader=_loader(cfg, train_data, train=True),
        val_loader=_loader(cfg, val_data, train=False),
        meta=meta,
        val_data=val_data,
        summary=f"Faster R-CNN on {cfg.model.backbone}: {len(train_data.class_names)} classes, "
        f"{len(train_data.samples)} train / {len(val_data.samples)} val images, images resized to "
        f"{cfg.model.min_size}-{cfg.model.max_size} px, {cfg.train.epochs} epochs of batch {cfg.train.batch_size}",
        config=cfg,
        recipe=recipe,
        input_size=(cfg.model.min_size, cfg.model.min_size),  # type: ignore[arg-type]  # a min_size square
    )


def train(cfg: DetectConfig, args: argparse.Namespace) -> int:
    resume = resume_from(args.resume, cfg.output)
    cfg, resumed = resumed_recipe(cfg, resume, TASK)
    parts = setup(cfg, resumed=resumed)
    metrics, run_dir = fit(TASK, cfg, parts, resume)
    if distributed.is_main():
        task: DetectTask = parts.task  # type: ignore[assignment]
        _report(
            metrics, task.last_results, parts.val_data, run_dir, show=cfg.show_score_thresh, backend=cfg.coco_backend
        )
    return 0


def _load_model(
    path: Path, *, fast: bool = True, device: torch.device | None = None
) -> tuple[FasterRCNN, dict[str, Any]]:
    """The checkpoint's model; ``fast``: in its inference form for ``device`` (eval and predict: the backbone
    folded and frozen, the heads channels-last on AVX-512 CPUs and off the CPU; :func:`fast_model_inference`),
    else eager in NCHW (exporters trace it, EigenCAM hooks it)."""
    model, checkpoint = load_model(path, task=TASK, build=_build_from_args)
    if fast:
        fast_model_inference(model, device=device)
    return model, checkpoint  # type: ignore[return-value]


def _load_graph(path: Path, *, fast: bool = True) -> tuple[DetectionGraph, dict[str, Any]]:
    model, checkpoint = _load_model(path, fast=fast)
    return DetectionGraph(model), checkpoint


def _read_predictions(path: Path) -> list[dict[str, Any]]:
    results = read_json(path, kind="predictions file")
    if not isinstance(results, list) or not all(
        isinstance(r, dict) and {"image_id", "bbox", "score"} <= set(r) for r in results
    ):
        per_image = (
            isinstance(results, list) and results and all(isinstance(r, dict) and "detections" in r for r in results)
        )
        what = (
            " (this is predict's per-image output; train and eval write one as predictions.json)" if per_image else ""
        )
        raise UserError(
            f"predictions file {path} must be a COCO results list of {{image_id, category_id, bbox, score}}{what}"
        )

    for index, r in enumerate(results, start=1):
        box = r["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
            raise UserError(f"predictions file {path}: prediction {index} has bbox {box!r}; expected [x, y, w, h]")
        if not is_number(r["score"]):
            raise UserError(f"predictions file {path}: prediction {index} has score {r['score']!r}; expected a number")
    return results


def evaluate(cfg: DetectConfig, args: argparse.Namespace) -> int:
    if args.predictions is not None:
        _, val = _data(cfg, need_train=False)
        given = Path(args.predictions)
        if given.is_dir():  # KITTI's result files, one per image; those of other images are left out
            results, others = kitti.read_results(given, {str(s.image_id) for s in val.samples})
            if others:
                print(f"note: {others} result file(s) in {given} are of images outside {val.source}: left out")
        else:
            results = _read_predictions(given)
        try:
            resolve_labels(val, results)  # unknown images and classes, named with the file
        except UserError as error:
            raise UserError(f"predictions file {args.predictions}: {error}") from None
        metrics = score(val, results, backend=cfg.coco_backend)
        results = [  # written back with the dataset's ids and names, whichever of the two the file gave
            {**r, "category_id": val.category_ids[label - 1], "category_name": val.class_names[label - 1]}
            for r, label in zip(results, resolve_labels(val, results))
        ]
        run_dir = new_run_dir(cfg.output, TASK, "eval")
        write_config(run_dir, cfg)
        _report(metrics, results, val, run_dir, show=cfg.show_score_thresh, backend=cfg.coco_backend)
        return 0
    if args.checkpoint is None:
        raise UserError("eval needs --checkpoint FILE (a trained model) or --predictions FILE (a results file)")
    device = resolve_device(cfg.train.device)
    model, checkpoint = _load_model(Path(args.checkpoint), device=device)  # laid out for where it will run
    if cfg.data.classes is None:  # VOC labels must follow the model's class list (COCO files carry their own)
        cfg.data.classes = list(checkpoint["class_names"])
    cfg.data.val_fraction = fraction_for_eval(cfg.data.val_fraction, checkpoint)
    _, val = _data(cfg, need_train=False)
    check_num_classes(checkpoint, len(val.class_names) + 1, path=args.checkpoint)
    run_dir = new_run_dir(cfg.output, TASK, "eval")
    write_config(run_dir, cfg)
    task = DetectTask(val, backend=cfg.coco_backend)
    metrics, skipped = evaluate_split(task, model.to(device), _loader(cfg, val, train=False), device)
    if distributed.is_main():
        if skipped is not None:
            print(skipped)
        _report(metrics, task.last_results, val, run_dir, show=cfg.show_score_thresh, backend=cfg.coco_backend)
    return 0


def predict(cfg: DetectConfig, args: argparse.Namespace) -> int:
    checkpoint_path = require_checkpoint(args)
    images = PredictImages(args.inputs, "street.jpg photos/")
    eager: FasterRCNN | None = None
    if wants_cam(args, checkpoint_path):  # EigenCAM hooks the eager model's backbone
        graph, meta = _load_graph(checkpoint_path, fast=False)
        eager = graph.model
    else:
        graph, meta = serving_model(checkpoint_path, _load_graph)  # a checkpoint, or an exported file alone
    names = list(meta["class_names"])
    run_dir = new_run_dir(cfg.output, TASK, "predict")
    to_tensor = detection_eval()
    results = []
    for image_path, image in images:
        with torch.inference_mode():
            out = dict(zip(("boxes", "labels", "scores"), graph(to_tensor(image)[0])))
        if args.save_kitti:  # every detection the model keeps: the benchmark's AP needs the low-scoring ones too
            found = [
                {"category_name": names[int(label) - 1], "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)}
                for (x1, y1, x2, y2), label, score in zip(out["boxes"].tolist(), out["labels"], out["scores"])
            ]
            write_text(run_dir / "kitti" / f"{images.output_name(image_path)}.txt", kitti.result_text(found))
        keep = out["scores"] >= cfg.show_score_thresh
        boxes, labels, scores = out["boxes"][keep], out["labels"][keep], out["scores"][keep]
        detections = [
            {"box": [round(float(v), 2) for v in b], "class": names[int(label) - 1], "score": float(s)}
            for b, label, s in zip(boxes, labels, scores)
        ]
        picture = f"{images.output_name(image_path)}.png"
        entry: dict[str, Any] = {"path": str(image_path), "image": picture, "detections": detections}
        if eager is not None:
            heat = eigen_cam(eager, to_tensor(image)[0])
            save_png(overlay_cam(image, heat), run_dir / "cam" / picture)
            entry["cam"] = f"cam/{picture}"
        if args.save_txt:
            lines = yolo_lines(
                boxes.numpy(), labels.numpy() - 1, image.shape[:2], scores.numpy() if args.save_conf else None
            )
            entry["labels"] = f"labels/{images.output_name(image_path)}.txt"
            write_text(run_dir / entry["labels"], lines)
        results.append(entry)
        save_png(
            draw_detections(image, boxes.numpy(), [d["class"] for d in detections], scores.tolist()),
            run_dir / picture,
        )
        print(
            f"{image_path}: {len(detections)} object(s)"
            + "".join(f", {d['class']} {d['score']:.2f}" for d in detections[:5])
        )
    write_json(run_dir / "predictions.json", results)
    skipped = f", {images.skipped} unreadable skipped" if images.skipped else ""
    cams = " and EigenCAM heat maps" if eager is not None else ""
    cams += ", YOLO label files in labels/" if args.save_txt else ""
    cams += ", KITTI result files in kitti/" if args.save_kitti else ""
    print(f"{len(results)} image(s) predicted{skipped}; wrote {run_dir / 'predictions.json'}, drawn PNGs{cams}")
    return 0


class DetectionGraph(nn.Module):
    """The detector as a graph of plain tensors, torchvision's ONNX-compatible path: one image
    (3, H, W) in [0, 1] in; boxes (D, 4) in its pixels, labels (D,) and scores (D,) out."""

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model([image])[0]
        return out["boxes"], out["labels"], out["scores"]


def export_spec(model: FasterRCNN, min_size: int) -> ExportSpec:
    """Height and width dynamic; the detector resizes inside the graph as it does in eager mode."""
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(3, min_size, min_size * 4 // 3, generator=generator)
    other = torch.rand(3, min_size * 3 // 4, min_size, generator=generator)
    axes = {"image": {1: "height", 2: "width"}, "boxes": {0: "detections"}, "labels": {0: "detections"}}
    axes["scores"] = {0: "detections"}
    outputs = ("boxes", "labels", "scores")
    return ExportSpec(DetectionGraph(model.eval()), (example,), ["image"], list(outputs), axes, [(other,)], outputs)


def export(cfg: DetectConfig, args: argparse.Namespace) -> int:
    path = require_checkpoint(args)
    model, checkpoint = _load_model(path, fast=False)  # eager: exporters trace it
    fmt = export_format(args)
    min_size = int(checkpoint["model_args"].get("min_size", 800))
    metadata = dict(task=TASK, class_names=list(checkpoint["class_names"]), min_size=min_size)
    target = default_target(path, fmt, args.output)
    spec = export_spec(model, min_size)
    print(export_and_check(spec, fmt, target, metadata))
    if args.quantize:
        if cfg.data.classes is None:
            cfg.data.classes = list(checkpoint["class_names"])
        cfg.data.val_fraction = fraction_for_eval(cfg.data.val_fraction, checkpoint)
        train_data, val = _data(cfg, need_train=True)
        assert train_data is not None
        calibration = calibration_inputs(
            DetectionDataset(train_data, detection_eval(), train=False),
            args.calibration_images,
            lambda item: item["image"],
        )
        loader = _loader(cfg, val, train=False)

        def coco_ap(exported: Exported) -> float:
            def run(images: list[Tensor]) -> list[dict[str, Tensor]]:
                names = ("boxes", "labels", "scores")
                return [dict(zip(names, exported.tensors(image))) for image in images]

            task = DetectTask(val, backend=cfg.coco_backend)
            return task.evaluate(run, loader, torch.device("cpu"))["coco"]["AP"] or 0.0  # type: ignore[arg-type]

        print(quantize_and_report(target, calibration, coco_ap, "COCO AP", spec))
    return 0


FLAGS = {**COMMON_FLAGS, "image_size": "model.min_size", "coco_backend": "coco_backend"}


def _main(argv: Sequence[str] | None) -> int:
    parser = common_parser(TASK, "Train, evaluate and predict Faster R-CNN detectors on COCO, VOC or YOLO data.")
    parser.add_argument(
        "--predictions",
        help="eval: score this COCO-results file (or a folder of KITTI result files, <image>.txt), with no model",
    )
    parser.add_argument("--coco-backend", choices=("faster-coco-eval", "pycocotools"))
    add_cam_options(parser, by_class=False)
    parser.add_argument(
        "--save-txt",
        action="store_true",
        help="predict: also write labels/<image>.txt in YOLO's form (class x_center y_center width height, "
        "normalised), which --data reads back",
    )
    parser.add_argument("--save-conf", action="store_true", help="predict --save-txt: end each line with the score")
    parser.add_argument(
        "--save-kitti",
        action="store_true",
        help="predict: also write kitti/<image>.txt, KITTI result files of every detection the model keeps (not only "
        "those over show_score_thresh), as the benchmark's server takes them",
    )
    args = parser.parse_args(argv)
    if args.save_conf and not args.save_txt:
        parser.error("--save-conf adds the score to the lines of --save-txt; give both")
    cfg = resolve_config(DetectConfig(), args, command_flags(args, FLAGS), embedded="detect/shapes")
    if args.command in ("train", "eval"):
        start_processes(cfg.train)  # joins torchrun's process group, if any
    commands = {"train": train, "eval": evaluate, "predict": predict, "export": export}
    return commands[args.command](cfg, args)


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
