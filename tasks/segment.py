"""Semantic segmentation: ``python -m tasks.segment [train|eval|predict] ...``, a U-Net on any backbone.

Data is Pascal VOC's segmentation layout (``SegmentationClass/``, ``ImageSets/Segmentation/``)
or ``images/<split>/`` with ``masks/<split>/`` class-index PNGs, detected from the layout.
With no ``--data`` it trains on the built-in shapes dataset with ``configs/segment/shapes.yaml``.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from backbones import build_backbone
from backbones.inference import fast_inference
from heads.segmentation import DEFAULT_DECODER_CHANNELS, SegmentationLoss, UNet, UNetHead
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
from tasks.data.embedded import shapes_dataset
from tasks.data.holdout import DEFAULT_FRACTION, fraction_for_eval
from tasks.data.images import READ_ERRORS, DecodedCache, load_rgb
from tasks.data.public_sets import public_set
from tasks.data.segmentation import (
    MASK_MODES,
    SegmentationData,
    SegmentationDataset,
    checked_mask,
    collate_segmentation,
    load_segmentation,
    usable_mask,
)
from tasks.data.transforms import segmentation_eval, segmentation_train
from tasks.engine import Setup, evaluate_split, make_loader, resolve_device, seed_everything, start_processes
from tasks.errors import UserError
from tasks.export import (
    Exported,
    ExportSpec,
    calibration_inputs,
    default_target,
    export_and_check,
    quantize_and_report,
    serving_model,
)
from tasks.io import PNG_OPTIONS, atomic_write, write_json
from tasks.metrics.lanes import BOUND_PIXELS, lane_meter
from tasks.metrics.segmentation import SegmentationMeter
from tasks.tiles import predict_classes
from tasks.visualize import bars_png, confusion_png, overlay_mask, palette_mask, save_png

TASK = "segment"
PNG_COUNT = 8


def build_model(
    backbone: str,
    num_classes: int,
    *,
    weights: str | None = None,
    decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
    attention: Literal["scse"] | None = None,
    input_scale: float = 1.0,
    **backbone_options: Any,
) -> UNet:
    """A U-Net on any registered backbone; ``backbone_options`` go to :func:`build_backbone`.

    With default options on ``resnet34`` or ``resnet50`` the model has the parameters of
    ``smp.Unet`` with the same encoder, and :func:`heads.segmentation.from_smp_state_dict`
    loads its checkpoints.
    """
    net = build_backbone(backbone, weights=weights, **backbone_options)
    head = UNetHead(net.feature_info, num_classes, decoder_channels=decoder_channels, attention=attention)
    return UNet(net, head, input_scale=input_scale)


@dataclass
class ModelConfig:
    backbone: str = "resnet34"
    weights: str | None = None
    decoder_channels: list[int] = field(default_factory=lambda: list(DEFAULT_DECODER_CHANNELS))
    attention: Literal["scse"] | None = None
    # the network runs on images shrunk by this factor, its logits upsampled back (heads.segmentation.UNet);
    # auto: 1.0, or less where a time budget holds too few passes at full size (tasks/recipes.py)
    input_scale: float | Auto = "auto"
    frozen_stages: int = -1
    norm: Literal["bn", "frozen_bn", "sync_bn", "gn"] = "bn"
    zero_init_residual: bool | Auto = "auto"  # from scratch: true (tasks/recipes.py); torchvision: false
    ce_weight: float = 1.0
    dice_weight: float = 1.0  # CE + Dice: cross-entropy alone settles on background for small objects
    label_smoothing: float = 0.0


@dataclass
class DataConfig:
    root: str | None = None
    format: Literal["auto", "voc", "masks", "coco", "yolo", "labelme"] = "auto"
    train_split: str | None = None
    val_split: str | None = None
    val_fraction: float = DEFAULT_FRACTION  # held out for validation where the data has no val split
    classes: list[str] | None = None
    crop_size: int | Auto = "auto"
    scale_min: float | Auto = "auto"
    scale_max: float | Auto = "auto"
    hflip: float = 0.5
    color_jitter: float | Auto = "auto"
    # eval and predict run images with a side over this many pixels in overlapping tiles of this size, so that
    # memory stays that of one tile (tasks/tiles.py); 0: every image whole
    tile_size: int = 1024


@dataclass
class SegmentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=8))
    output: str | None = None


class SegmentTask:
    """The engine's view of segmentation: cross-entropy (+ Dice) in training, the pixel confusion
    matrix in evaluation.

    ``keep_masks`` predicted masks (the first ones of the split; ``None`` for all) are kept
    from each evaluation, PNG-encoded and gathered from every process into ``masks``. Images with a side over
    ``tile`` pixels are predicted in overlapping tiles (:func:`tasks.tiles.predict_classes`).
    """

    name = TASK
    main_metric = "mIoU"

    def __init__(
        self, class_names: Sequence[str], loss: SegmentationLoss, *, keep_masks: int | None = 0, tile: int = 0
    ) -> None:
        self.class_names = list(class_names)
        self.loss = loss
        self.keep_masks = keep_masks
        self.tile = tile
        self.masks: dict[int, bytes] = {}

    def to_device(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        out = {**batch, "images": batch["images"].to(device, non_blocking=True)}
        if batch["masks"] is not None:
            out["masks"] = batch["masks"].to(device, non_blocking=True)
        return out

    def losses(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        return self.loss(model(batch["images"]), batch["masks"])

    def evaluate(self, model: nn.Module, loader: Iterable[dict[str, Any]], device: torch.device) -> dict[str, Any]:
        meter = SegmentationMeter(len(self.class_names))
        lanes = lane_meter(self.class_names, ignore_index=meter.ignore_index)  # BDD100K lane data only
        kept: dict[int, bytes] = {}
        for batch in loader:
            if batch["batch_size"] == 0:
                continue
            batch = self.to_device(batch, device)
            predicted = predict_classes(model, batch["images"], tile=self.tile)  # (N, H, W), padding included
            if batch["masks"] is not None:
                meter.update(predicted, batch["masks"])  # padding is void in the masks
                if lanes is not None:
                    lanes.update(predicted, batch["masks"])
            for index, (height, width), mask in zip(batch["indices"], batch["sizes"], predicted):
                if self.keep_masks is None or index < self.keep_masks:
                    kept[index] = encode_mask(mask[:height, :width].cpu().numpy())
        self.masks = {k: v for part in distributed.gather(kept) for k, v in part.items()}
        metrics = meter.compute(self.class_names)
        if lanes is not None:
            metrics["lane_f_score"] = lanes.compute()
        return metrics


def encode_mask(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    palette_mask(mask).save(buffer, format="PNG", **PNG_OPTIONS)
    return buffer.getvalue()


def _model_args(cfg: SegmentConfig, num_classes: int) -> dict[str, Any]:
    m = cfg.model
    if m.input_scale != "auto" and not 0 < m.input_scale <= 1:
        raise UserError(f"model.input_scale must be in (0, 1] (1: full size), got {m.input_scale}")
    return dict(
        backbone=m.backbone,
        num_classes=num_classes,
        decoder_channels=list(m.decoder_channels),
        attention=m.attention,
        input_scale=1.0 if m.input_scale == "auto" else m.input_scale,
        frozen_stages=m.frozen_stages,
        norm=m.norm,
    )


def _loss(cfg: SegmentConfig) -> SegmentationLoss:
    m = cfg.model
    try:
        return SegmentationLoss(ce_weight=m.ce_weight, dice_weight=m.dice_weight, label_smoothing=m.label_smoothing)
    except ValueError as error:
        raise UserError(f"model.ce_weight/model.dice_weight: {error}") from None


def _shrunk(scale: float) -> str:
    return f" run at ×{scale:g}" if scale < 1 else ""


def _root(cfg: SegmentConfig) -> Path:
    if cfg.data.root is not None:
        root = Path(cfg.data.root)
        yaml = root.is_file() and root.suffix in (".yaml", ".yml")
        if not (root.is_dir() or yaml or public_set(root) == "mapillary"):  # or the config of Mapillary's label set
            raise UserError(f"--data {root} is neither a folder nor a data YAML")
        return root
    root = shapes_dataset()
    if distributed.is_main():
        print(f"no --data given: using the built-in shapes dataset at {root}")
    return root


def _tile(cfg: SegmentConfig) -> int:
    """``data.tile_size``, checked: 0 (whole images) or a tile that holds a U-Net's deepest stride twice."""
    tile = cfg.data.tile_size
    if 0 < tile < 64:
        raise UserError(f"data.tile_size must be 0 (whole images) or at least 64 pixels, got {tile}")
    return tile


