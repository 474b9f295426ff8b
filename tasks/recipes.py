"""The auto recipe: every training choice resolved from facts about the run, each with its reason.

A config field left at ``auto`` is filled here from :class:`RunFacts` (the task, the data's size,
image and box sizes, the class count, pretrained or not, the batch) and, for the run length, from
the measured time of one training step. A field the user set keeps its value and is reported as
set. ``train.recipe: fixed`` fills the ``auto`` fields with fixed generic values instead (torchvision's
reference settings), which is what this library did before the recipe existed.

The rules, in one place (docs/results.md has the measurements behind them):

- **Optimizer.** AdamW for classification and segmentation, SGD with momentum for detection and
  multi-task (torchvision's detection reference). The choice does not depend on the run length, so
  there is no cliff where a longer run switches optimizer (Ultralytics' ``optimizer=auto`` changes
  from AdamW 0.002·5/(4+classes) to SGD 0.01 at 10k iterations).
- **Rate.** A reference rate at a reference batch, scaled by the square root of the effective batch
  (batch × accumulation × processes) over the reference: Krizhevsky's rule for SGD, Malladi et
  al.'s for Adam. Linear scaling (Goyal et al.) under-scales the small batches of a CPU run.
- **Fine-tuning.** Pretrained weights give the backbone a tenth of the head's rate (classification,
  segmentation) and a smaller weight decay; detection keeps torchvision's rate with frozen
  BatchNorm and stem (``tasks.detect.build_model``).
- **Initialisation.** From scratch, the last norm of every residual block starts at zero, so that each block
  starts as the identity (Goyal et al. 2017; mmdetection's and timm's default, torchvision's option).
- **Warmup.** 5% of the optimizer steps, at least 50 (or a fifth of a shorter run), at most 1,000.
- **Length.** Epochs that give 2,000 optimizer steps from scratch or 600 when fine-tuning, capped
  by the time budget: ``--time`` when given (the run then uses all of it), else 10 minutes on a CPU.
- **Image size.** The training images' typical size rounded up to a multiple of 32, never above the
  task's standard size: images are not upscaled beyond what they hold.
- **Augmentation.** Sized to the number of passes over the data: up to 10 epochs, mild; from
  100 epochs, ImageNet's and detectron2's standard strengths; in between on a log scale.
"""

from __future__ import annotations

import copy
import math
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from tasks.config import ConfigError, apply, nested_update, unresolved

AUTO = "auto"
TaskName = Literal["classify", "detect", "segment", "multitask"]

CPU_BUDGET_SECONDS = 600.0  # the default cap on a CPU when neither --epochs nor --time is given
TARGET_STEPS = {False: 2000, True: 600}  # optimizer steps, from scratch / fine-tuning
MAX_EPOCHS = 300
MIN_EVALUATIONS = 3  # a time budget that holds fewer passes than this trains in shorter epochs
# Short epochs are planned on this share of the budget: one probed step misses the data loading and the first
# steps' warm-up. After each epoch the engine refits the steps of those still to run to the measured pace, so the
# first epoch is the one the estimate must not overrun.
SHORT_PLAN_SHARE = 0.9
EVAL_COST = 0.35  # an evaluated image costs about this share of a trained one (forward only, no augmentation)
# ``model.input_scale: auto`` (segmentation): where a time budget holds fewer than MIN_PASSES passes over the
# training images at full resolution, the U-Net runs on images shrunk so that about MIN_PASSES fit (the work
# goes with the square of the scale), but its training crops keep at least MIN_INPUT_SIDE pixels a side and
# the scale stays at least MIN_INPUT_SCALE. A model that has seen each image once at full resolution has
# learned less than one that has seen it eight times at a third of it: on 400-560 px images a 3-minute
# budget holds under one pass at full size (docs/results.md).
MIN_PASSES = 8
MIN_INPUT_SIDE = 128
MIN_INPUT_SCALE = 0.25
# Detection shrinks its images (``model.min_size`` and ``max_size``) by the same rule, but no further than keeps
# the 5th percentile of the training boxes at MIN_BOX_SIDE pixels: 4 cells of the stride-4 level.
MIN_BOX_SIDE = 16


@dataclass(frozen=True)
class Reference:
    """A task's reference settings: the rate at the reference batch, and the weight decay."""

    optimizer: Literal["sgd", "adamw"]
    lr: float
    batch: int
    weight_decay: float
    weight_decay_pretrained: float
    source: str


REFERENCES: dict[str, Reference] = {
    "classify": Reference("adamw", 2e-3, 64, 0.05, 0.01, "AdamW, at any run length"),
    "segment": Reference("adamw", 2e-3, 8, 0.01, 0.01, "AdamW, as smp's U-Net examples"),
    "detect": Reference("sgd", 0.02, 16, 1e-4, 1e-4, "torchvision's detection reference, 0.02 at batch 16"),
    # multi-task: AdamW, not detection's SGD. On the blobs tuning set (--time 6m) SGD 0.014 left the U-Net head
    # at background everywhere (mIoU 0.341, AP 0.022); AdamW 0.0005 reached mIoU 0.635, AP 0.040 (results.md)
    "multitask": Reference("adamw", 1e-3, 32, 0.05, 0.01, "AdamW: the U-Net head learns under it, not SGD"),
}

# What ``recipe: fixed`` puts in an ``auto`` field: the generic settings the runners had before.
FIXED: dict[str, dict[str, Any]] = {
    task: {
        "train.optimizer": "sgd",
        "train.lr": lr,
        "train.weight_decay": 1e-4,
        "train.epochs": 12,
        "train.warmup_epochs": warmup,
    }
    for task, lr, warmup in (
        ("classify", 0.1, 0.0),
        ("detect", 0.02, 1.0),
        ("segment", 0.01, 1.0),
        ("multitask", 0.01, 1.0),
    )
}
FIXED_COMMON: dict[str, Any] = {"train.backbone_lr_scale": 1.0, "train.clip_grad": None}
# ``batch_size: auto``: the task's standard batch per process, halved while a pass over the training images
# would hold fewer than MIN_STEPS_PER_PASS optimizer steps, down to the task's smallest batch. On a small set
# the steps, not the images per step, are what a short run lacks: on large images a CPU trains about as many
# images per second at batch 16 as at 32, and twice the steps at half the batch learn more in the same time. On
# tiny images a step's fixed cost dominates and the smaller batch trains fewer images per second (25 px faces:
# 46 against 69 images/s, docs/results.md). So under a time budget a halving is then weighed against its cost
# (:func:`weigh_batch`): two probe steps split a step's seconds into a fixed part (the optimizer, the layers'
# overhead) and a part per image, and a halving is undone where it costs more images per second than its steps
# give back.
STANDARD_BATCH = {"classify": 32, "segment": 8, "multitask": 8, "detect": 4}
SMALLEST_BATCH = {"classify": 8, "segment": 4, "multitask": 4, "detect": 2}
MIN_STEPS_PER_PASS = 16
COST_PROBE_IMAGES = (2, 8)  # the two probe steps that split a step's seconds into fixed and per-image parts
STANDARD_SIZE = {"classify": 224, "segment": 512, "multitask": 512, "detect": 800}
DETECT_MAX_SIZE = 1333


@dataclass(frozen=True)
class RunFacts:
    """What the recipe knows about a run before it starts."""

    task: TaskName
    train_images: int
    val_images: int
    num_classes: int
    image_sizes: tuple[tuple[int, int], ...]  # (width, height) of up to 200 training images
    pretrained: bool
    batch_size: int
    accumulate: int = 1
    processes: int = 1
    device: str = "cpu"
    box_sizes: tuple[float, ...] = ()  # sqrt(area) of training boxes in their images' own pixels
    step_cost: StepCost | None = None  # where weigh_batch measured it

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.accumulate * self.processes

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch, as the engine counts them (full batches per process, then accumulation)."""
        per_process = math.ceil(self.train_images / self.processes)
        batches = per_process // self.batch_size if per_process > self.batch_size else 1
        return max(batches // self.accumulate, 1)


def run_facts(
    task: TaskName,
    config: Any,
    *,
    device: str,
    train_images: int,
    val_images: int,
    num_classes: int,
    image_sizes: tuple[tuple[int, int], ...],
    box_sizes: tuple[float, ...] = (),
) -> RunFacts:
    """The facts of a run under a runner's ``config`` (its weights, batch and accumulation) and process group.
    A batch left at ``auto`` is the one :func:`auto_batch` chooses (the standard one under ``recipe: fixed``)."""
    from tasks import distributed

    batch = batch_or_standard(config, task)
    if config.train.batch_size == AUTO and config.train.recipe == AUTO:
        batch = auto_batch(task, train_images, config.train.accumulate * distributed.world_size())
    return RunFacts(
        task=task,
        train_images=train_images,
        val_images=val_images,
        num_classes=num_classes,
        image_sizes=image_sizes,
        box_sizes=box_sizes,
        pretrained=config.model.weights is not None,
        batch_size=batch,
        accumulate=config.train.accumulate,
        processes=distributed.world_size(),
        device=device,
    )


def auto_batch(task: TaskName, train_images: int, per_step: int = 1) -> int:
    """The per-process batch for ``train_images``: the task's standard one, halved while a pass would hold fewer
    than MIN_STEPS_PER_PASS optimizer steps (``per_step``: processes times accumulation), at least the task's
    smallest."""
    batch = STANDARD_BATCH[task]
    while batch > SMALLEST_BATCH[task] and train_images < MIN_STEPS_PER_PASS * batch * per_step:
        batch //= 2
    return max(batch, SMALLEST_BATCH[task])


@dataclass(frozen=True)
class StepCost:
    """A training step's seconds as ``fixed + per_image × batch``, from two probe steps."""

    fixed: float  # what a step costs whatever its batch: the optimizer's update, the layers' overhead
    per_image: float

    def seconds(self, batch: int) -> float:
        return self.fixed + self.per_image * batch

    @classmethod
    def measure(cls, seconds_at: Callable[[int], float], images: tuple[int, int] = COST_PROBE_IMAGES) -> StepCost:
        """From ``seconds_at(n)``, a whole step's seconds (optimizer included) on ``n`` images, at two sizes."""
        small, large = images
        t_small, t_large = seconds_at(small), seconds_at(large)
        per_image = max((t_large - t_small) / (large - small), 0.0)
        return cls(fixed=max(t_small - small * per_image, 0.0), per_image=per_image)


def weighs_batch(config: Any, facts: RunFacts) -> bool:
    """Whether :func:`weigh_batch` applies: the batch is the recipe's, a time budget applies (steps per second
    are what the budget buys), and the step rule halved the standard batch."""
    return (
        config.train.batch_size == AUTO
        and config.train.recipe == AUTO
        and time_budget(config, facts) is not None
        and facts.batch_size < STANDARD_BATCH[facts.task]
    )


def weigh_batch(facts: RunFacts, cost: StepCost) -> int:
    """The step rule's batch, doubled back towards the standard one while the doubling pays under a time budget.
    With the rate scaled by √batch, what a second of training learns goes as √b / t(b), so doubling pays where
    t(2b) ≤ √2 · t(b): where a step's fixed cost outweighs its images'. Large images keep the step rule's batch,
    tiny ones get more images a second."""
    batch = facts.batch_size
    while batch < STANDARD_BATCH[facts.task] and cost.seconds(2 * batch) <= math.sqrt(2) * cost.seconds(batch):
        batch *= 2
    return batch


def batch_or_standard(config: Any, task: TaskName) -> int:
    """The configured batch, or the task's standard one where it is still ``auto`` (evaluation outside training)."""
    batch = config.train.batch_size
    return STANDARD_BATCH[task] if batch == AUTO else int(batch)