def _data(cfg: SegmentConfig, *, need_train: bool) -> tuple[SegmentationData | None, SegmentationData]:
    root, d = _root(cfg), cfg.data
    options = dict(fmt=d.format, val_fraction=d.val_fraction)
    train = load_segmentation(root, d.train_split or "train", classes=d.classes, **options) if need_train else None
    classes = train.class_names if train is not None else d.classes
    val = load_segmentation(root, d.val_split or "val", classes=classes, **options)
    return train, val


def _loader(cfg: SegmentConfig, data: SegmentationData, *, train: bool) -> Any:
    d = cfg.data
    transform = (
        segmentation_train(
            d.crop_size,
            scale=(d.scale_min, d.scale_max),
            hflip=d.hflip,
            color_jitter=d.color_jitter,
            seed=cfg.train.seed,
        )
        if train
        else segmentation_eval()
    )
    return make_loader(
        SegmentationDataset(data, transform),
        batch_size=recipes.batch_or_standard(cfg, TASK),
        train=train,
        workers=cfg.train.workers,
        collate_fn=collate_segmentation,
        seed=cfg.train.seed,
    )


def _write_masks(masks: dict[int, bytes], data: SegmentationData, run_dir: Path, *, overlays: int) -> None:
    """Predicted masks as ``masks/<image id>.png`` at each image's size; overlays for the first ones."""
    for index, encoded in sorted(masks.items()):
        sample = data.samples[index]
        atomic_write(run_dir / "masks" / f"{sample.image_id}.png", lambda handle, b=encoded: handle.write(b))
        if index < overlays:
            try:
                image = load_rgb(sample.image)
            except READ_ERRORS:
                continue
            mask = np.asarray(Image.open(io.BytesIO(encoded)))
            save_png(overlay_mask(image, mask), run_dir / "overlays" / f"{sample.image_id}.png")


def write_figures(metrics: dict[str, Any], run_dir: Path) -> None:
    """per_class_iou.png (a bar per class) and the pixels' confusion matrix as each true class's shares."""
    names = list(metrics["per_class_iou"])
    title = f"IoU per class (mIoU {metrics['mIoU'] or 0:.3f})"
    pictures = {
        "per_class_iou.png": bars_png(metrics["per_class_iou"], title=title, ylabel="IoU"),
        "confusion_matrix_normalized.png": confusion_png(
            metrics["confusion_matrix"], names, normalize=True, title="pixels: share of each true class"
        ),
    }
    for name, png in pictures.items():
        atomic_write(run_dir / name, lambda handle, data=png: handle.write(data))


def _report(metrics: dict[str, Any], run_dir: Path, *, masks: bool = True) -> None:
    """metrics.json, the figures of :func:`write_figures`, and the summary (``masks``: the run wrote masks/)."""
    write_json(run_dir / "metrics.json", metrics)
    write_figures(metrics, run_dir)
    for key in ("mIoU", "mDice", "pixel_accuracy", "mean_class_accuracy"):
        value = metrics[key]
        print(f"  {key:<20} {'n/a' if value is None else f'{value:.4f}'}")
    print(f"  {per_class_line(metrics['per_class_iou'])}")
    if "lane_f_score" in metrics:
        print(f"  {lane_line(metrics['lane_f_score'])}")
    written = "masks/, overlays/, " if masks else ""
    print(f"metrics, {written}per_class_iou.png and the confusion matrix are in {run_dir}")


def lane_line(scores: dict[str, Any]) -> str:
    """The summary's line of BDD100K's lane F-scores (:mod:`tasks.metrics.lanes`)."""
    values = [scores[f"F1_pix{bound}"] for bound in BOUND_PIXELS]
    shown = " / ".join("n/a" if v is None else f"{v:.4f}" for v in values)
    bounds = "/".join(str(bound) for bound in BOUND_PIXELS)
    return f"lane F1 within {bounds} px: {shown} (BDD100K's lane-marking categories, the toolkit's F-scores)"


SHOWN_CLASSES = 20  # more classes than this (ADE20K's 150) are summed up by the lowest and highest IoUs