def _batch_reason(facts: RunFacts) -> str:
    standard, steps = STANDARD_BATCH[facts.task], facts.steps_per_epoch
    cost = facts.step_cost
    if cost is not None:  # weighed: each halving kept only where it learns more a second
        return (
            f"{standard} halved for ≥ {MIN_STEPS_PER_PASS} steps a pass while that pays at a step of "
            f"{cost.fixed:.3f} s + {cost.per_image * 1000:.1f} ms an image: {steps} steps a pass"
        )
    if facts.batch_size == standard:
        return f"the standard {standard}: a pass over {facts.train_images} images holds {steps} steps"
    return f"{standard} halved, down to {SMALLEST_BATCH[facts.task]}, for ≥ {MIN_STEPS_PER_PASS} steps a pass: {steps}"


@dataclass
class Choice:
    key: str
    value: Any
    reason: str
    auto: bool


@dataclass
class Recipe:
    """The resolved values of one run, in the order they were decided, each with its reason."""

    choices: list[Choice] = field(default_factory=list)
    resumed: frozenset[str] = frozenset()  # keys whose values come from the resumed run's checkpoint
    budget_seconds: float | None = None  # the run's time budget, for the engine's re-planning
    max_epochs: int | None = None  # the most epochs the budget may grow to
    shorten_epochs: bool = False  # short-budget epochs: the engine shortens them rather than drop one
    seconds_per_step: float | None = None

    def block(self) -> str:
        """The block printed once at the start of training."""
        width = max((len(c.key) for c in self.choices), default=0)
        lines = [f"  {c.key:<{width}}  {_show(c.value)}  ({c.reason})" for c in self.choices]
        return "recipe (auto fields resolved from the run; every one can be set by hand):\n" + "\n".join(lines)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {c.key: {"value": c.value, "reason": c.reason, "auto": c.auto} for c in self.choices}


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if value.is_integer() else f"{value:.3g}"
    return str(value)


def get(config: Any, key: str) -> Any:
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


class Resolver:
    """Fills the ``auto`` fields of one config, recording every decision in a :class:`Recipe`."""

    def __init__(self, config: Any, recipe: Recipe) -> None:
        self.config = config
        self.recipe = recipe
        self.enabled = get(config, "train.recipe") == AUTO

    def is_auto(self, key: str) -> bool:
        return isinstance(get(self.config, key), str) and get(self.config, key) == AUTO

    def assign(self, key: str, value: Any, reason: str) -> None:
        """Set a field that has no ``auto`` value of its own (the user left it at its default)."""
        self.config = apply(self.config, nested_update(key, value), source="auto recipe")
        self.recipe.choices.append(Choice(key, value, reason, auto=True))

    def auto_choice(self, key: str) -> int | None:
        """The index of the recipe's choice for ``key`` where the recipe (not the user, not a resume) made it."""
        for index, choice in enumerate(self.recipe.choices):
            if choice.key == key:
                return index if choice.auto and key not in self.recipe.resumed else None
        return None

    def decide(self, key: str, value: Any, reason: str, *, fixed: Any = None, revise: bool = False) -> Any:
        """``value`` for an ``auto`` field (or ``fixed`` under ``recipe: fixed``); the user's value otherwise.
        ``revise``: a field the recipe already decided is decided again, its choice replaced in place."""
        if revise and any(c.key == key for c in self.recipe.choices):
            earlier = self.auto_choice(key)
            if earlier is not None and self.enabled:
                self.config = apply(self.config, nested_update(key, value), source="auto recipe")
                self.recipe.choices[earlier] = Choice(key, get(self.config, key), reason, auto=True)
            return get(self.config, key)  # the user's or the resumed value stands, recorded once already
        if not self.is_auto(key):
            current = get(self.config, key)
            resumed = key in self.recipe.resumed
            self.recipe.choices.append(Choice(key, current, "the resumed run's" if resumed else "set", auto=resumed))
            return current
        if not self.enabled:
            value, reason = fixed, "recipe: fixed"
        self.config = apply(self.config, nested_update(key, value), source="auto recipe")
        self.recipe.choices.append(Choice(key, get(self.config, key), reason, auto=True))
        return get(self.config, key)


def round_up_32(value: float) -> int:
    return max(32, 32 * math.ceil(value / 32))


def typical_side(sizes: Sequence[tuple[int, int]], *, longer: bool = False) -> float:
    sides = [max(w, h) if longer else min(w, h) for w, h in sizes]
    return float(statistics.median(sides)) if sides else 0.0


def augmentation_strength(epochs: float) -> float:
    """0 up to 10 passes over the data, 1 from 100, log-linear in between."""
    return min(max(math.log10(max(epochs, 1e-9) / 10), 0.0), 1.0)