def per_class_line(per_class: dict[str, float | None], shown: int = SHOWN_CLASSES) -> str:
    """The summary's per-class IoU line: every class where there are at most ``shown``, else the five lowest and
    five highest of the scored ones (a class with no IoU is absent from the ground truth and the predictions)."""

    def item(name: str, value: float | None) -> str:
        return f"{name} {'n/a' if value is None else f'{value:.3f}'}"

    if len(per_class) <= shown:
        return "per-class IoU: " + ", ".join(item(k, v) for k, v in per_class.items())
    scored = sorted(((v, k) for k, v in per_class.items() if v is not None), key=lambda pair: pair[0])
    head = f"per-class IoU of {len(scored)} scored class(es) of {len(per_class)} (all in metrics.json)"
    if len(scored) <= 10:
        return f"{head}: " + ", ".join(item(k, v) for v, k in scored)
    lowest = ", ".join(item(k, v) for v, k in scored[:5])
    highest = ", ".join(item(k, v) for v, k in reversed(scored[-5:]))
    return f"{head}: lowest {lowest}; highest {highest}"


def setup(cfg: SegmentConfig, *, resumed: frozenset[str] = frozenset()) -> Setup:
    """The model, task and loaders of a training run under ``cfg``, its auto fields resolved from the data."""
    check_backbone_name(cfg.model.backbone)
    seed_everything(cfg.train.seed)
    train_data, val = _data(cfg, need_train=True)
    assert train_data is not None
    facts = recipes.run_facts(
        TASK,
        cfg,
        device=resolve_device(cfg.train.device).type,
        train_images=len(train_data.samples),
        val_images=len(val.samples),
        num_classes=len(train_data.class_names),
        image_sizes=recipes.sample_sizes([s.image for s in train_data.samples]),
    )
    cfg, recipe = recipes.resolve_static(cfg, facts, resumed=resumed)
    model_args = _model_args(cfg, len(train_data.class_names))
    model = build_model(weights=cfg.model.weights, **model_args, **recipes.init_options(cfg))
    task = SegmentTask(train_data.class_names, _loss(cfg), keep_masks=PNG_COUNT, tile=_tile(cfg))

    def step_seconds_at(scale: float, rough: bool = False) -> float:
        """One training step on training crops (before the augmentation strength is known) at ``scale``."""
        model.input_scale = scale
        crops = segmentation_train(cfg.data.crop_size, scale=(1.0, 1.0), hflip=0.0, color_jitter=0.0)  # type: ignore[arg-type]
        probe = SegmentationDataset(train_data, crops)
        device = resolve_device(cfg.train.device)
        return recipes.measure_batch(task, model, probe, collate_segmentation, cfg.train, device, rough=rough)

    def step_seconds() -> float:  # rough, at full size: it only chooses the scale
        return step_seconds_at(1.0, rough=True)

    cfg = recipes.resolve_length(cfg, recipe, facts, seconds_per_step=step_seconds, scale_probe=step_seconds_at)
    model.input_scale = model_args["input_scale"] = float(cfg.model.input_scale)  # type: ignore[arg-type]
    return Setup(
        model=model,
        task=task,
        train_loader=_loader(cfg, train_data, train=True),
        val_loader=_loader(cfg, val, train=False),
        val_data=val,
        meta=dict(task=TASK, model_args=model_args, class_names=train_data.class_names, config=to_dict(cfg)),
        summary=f"{cfg.model.backbone} U-Net: {len(train_data.class_names)} classes, {len(train_data.samples)} "
        f"train / {len(val.samples)} val images, {cfg.data.crop_size}px crops{_shrunk(model.input_scale)}, "
        f"{cfg.train.epochs} epochs",
        config=cfg,
        recipe=recipe,
        input_size=(cfg.data.crop_size, cfg.data.crop_size),  # type: ignore[arg-type]
    )


def train(cfg: SegmentConfig, args: argparse.Namespace) -> int:
    resume = resume_from(args.resume, cfg.output)
    cfg, resumed = resumed_recipe(cfg, resume, TASK)
    parts = setup(cfg, resumed=resumed)
    metrics, run_dir = fit(TASK, cfg, parts, resume)
    if distributed.is_main():
        task: SegmentTask = parts.task  # type: ignore[assignment]
        _write_masks(task.masks, parts.val_data, run_dir, overlays=PNG_COUNT)
        _report(metrics, run_dir)
    return 0