def parse_duration(text: str, *, option: str = "--time") -> float:
    """``"15m"``, ``"90s"``, ``"1.5h"``, ``"1h30m"`` (a bare number is minutes) in seconds."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text) * 60
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
    if not parts or re.sub(r"\s", "", "".join(a + b for a, b in parts)) != re.sub(r"\s", "", text):
        raise ConfigError(f"{option} {text!r} must be a duration such as 15m, 90s, 1.5h or 1h30m")
    seconds = sum(float(amount) * {"h": 3600, "m": 60, "s": 1}[unit] for amount, unit in parts)
    if seconds <= 0:
        raise ConfigError(f"{option} {text!r} must be longer than zero")
    return seconds


# Plan fields with a plain default (no "auto") that a resumed run keeps when the command leaves them alone.
KEPT_ON_RESUME = ("train.max_iters_per_epoch", "train.time", "train.patience")
_MISSING = object()


def adopt_resumed(config: Any, saved: Mapping[str, Any]) -> tuple[Any, frozenset[str]]:
    """``--resume``: every field this command leaves at ``auto`` (and the plan fields of KEPT_ON_RESUME left at
    their defaults) takes the value that the resumed run resolved, from its checkpoint's ``config``. The run goes
    on with the recipe it started with: no second probe, no other augmentation or schedule. Returns the config
    and the adopted keys; fields set on this command line win."""

    def saved_value(key: str) -> Any:
        value: Any = saved
        for part in key.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return _MISSING
            value = value[part]
        return value

    defaults = type(config)()
    keys = unresolved(config) + [k for k in KEPT_ON_RESUME if get(config, k) == get(defaults, k)]
    adopted = []
    for key in keys:
        value = saved_value(key)
        if value is _MISSING or value == AUTO or value == get(config, key):
            continue
        config = apply(config, nested_update(key, value), source="the resumed checkpoint's config")
        adopted.append(key)
    return config, frozenset(adopted)


def resolve_static(config: Any, facts: RunFacts, *, resumed: frozenset[str] = frozenset()) -> tuple[Any, Recipe]:
    """Every choice that does not depend on the run length: optimizer, rate, decay, sizes, clipping.
    ``resumed``: the keys :func:`adopt_resumed` took from a resumed run (shown as such in the block)."""
    recipe = Recipe(resumed=resumed)
    r = Resolver(config, recipe)
    ref = REFERENCES[facts.task]
    fixed = {**FIXED_COMMON, **FIXED[facts.task]}
    _image_sizes(r, facts, fixed)
    _precision(r, facts)
    r.decide(  # run_facts chose it already, where it is auto; recorded here
        "train.batch_size", facts.batch_size, _batch_reason(facts), fixed=STANDARD_BATCH[facts.task]
    )

    optimizer = r.decide("train.optimizer", ref.optimizer, ref.source, fixed=fixed["train.optimizer"])
    batch = facts.effective_batch
    scale = math.sqrt(batch / ref.batch)
    if optimizer == ref.optimizer:
        lr, why = ref.lr * scale, f"{ref.lr:g} at batch {ref.batch}, ×√({batch}/{ref.batch})"
    elif optimizer == "adamw":
        lr, why = 1e-3 * math.sqrt(batch / 32), f"AdamW 0.001 at batch 32, ×√({batch}/32)"
    else:
        lr, why = 0.02 * math.sqrt(batch / 16), f"SGD 0.02 at batch 16, ×√({batch}/16)"
    start = "fine-tuning" if facts.pretrained else "from scratch"
    r.decide("train.lr", round(lr, 6), f"{optimizer}, {start}, {why}", fixed=fixed["train.lr"])
    decay = ref.weight_decay_pretrained if facts.pretrained else ref.weight_decay
    if optimizer != ref.optimizer:
        decay = 0.05 if optimizer == "adamw" else 1e-4
    r.decide("train.weight_decay", decay, f"{optimizer}, {start}", fixed=fixed["train.weight_decay"])
    if facts.pretrained and facts.task in ("classify", "segment"):
        r.decide("train.backbone_lr_scale", 0.1, "pretrained backbone, new head", fixed=1.0)
    else:
        why = {"detect": "torchvision's", "multitask": f"{start}: the backbone every head shares"}.get(
            facts.task, start
        )
        r.decide("train.backbone_lr_scale", 1.0, why, fixed=1.0)
    _initialisation(r, facts)
    if facts.task in ("detect", "multitask"):
        r.decide("train.clip_grad", 10.0, "the RPN's early losses spike from random anchors", fixed=None)
    else:
        r.decide("train.clip_grad", None, "not needed with AdamW and warmup", fixed=None)
    return r.config, recipe


def _initialisation(r: Resolver, facts: RunFacts) -> None:
    """``model.zero_init_residual``: from scratch, each residual block's last norm starts at zero, so every block
    starts as the identity (Goyal et al. 2017; mmdetection's and timm's default). torchvision's ResNet leaves it
    off. On the horses reporting set a multi-task run from scratch (--time 6m) went from detection AP 0.083 and
    mIoU 0.720 to 0.458 and 0.836 with it (docs/results.md)."""
    key = "model.zero_init_residual"
    m = r.config.model
    stages = getattr(m, "frozen_stages", None)
    frozen = m.norm == "frozen_bn" or (stages is not None and stages > 0) or getattr(m, "freeze_backbone", False)
    if m.backbone.startswith("timm:"):
        if not r.is_auto(key) and get(r.config, key):
            raise ConfigError(f"{key}: true applies to this library's ResNets; timm models initialise themselves")
        value, why = False, "timm models initialise themselves"
    elif facts.pretrained:
        value, why = False, "pretrained: the weights set every norm"
    elif frozen:
        value, why = False, "from scratch, but frozen layers would keep zeroed blocks at zero"
    else:
        value, why = True, "from scratch: each residual block starts as the identity"
    r.decide(key, value, why, fixed=False)


def init_options(config: Any) -> dict[str, Any]:
    """The backbone's build options that only initialise it (not stored in a checkpoint's ``model_args``: loaded
    weights replace what they set)."""
    return {"zero_init_residual": True} if get(config, "model.zero_init_residual") is True else {}


def _image_sizes(r: Resolver, facts: RunFacts, fixed: dict[str, Any]) -> None:
    short = typical_side(facts.image_sizes)
    standard = STANDARD_SIZE[facts.task]
    seen = f"typical shorter side {short:.0f} px"
    if facts.task == "classify":
        size = min(round_up_32(short), standard)
        size = r.decide("data.image_size", size, f"{seen}, at most {standard}", fixed=standard)
        whole = short <= size
        r.decide(
            "data.crop_pct",
            1.0 if whole else 0.875,
            "images no larger than the input: kept whole" if whole else "ImageNet's centre crop",
            fixed=0.875,
        )
    elif facts.task == "segment":
        size = min(round_up_32(short), standard)
        r.decide("data.crop_size", size, f"{seen}, at most {standard}", fixed=standard)
    elif facts.task == "multitask":
        longer = typical_side(facts.image_sizes, longer=True)
        size = min(round_up_32(longer), standard)
        r.decide("data.image_size", size, f"typical longer side {longer:.0f} px, at most {standard}", fixed=standard)
    if facts.task in ("detect", "multitask"):
        _detector_sizes(r, facts, short)
        _detector_widths(r, facts)


# bfloat16 autocast pays on a CPU with bf16 matrix instructions once the feature maps are large enough: a resnet18
# or resnet50 training step, bfloat16 NHWC against float32 NCHW (docs/results.md, `python -m backbones.bench --mode
# train --amp --channels-last --against-float32`), ran on an Intel Xeon with AMX 0.87-0.92x as fast at 32 px,
# 1.23-1.42x at 64 px, 1.79-2.09x at 128 px and 2.33x at 224 px; on an AMD EPYC with AVX-512 bf16 (no AMX)
# 1.00-1.20x at 32 px, 1.26-1.65x at 64 px, 1.75-1.76x at 128 px and 2.24x at 224 px. Below 64 px the casts
# cost about what the faster products save.
BF16_MIN_SIDE = 64
INPUT_SIDE_KEY = {
    "classify": "data.image_size",
    "segment": "data.crop_size",
    "multitask": "data.image_size",
    "detect": "model.min_size",
}


def amp_dtype(device_type: str) -> torch.dtype:
    """The autocast dtype of ``train.amp`` on a device: float16 (with a gradient scaler) on CUDA, else bfloat16."""
    return torch.float16 if device_type == "cuda" else torch.bfloat16


def amp_scaler(device_type: str, amp: bool) -> torch.amp.GradScaler:
    """The gradient scaler of ``train.amp`` on a device: float16's on CUDA; for bfloat16 or float32 a disabled one,
    whose ``scale`` and ``step`` pass straight through."""
    return torch.amp.GradScaler(device_type, enabled=amp and device_type == "cuda")


def cpu_bf16_units() -> str | None:
    """The bfloat16 matrix instructions of this CPU that oneDNN's convolutions use, where its bf16 kernels outrun
    float32 ones: "AMX" (Intel's tiles), "AVX-512 bf16" (dot products, e.g. AMD Zen 4 and 5), or None."""
    for name, probe in (("AMX", "_is_amx_tile_supported"), ("AVX-512 bf16", "_is_avx512_bf16_supported")):
        try:
            if getattr(torch.cpu, probe)():
                return name
        except (AttributeError, RuntimeError):
            continue
    return None


def _precision(r: Resolver, facts: RunFacts, *, revise: bool = False) -> None:
    """Mixed precision and memory format, from the device, the CPU's matrix units and the input size;
    ``revise``: decided again after a time budget shrank the input (:func:`_budget_scale`)."""
    side = get(r.config, INPUT_SIDE_KEY[facts.task])
    if facts.device == "cuda":
        amp, why = True, "float16 autocast with a gradient scaler on CUDA"
    elif (units := cpu_bf16_units()) is None:
        amp, why = False, "float32: this CPU has no bf16 matrix instructions (AMX or AVX-512 bf16)"
    elif isinstance(side, int) and side < BF16_MIN_SIDE:
        amp, why = False, f"float32: at {side} px the bfloat16 casts cost what {units} saves"
    else:
        amp, why = True, f"bfloat16 autocast: {units}, {side} px inputs (1.2-2.3x faster steps from 64 px)"
    amp = r.decide("train.amp", amp, why, fixed=False, revise=revise)
    if amp:
        layout = "with mixed precision: " + ("tensor cores" if facts.device == "cuda" else "oneDNN's bf16 kernels")
        r.decide("train.channels_last", True, layout + " take NHWC", fixed=False, revise=revise)
    else:
        why = "float32 on this device: NHWC trains no faster"
        r.decide("train.channels_last", False, why, fixed=False, revise=revise)


# The detector's widths under a CPU time budget: the built-in shapes recipes' (configs/detect/shapes.yaml), half
# of torchvision's FPN and a quarter of its box MLP. torchvision's 256 and 1024 were sized for COCO's 80 classes on
# GPUs; on a CPU they cost twice a ResNet-50 at small inputs (128 px, batch 8: a classifier's step 0.69 s, 2.11 s
# with the detector's heads), and a budget buys passes, not width: on the `fills` tuning set a 6-minute multi-task
# run trained 5 epochs instead of 3, and every task gained (docs/results.md).
NARROW_FPN_CHANNELS, NARROW_REPRESENTATION = 128, 256


def _detector_widths(r: Resolver, facts: RunFacts) -> None:
    """``fpn_channels`` and ``representation_size``: narrow under a time budget on a CPU, torchvision's else."""
    prefix = "model." if facts.task == "detect" else "model.detection."
    if facts.device == "cpu" and time_budget(r.config, facts) is not None:
        fpn, mlp, why = NARROW_FPN_CHANNELS, NARROW_REPRESENTATION, "a CPU time budget buys passes, not width"
    else:
        fpn, mlp, why = 256, 1024, "torchvision's"
    r.decide(prefix + "fpn_channels", fpn, why, fixed=256)
    r.decide(prefix + "representation_size", mlp, why, fixed=1024)


def _detector_sizes(r: Resolver, facts: RunFacts, short: float, *, revise: bool = False) -> None:
    """Anchors and proposal counts from the boxes at the input size; ``revise``: decided again after the input
    size changed (:func:`_budget_scale`)."""
    prefix = "model." if facts.task == "detect" else "model.detection."
    if facts.task == "detect":
        if not revise:  # revised by the budget's scale (:func:`_budget_scale`), which set both
            min_size = min(round_up_32(short), STANDARD_SIZE["detect"])
            why = f"typical shorter side {short:.0f} px, at most 800"
            min_size = r.decide("model.min_size", min_size, why, fixed=800)
            longer = typical_side(facts.image_sizes, longer=True)
            max_size = max(min(round_up_32(longer), DETECT_MAX_SIZE), min_size)
            r.decide("model.max_size", max_size, f"typical longer side {longer:.0f} px, at most 1333", fixed=1333)
        min_size, max_size = get(r.config, "model.min_size"), get(r.config, "model.max_size")
        resize = min_size / short if short else 1.0
        area_ratio = min_size * max_size / (800 * 1333)
    else:
        size = get(r.config, "data.image_size")
        longer = typical_side(facts.image_sizes, longer=True)
        resize = size / longer if longer else 1.0
        area_ratio = size * size / (800 * 1333)
    boxes = sorted(b * resize for b in facts.box_sizes)
    if boxes:
        small = boxes[len(boxes) // 20]  # the 5th percentile
        base = 2 ** min(max(round(math.log2(small)), 3), 5)  # 8, 16 or 32 px at stride 4
        why = f"5% of boxes are under {small:.0f} px after resizing"
    else:
        base, why = 32, "torchvision's"
    anchors = [[base * 2**i] for i in range(5)]
    r.decide(prefix + "anchor_sizes", anchors, why, fixed=[[32], [64], [128], [256], [512]], revise=revise)
    # torchvision's proposal and RoI counts are for 800x1333 images; fewer pixels need fewer of them.
    percent = 100 * area_ratio
    share = f"{percent:.2g}%" if percent < 10 else f"{percent:.0f}%"  # 0.38%, not 0%
    for key, full, low in (
        ("rpn_pre_nms_top_n_train", 2000, 400),
        ("rpn_post_nms_top_n_train", 2000, 200),
        ("rpn_pre_nms_top_n_test", 1000, 300),
        ("rpn_post_nms_top_n_test", 1000, 100),
        ("box_batch_size_per_image", 512, 64),
    ):
        value = int(min(max(round(full * area_ratio), low), full))
        why = f"torchvision's {full}, scaled to {share} of the pixels of 800x1333"
        why += f", at least {low}" if value == low and value < full else ""
        r.decide(prefix + key, value, why if value < full else "torchvision's", fixed=full, revise=revise)


def resolve_length(
    config: Any,
    recipe: Recipe,
    facts: RunFacts,
    *,
    seconds_per_step: Callable[[], float] | None = None,
    scale_probe: Callable[[float], float] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    spent: float = 0.0,
) -> Any:
    """Epochs, warmup and augmentation strength: the choices that depend on how long the run is.

    ``seconds_per_step`` measures one training step; it is called only when a time budget applies, and the
    seconds it takes (by ``clock``) count against the budget: on a slow model the probe is minutes.
    ``scale_probe`` (segmentation, detection, multi-task) measures one step with the input scaled; with it, the
    input size a budget allows (segmentation's ``model.input_scale``, detection's ``model.min_size`` and
    ``max_size``, multi-task's ``data.image_size``) is resolved here (:func:`_budget_scale`) from
    ``seconds_per_step``, which may then be a rough full-size estimate, and the plan follows ``scale_probe``'s
    measurement at the chosen scale.
    ``spent``: seconds already spent measuring for this run (:func:`weigh_batch`'s probes), also charged to the
    budget.
    """
    r = Resolver(config, recipe)
    steps_per_epoch = facts.steps_per_epoch
    max_iters = get(config, "train.max_iters_per_epoch")
    if max_iters:
        steps_per_epoch = max(min(steps_per_epoch, max_iters // facts.accumulate), 1)
    time_text = get(config, "train.time")
    budget = time_budget(config, facts)
    epochs_auto = r.is_auto("train.epochs")
    target = TARGET_STEPS[facts.pretrained]
    target_epochs = min(max(math.ceil(target / steps_per_epoch), 1), MAX_EPOCHS)
    ceiling = get(config, "train.epochs") if not epochs_auto else (MAX_EPOCHS if time_text else target_epochs)
    epochs, why = ceiling, f"{target} optimizer steps {'fine-tuning' if facts.pretrained else 'from scratch'}"
    if time_text and not epochs_auto:
        why = f"set; --time {time_text} may stop it sooner"
    elif time_text:
        why = f"fitted to --time {time_text}"
    if "train.epochs" in recipe.resumed:
        # Resumed: the checkpoint's epochs and budget plan stand (no second probe); with a time budget the
        # engine goes on re-planning from its measured pace.
        why = f"the resumed run's, within --time {time_text}" if time_text else "the resumed run's"
        if budget is not None:
            recipe.budget_seconds, recipe.max_epochs = budget, MAX_EPOCHS
    elif budget is not None and (r.enabled or time_text) and seconds_per_step is not None:
        began = clock()
        if scale_probe is not None:
            # seconds_per_step is a rough full-size estimate here (it only chooses the scale); the plan is made
            # from scale_probe's measurement at the scale the run will train at
            scale = _budget_scale(r, facts, lambda: budget - (clock() - began), seconds_per_step)
            step = scale_probe(scale)
        else:
            step = seconds_per_step()
        probe = clock() - began + spent
        whole, budget = budget, max(budget - probe, step)  # what is left for training once the probe has run
        recipe.seconds_per_step = step
        per_epoch = epoch_seconds(step, steps_per_epoch, facts)
        fits = fit_epochs(budget, per_epoch, ceiling)
        if fits < ceiling or time_text:
            limit = f"--time {time_text}" if time_text else f"{whole / 60:.0f} min on a CPU"
            why = f"{limit} at {step:.2f} s/step measured and ~{per_epoch:.0f} s/epoch"
            if probe >= 1:
                why += f", {probe:.0f} s of it spent measuring"
            if not time_text:
                why += f"; {target_epochs} would give {target} steps"
        epochs = min(fits, ceiling)
        recipe.budget_seconds, recipe.max_epochs = budget, ceiling
        if epochs_auto and budget < MIN_EVALUATIONS * per_epoch and not max_iters:
            # Fewer passes than evaluations fit: train in shorter "epochs" of the steps the budget holds, so
            # that the whole budget is used and the schedule still anneals over several evaluations.
            evaluation = epoch_seconds(step, 0, facts)
            usable = budget * SHORT_PLAN_SHARE - MIN_EVALUATIONS * evaluation
            steps = max(int(usable // step), MIN_EVALUATIONS)
            chunk = max(steps // MIN_EVALUATIONS, 1)
            if chunk < steps_per_epoch:
                epochs, steps_per_epoch = MIN_EVALUATIONS, chunk
                why += f"; {steps / facts.steps_per_epoch:.1f} passes fit, as {epochs} epochs of {chunk} steps"
                r.assign("train.max_iters_per_epoch", chunk * facts.accumulate, "a short budget's epochs")
                recipe.shorten_epochs = True
    if epochs_auto:
        epochs = r.decide("train.epochs", int(epochs), why, fixed=FIXED[facts.task]["train.epochs"])
    else:
        epochs = get(r.config, "train.epochs")
        resumed = "train.epochs" in recipe.resumed
        reason = why if recipe.budget_seconds is not None or resumed else "set"  # the user's, capped by the budget
        recipe.choices.append(Choice("train.epochs", epochs, reason, auto=resumed))
    if facts.task == "segment" and all(c.key != "model.input_scale" for c in recipe.choices):
        # no budget to fit, or recipe: fixed; a value set by hand or resumed is recorded as such
        r.decide("model.input_scale", 1.0, "full size: no time budget to fit", fixed=1.0)
    total = steps_per_epoch * epochs
    warmup = min(max(round(0.05 * total), min(50, total // 5)), 1000)
    r.decide(
        "train.warmup_epochs",
        round(warmup / steps_per_epoch, 3),
        f"{warmup} of {total} steps",
        fixed=FIXED[facts.task]["train.warmup_epochs"],
    )
    _augmentation(r, facts, total / facts.steps_per_epoch)
    return r.config


def time_budget(config: Any, facts: RunFacts) -> float | None:
    """The run's time budget in seconds: ``--time``, else on a CPU the default cap where the epochs are the
    recipe's; None where the run is a number of epochs."""
    time_text = get(config, "train.time")
    if time_text:
        return parse_duration(time_text)
    recipe_on = get(config, "train.recipe") == AUTO
    if get(config, "train.epochs") == AUTO and recipe_on and facts.device == "cpu":
        return CPU_BUDGET_SECONDS
    return None


def _budget_scale(r: Resolver, facts: RunFacts, left: Callable[[], float], rough: Callable[[], float]) -> float:
    """The input scale a time budget allows (:func:`input_scale_for`), applied to the task's size: segmentation's
    ``model.input_scale``, detection's ``model.min_size`` and ``max_size``, or multi-task's ``data.image_size``
    (and, for both, the detector's sizes that follow from it). Where the size is the user's, or the recipe is
    fixed, the scale is 1 (segmentation: the user's scale) and nothing is measured here."""
    segment = facts.task == "segment"
    key = {"segment": "model.input_scale", "detect": "model.min_size"}.get(facts.task, "data.image_size")
    if segment and not r.is_auto(key):
        return float(get(r.config, key))
    if not r.enabled or (not segment and r.auto_choice(key) is None):
        return 1.0
    side = get(r.config, "data.crop_size" if segment else key)
    passes = left() / epoch_seconds(rough(), facts.steps_per_epoch, facts)
    floor = _box_floor(facts, side) if facts.task == "detect" else 0.0
    scale = input_scale_for(passes, side, floor=floor)
    shrunk = round(side * scale)
    why = f"{passes:.2g} passes fit at {side} px, about {MIN_PASSES} at {shrunk} px"
    if floor > MIN_INPUT_SCALE and scale <= floor + 0.1:
        why += f" (5% of boxes ≥ {MIN_BOX_SIDE} px)"
    if scale == 1:
        why = f"{passes:.2g} passes fit at {side} px" if side > MIN_INPUT_SIDE else f"{side} px is small already"
    if segment:
        r.decide(key, scale, why, fixed=1.0)
    elif scale < 1:
        earlier = r.recipe.choices[r.auto_choice(key)].reason  # type: ignore[index]
        r.decide(key, shrunk, f"{earlier}; {why}", revise=True)
        if facts.task == "detect":
            longer = get(r.config, "model.max_size")
            r.decide(
                "model.max_size", max(round_up_32(longer * scale), shrunk), f"× {scale:.3g} as min_size", revise=True
            )
        _detector_sizes(r, facts, typical_side(facts.image_sizes), revise=True)
        _precision(r, facts, revise=True)  # its reason names the input side
    return scale


def _box_floor(facts: RunFacts, min_size: int) -> float:
    """The smallest scale of ``min_size`` that keeps the training boxes' 5th percentile at MIN_BOX_SIDE pixels."""
    short = typical_side(facts.image_sizes)
    boxes = sorted(facts.box_sizes)
    if not boxes or not short:
        return 0.0
    small = boxes[len(boxes) // 20] * min_size / short
    return min(MIN_BOX_SIDE / small, 1.0)


def input_scale_for(passes: float, side: int, *, floor: float = 0.0) -> float:
    """The input scale at which about MIN_PASSES passes fit where ``passes`` fit at full scale, for crops of
    ``side`` pixels: at least MIN_INPUT_SIDE / side, MIN_INPUT_SCALE and ``floor``, rounded up so that the shrunk
    crop's side is a multiple of 32, and 1.0 where that is not smaller than the crop."""
    if passes >= MIN_PASSES or side <= MIN_INPUT_SIDE:
        return 1.0
    scale = max(math.sqrt(max(passes, 0.0) / MIN_PASSES), MIN_INPUT_SIDE / side, MIN_INPUT_SCALE, floor)
    shrunk = 32 * math.ceil(side * scale / 32)
    return 1.0 if shrunk >= side else round(shrunk / side, 4)


def epoch_seconds(step_seconds: float, steps_per_epoch: int, facts: RunFacts) -> float:
    """A training epoch plus its evaluation, estimated from one step's time."""
    per_image = step_seconds / max(facts.batch_size, 1)
    evaluation = EVAL_COST * per_image * facts.val_images / facts.processes
    return step_seconds * steps_per_epoch + evaluation


def fit_epochs(budget_seconds: float, seconds_per_epoch: float, ceiling: int) -> int:
    """The most whole epochs that fit the budget, at least one, at most ``ceiling``."""
    return int(min(max(budget_seconds // max(seconds_per_epoch, 1e-9), 1), ceiling))


def _augmentation(r: Resolver, facts: RunFacts, passes: float) -> None:
    s = augmentation_strength(passes)
    why = f"strength {s:.2f} of 1 for {passes:.3g} pass{'' if passes == 1 else 'es'} over the data"
    if facts.task == "classify":
        size = get(r.config, "data.image_size")
        floor = (24 / size) ** 2  # a crop keeps at least 24x24 of the input's pixels
        scale_min = max(0.08 + (1 - s) * 0.42, min(floor, 1.0))
        reason = why if scale_min > floor else f"crops keep ≥ 24 px of {size} px"
        r.decide("data.scale_min", round(scale_min, 3), reason, fixed=0.08)
        r.decide("data.color_jitter", round(0.1 + 0.3 * s, 3), why, fixed=0.4)
    else:
        if facts.task == "segment":
            r.decide("data.scale_min", round(1 - (0.25 + 0.25 * s), 3), why, fixed=0.5)
            r.decide("data.scale_max", round(1 + (0.25 + 0.75 * s), 3), why, fixed=2.0)
        else:  # detect, and multitask with the detector's zoom, which keeps every task's labels (fixed: none)
            r.decide("data.scale_jitter", round(0.1 + 0.15 * s, 3), why, fixed=0.25 if facts.task == "detect" else 0.0)
        r.decide("data.color_jitter", round(0.1 + 0.1 * s, 3), why, fixed=0.2)


def measure_step(
    task: Any,
    model: nn.Module,
    batch: dict[str, Any],
    device: torch.device,
    *,
    repeats: int = 2,
    amp: bool = False,
    channels_last: bool = False,
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
) -> float:
    """Seconds of one training step (forward and backward of ``task.losses``) on a copy of ``model``,
    after one untimed step; the model itself is not changed. The best of ``repeats``, plus 10% for the
    optimizer step and data wait that the probe leaves out. ``amp`` and ``channels_last`` as the engine
    trains (its autocast dtype, NHWC weights). ``optimizer``: builds the run's optimizer for the copy, whose
    step is then timed with the rest (and the 10% is for the data wait alone)."""
    probe = copy.deepcopy(model).to(device).train()
    if channels_last:
        probe = probe.to(memory_format=torch.channels_last)
    update = optimizer(probe) if optimizer is not None else None
    batch = task.to_device(batch, device)
    times = []
    for index in range(1 + repeats):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype(device.type), enabled=amp):
            loss = task.losses(probe, batch)["loss"]
        loss.backward()
        if update is not None:
            update.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index:
            times.append(time.perf_counter() - start)
        probe.zero_grad(set_to_none=True)
    del probe, update
    return min(times) * 1.1


ROUGH_PROBE_IMAGES = 2  # a rough probe (it only chooses the input scale) times one step on this many images


def measure_batch(
    task: Any,
    model: nn.Module,
    dataset: Any,
    collate: Callable[[list[Any]], dict[str, Any]],
    train: Any,
    device: torch.device,
    *,
    rough: bool = False,
    images: int | None = None,
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
) -> float:
    """Seconds of one training step on the first batch of ``dataset`` (:func:`measure_step`) under the resolved
    ``train`` config (its batch size, mixed precision and memory format). ``rough``: one timed step on
    ROUGH_PROBE_IMAGES of the batch, scaled up to the whole batch (a batch no larger than the dataset, as the
    run's). ``images``: a step on that many images instead of the batch; ``optimizer``: its update timed too."""
    full = min(int(images or train.batch_size), len(dataset))
    count = min(ROUGH_PROBE_IMAGES, full) if rough else full
    batch = collate([dataset[i] for i in range(count)])
    seconds = measure_step(
        task,
        model,
        batch,
        device,
        repeats=1 if rough else 2,
        amp=bool(train.amp),
        channels_last=bool(train.channels_last),
        optimizer=optimizer,
    )
    return seconds * full / count


def box_sides(boxes: Sequence[Sequence[float]], *, limit: int = 2000) -> tuple[float, ...]:
    """sqrt(area) of up to ``limit`` (x1, y1, x2, y2) boxes, evenly spaced through ``boxes``."""
    return tuple(float(((x2 - x1) * (y2 - y1)) ** 0.5) for x1, y1, x2, y2 in boxes[:: max(len(boxes) // limit, 1)])


def sample_sizes(paths: Sequence[Any], *, limit: int = 200) -> tuple[tuple[int, int], ...]:
    """(width, height) as shown (EXIF orientation applied) of up to ``limit`` images, evenly spaced through
    ``paths``, from their headers; unreadable files are passed over (the datasets skip and count them)."""
    from tasks.data.images import READ_ERRORS, image_size

    step = max(len(paths) // limit, 1)
    sizes = []
    for path in list(paths)[::step][:limit]:
        try:
            sizes.append(image_size(path))
        except READ_ERRORS:
            continue
    return tuple(sizes)