def _load_model(path: Path) -> tuple[UNet, dict[str, Any]]:
    model, checkpoint = load_model(path, task=TASK, build=lambda args: build_model(**args))
    model.backbone = fast_inference(model.backbone)
    return model, checkpoint  # type: ignore[return-value]


def score_predicted_masks(folder: Path, data: SegmentationData) -> dict[str, Any]:
    """The metrics of the masks in ``folder``, ``<image id>.png`` of class indices (what ``predict`` and ``eval``
    write to ``masks/``), against ``data``'s: one line naming the folder where a mask is missing, and one naming a
    mask whose size or values are wrong. A ground-truth mask that cannot be read is skipped and counted, as
    evaluation with a model skips it. Scored in this process alone: the same under any number of processes."""
    if not folder.is_dir():
        raise UserError(f"--predictions {folder} is not a folder (expected one of <image id>.png masks)")
    masks = [folder / f"{sample.image_id}.png" for sample in data.samples]
    missing = [path for path in masks if not path.is_file()]
    if missing:
        raise UserError(
            f"--predictions {folder} lacks the masks of {len(missing)} of the {len(masks)} image(s) of "
            f"{data.source}, such as {missing[0]} (expected <image id>.png, as predict and eval write them)"
        )
    names, decoded = data.class_names, DecodedCache()  # a budget of 0: nothing kept, each mask read once
    meter = SegmentationMeter(len(names))
    lanes = lane_meter(names, ignore_index=meter.ignore_index)
    unreadable = 0
    for sample, path in zip(data.samples, masks):
        truth = usable_mask(decoded, sample, len(names)) if sample.mask is not None else None
        if truth is None:  # named and skipped, as the loader does
            unreadable += 1
            continue
        try:
            with Image.open(path) as header:
                mode = header.mode
            if mode not in MASK_MODES:
                raise UserError(f"predicted mask {path} is a {mode} image; expected a palette or single-channel PNG")
            predicted = checked_mask(decoded, path, len(names), shape=truth.shape)
        except READ_ERRORS as error:
            raise UserError(f"predicted mask {path} cannot be read: {error}") from None
        if isinstance(predicted, str) or (predicted == meter.ignore_index).any():
            problem = predicted if isinstance(predicted, str) else "void (255) where each pixel needs a class"
            raise UserError(f"predicted mask {path}: {problem}")
        found, true = torch.from_numpy(predicted.astype(np.int64)), torch.from_numpy(truth.astype(np.int64))
        meter.update(found, true)
        if lanes is not None:
            lanes.update(found, true)
    if unreadable:
        print(f"skipped {unreadable} image(s) whose ground-truth mask could not be scored")
    metrics = meter.compute(names, across_processes=False)
    if lanes is not None:
        metrics["lane_f_score"] = lanes.compute(across_processes=False)
    return metrics


def evaluate(cfg: SegmentConfig, args: argparse.Namespace) -> int:
    if args.predictions is not None:
        _, val = _data(cfg, need_train=False)
        metrics = score_predicted_masks(Path(args.predictions), val)
        if distributed.is_main():
            run_dir = new_run_dir(cfg.output, TASK, "eval")
            write_config(run_dir, cfg)
            _report(metrics, run_dir, masks=False)
        return 0
    path = require_checkpoint(args)
    model, checkpoint = _load_model(path)
    class_names = list(checkpoint["class_names"])
    if cfg.data.classes is None:
        cfg.data.classes = class_names
    cfg.data.val_fraction = fraction_for_eval(cfg.data.val_fraction, checkpoint)
    _, val = _data(cfg, need_train=False)
    check_num_classes(checkpoint, len(val.class_names), path=path)
    run_dir = new_run_dir(cfg.output, TASK, "eval")
    write_config(run_dir, cfg)
    device = resolve_device(cfg.train.device)
    task = SegmentTask(class_names, _loss(cfg), keep_masks=None, tile=_tile(cfg))
    metrics, skipped = evaluate_split(task, model.to(device), _loader(cfg, val, train=False), device)
    if distributed.is_main():
        if skipped is not None:
            print(skipped)
        _write_masks(task.masks, val, run_dir, overlays=PNG_COUNT)
        _report(metrics, run_dir)
    return 0


def predict(cfg: SegmentConfig, args: argparse.Namespace) -> int:
    path = require_checkpoint(args)
    images = PredictImages(args.inputs, "photo.jpg photos/")
    model, meta = serving_model(path, _load_model)  # a checkpoint, or an exported file alone
    class_names = list(meta["class_names"])
    run_dir = new_run_dir(cfg.output, TASK, "predict")
    transform = segmentation_eval()
    results = []
    for image_path, image in images:
        tensor, _ = transform(image)
        batch = collate_segmentation([{"image": tensor, "mask": None, "index": 0, "size": image.shape[:2]}])
        height, width = image.shape[:2]
        with torch.inference_mode():
            classes = predict_classes(lambda x: model(x)[0], batch["images"], tile=_tile(cfg))
            mask = classes[0, :height, :width].numpy()
        name = f"{images.output_name(image_path)}.png"
        save_png(palette_mask(mask), run_dir / "masks" / name)
        save_png(overlay_mask(image, mask), run_dir / "overlays" / name)
        counts = np.bincount(mask.ravel(), minlength=len(class_names))
        fractions = {class_names[i]: round(float(c) / mask.size, 4) for i, c in enumerate(counts) if c}
        results.append(
            {"path": str(image_path), "mask": f"masks/{name}", "overlay": f"overlays/{name}", "classes": fractions}
        )
        shown = ", ".join(f"{name} {share:.0%}" for name, share in sorted(fractions.items(), key=lambda kv: -kv[1]))
        print(f"{image_path}: {shown}")
    write_json(run_dir / "predictions.json", results)
    skipped = f", {images.skipped} unreadable skipped" if images.skipped else ""
    print(f"{len(results)} image(s) predicted{skipped}; masks and overlays are in {run_dir}")
    return 0


def export_spec(model: nn.Module, size: int) -> ExportSpec:
    """Normalised images (N, 3, H, W) in, logits (N, K, H, W) out; batch, height and width dynamic."""
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, size, size, generator=generator)
    other = torch.randn(1, 3, size + 32, size + 16, generator=generator)
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    return ExportSpec(model.eval(), (example,), ["images"], ["logits"], axes, [(other,)])


def export(cfg: SegmentConfig, args: argparse.Namespace) -> int:
    path = require_checkpoint(args)
    model, checkpoint = load_model(path, task=TASK, build=lambda a: build_model(**a))  # eager: exporters trace it
    fmt = export_format(args)
    size = int(checkpoint.get("config", {}).get("data", {}).get("crop_size", 256))
    class_names = list(checkpoint["class_names"])
    metadata = dict(task=TASK, class_names=class_names)
    target = default_target(path, fmt, args.output)
    spec = export_spec(model, size)
    print(export_and_check(spec, fmt, target, metadata))
    if args.quantize:
        if cfg.data.classes is None:
            cfg.data.classes = class_names
        cfg.data.val_fraction = fraction_for_eval(cfg.data.val_fraction, checkpoint)
        train_data, val = _data(cfg, need_train=True)
        assert train_data is not None
        calibration = calibration_inputs(
            SegmentationDataset(train_data, segmentation_eval()),
            args.calibration_images,
            lambda item: collate_segmentation([item])["images"],
        )
        loader = _loader(cfg, val, train=False)

        def miou(exported: Exported) -> float:
            def run(x: Tensor) -> Tensor:
                return exported.tensors(x)[0]

            task = SegmentTask(class_names, _loss(cfg), tile=_tile(cfg))
            return task.evaluate(run, loader, torch.device("cpu"))["mIoU"] or 0.0  # type: ignore[arg-type]

        print(quantize_and_report(target, calibration, miou, "mIoU", spec))
    return 0


FLAGS = {**COMMON_FLAGS, "image_size": "data.crop_size"}


def _main(argv: Sequence[str] | None) -> int:
    parser = common_parser(TASK, "Train, evaluate and predict U-Net semantic segmentation.")
    parser.add_argument(
        "--predictions",
        help="eval: score the masks in this folder (<image id>.png of class indices, as predict and eval write them "
        "to masks/), with no model",
    )
    args = parser.parse_args(argv)
    cfg = resolve_config(SegmentConfig(), args, command_flags(args, FLAGS), embedded="segment/shapes")
    if args.command in ("train", "eval"):
        start_processes(cfg.train)  # joins torchrun's process group, if any
    return {"train": train, "eval": evaluate, "predict": predict, "export": export}[args.command](cfg, args)


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
