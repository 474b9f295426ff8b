"""The one train/eval loop every task shares.

A task plugs in through the small :class:`Task` protocol: how to move a batch to the
device, the training losses of a batch, and how to evaluate a loader. The engine owns
everything else: optimiser and schedule, AMP, accumulation, clipping, EMA, checkpoints,
resume, the best checkpoint, TensorBoard, the progress bar, seeds and devices. Only the
main process writes, and evaluation gathers across processes through the task.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.sgd import sgd
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from tasks import distributed, threads
from tasks.checkpoint import load_checkpoint, save_checkpoint
from tasks.config import TrainConfig, unresolved
from tasks.data.images import DecodedCache, plan_cache
from tasks.data.sampling import EpochSampler, GroupedBatchSampler
from tasks.errors import UserError
from tasks.io import write_json
from tasks.recipes import Recipe, amp_dtype, amp_scaler
from tasks.run_log import RunLog, scalars

Batch = dict[str, Any]
RESUME = ("optimizer", "scheduler", "scaler", "rng")  # checkpoint entries only last.pt carries
# A time budget re-plans the run's epochs only past these margins, in epochs at the measured pace: it drops an
# epoch where the plan would overrun the budget by more than BUDGET_OVERRUN of one, and adds one where the
# budget holds it with BUDGET_SPARE of an epoch to spare.
BUDGET_OVERRUN = 0.1
BUDGET_SPARE = 0.2


class Task(Protocol):
    """What a task tells the engine."""

    name: str
    main_metric: str  # a key of the evaluation metrics; dotted for nested sections ("coco.AP")
    # optional: ``headline_metrics``, keys drawn in results.png right after the main metric

    def to_device(self, batch: Batch, device: torch.device) -> Batch: ...

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        """Training losses of one batch; the key ``"loss"`` is the total to minimise."""
        ...

    def evaluate(self, model: nn.Module, loader: Iterable[Batch], device: torch.device) -> dict[str, Any]:
        """Metrics over the loader's whole split, gathered across processes."""
        ...


class SkipCount:
    """A loader's batches, as they pass, adding up the images read and those skipped as unreadable (each batch's
    ``batch_size`` and ``skipped``), so that an evaluation can say what its metrics are over."""

    def __init__(self, loader: Iterable[Batch]) -> None:
        self.loader = loader
        self.read = self.skipped = 0

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            self.read += int(batch["batch_size"])
            self.skipped += int(batch.get("skipped", 0))
            yield batch

    def warning(self) -> str | None:
        """Every process's count in one line, or None where nothing was skipped (a collective: call it on every
        process)."""
        read, skipped = (sum(counts) for counts in zip(*distributed.gather((self.read, self.skipped))))
        if not skipped:
            return None
        return f"warning: skipped {skipped} unreadable validation image(s); the metrics are over the {read} read"


def evaluate_split(
    task: Task, model: nn.Module, loader: Iterable[Batch], device: torch.device
) -> tuple[dict[str, Any], str | None]:
    """``task.evaluate`` of ``loader`` in inference mode, and the line that says how many unreadable images it
    skipped (None where none were): the ``eval`` commands print it, the engine logs it after an epoch."""
    counted = SkipCount(loader)
    with torch.inference_mode():
        metrics = task.evaluate(model, counted, device)
    return metrics, counted.warning()


def resolve_device(name: str) -> torch.device:
    """The device to run on; under torchrun each process takes the GPU of its LOCAL_RANK."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        return device
    return torch.device(name)


def start_processes(cfg: TrainConfig) -> torch.device:
    """The run's device, after joining the process group that torchrun describes (if any)."""
    device = resolve_device(cfg.device)
    distributed.setup_from_env(device)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    """Seed a DataLoader worker from torch's per-worker seed (itself drawn from the seeded loader)."""
    threads.quiet_worker()  # OpenCV single-threaded: the workers share the cores with the math
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    reseed = getattr(transform, "reseed", None)  # each worker's copy gets its own augmentation stream
    if reseed is not None:
        reseed(seed)


def set_epoch(loader: Any, epoch: int, seed: int) -> None:
    """Make epoch ``epoch`` of ``loader`` a function of (seed, epoch) alone, as a resumed run needs it: the
    sampler's permutation (EpochSampler, DistributedSampler) and, where the data is loaded in this process
    (``workers: 0``), the augmentation stream. With worker processes each worker keeps its own stream (seeded
    once, at its start), so a resumed run's augmentations differ from the uninterrupted run's."""
    sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None)  # BatchSampler's or Grouped...'s
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if getattr(loader, "num_workers", 1) == 0:
        reseed = getattr(getattr(getattr(loader, "dataset", None), "transform", None), "reseed", None)
        if reseed is not None:
            reseed((seed * 1_000_003 + epoch) % 2**32)


def rng_states() -> dict[str, Any]:
    """Python's, NumPy's and torch's global random states, as plain lists and tensors (weights_only-safe)."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])


def make_loader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    train: bool,
    workers: int,
    collate_fn: Callable[[list[Any]], Batch],
    seed: int = 0,
    groups: Sequence[int] | None = None,
) -> DataLoader[Any]:
    """A DataLoader whose sampler shards the data when a process group is up.

    ``groups`` (one id per item, for training) makes every batch come from one group while the
    groups last: see :class:`tasks.data.sampling.GroupedBatchSampler`.
    """
    sampler: Any
    if distributed.is_distributed():
        sampler = (
            DistributedSampler(dataset, shuffle=True, seed=seed) if train else distributed.ShardSampler(len(dataset))
        )  # type: ignore[arg-type]
    else:
        sampler = EpochSampler(len(dataset), seed) if train else None  # type: ignore[arg-type]
    drop_last = train and len(dataset) > batch_size  # type: ignore[arg-type]
    batching: dict[str, Any] = dict(batch_size=batch_size, sampler=sampler, drop_last=drop_last)
    if groups is not None and train:
        batching = dict(batch_sampler=GroupedBatchSampler(sampler, groups, batch_size, drop_last=drop_last))
    return DataLoader(
        dataset,
        **batching,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        worker_init_fn=_seed_worker,
    )


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Weight decay on weights only (not norms and biases); the backbone at ``backbone_lr_scale``."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (name.startswith("backbone."), param.ndim > 1)
        groups.setdefault(key, []).append(param)
    out = []
    for (is_backbone, decays), params in groups.items():
        scale = cfg.backbone_lr_scale if is_backbone else 1.0
        out.append(
            dict(
                params=params,
                lr=cfg.lr * scale,
                initial_lr=cfg.lr * scale,
                weight_decay=cfg.weight_decay if decays else 0.0,
            )
        )
    return out


FUSED_DEVICES = ("cpu", "cuda")  # where torch's SGD and AdamW have a fused step


def _dense_order(tensors: Sequence[Tensor]) -> list[int] | None:
    """The order of dimensions in which ``tensors`` (a parameter, its gradient and its optimizer state) are laid
    out contiguously, where that is not their own order and all share one layout on the CPU (a channels-last
    convolution weight: (0, 2, 3, 1)); else None."""
    first = tensors[0]
    if first.device.type != "cpu" or first.is_contiguous() or any(t.stride() != first.stride() for t in tensors):
        return None
    order = sorted(range(first.dim()), key=lambda d: -first.stride(d))
    return order if first.permute(order).is_contiguous() else None


def _permuted(tensors: Sequence[Any], orders: Sequence[list[int] | None], *, back: bool = False) -> list[Any]:
    """Each tensor permuted into its ``orders`` entry (or out of it, ``back``); None entries stay."""
    out = []
    for tensor, order in zip(tensors, orders):
        if tensor is not None and order is not None:
            tensor = tensor.permute([order.index(d) for d in range(len(order))] if back else order)
        out.append(tensor)
    return out


class FusedSGD(torch.optim.SGD):
    """torch's SGD with its fused step (``fused=True``), handing the kernel each channels-last tensor as a
    contiguous permutation of itself: the same storage, the same update to the bit. torch's fused CPU kernels
    update each tensor as one flat array, whatever its layout, but first copy every gradient that is not
    contiguous, then leave the copy unused; in the detector's channels-last training step those copies took
    about 14 of 426 ms (docs/results.md, "The optimizers' copies of channels-last gradients")."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            buffers: list[Tensor | None] = []  # empty without momentum
            sparse = self._init_group(group, params, grads, buffers)
            orders = [
                _dense_order([p, g] + ([b] if b is not None else []))
                for p, g, b in zip(params, grads, buffers or [None] * len(params))
            ]
            dense_buffers = _permuted(buffers, orders)
            sgd(
                _permuted(params, orders),
                _permuted(grads, orders),
                dense_buffers,
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                lr=group["lr"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                maximize=group["maximize"],
                has_sparse_grad=sparse,
                foreach=group["foreach"],
                fused=group["fused"],
                grad_scale=getattr(self, "grad_scale", None),
                found_inf=getattr(self, "found_inf", None),
            )
            # torch's step makes the buffers on the first step, each like the (permuted) gradient
            created = _permuted(dense_buffers, orders, back=True)
            for p, old, new in zip(params, buffers, created):
                self.state[p]["momentum_buffer"] = new if old is None else old
        return loss


class FusedAdamW(torch.optim.AdamW):
    """torch's AdamW with its fused step, handing the kernel each channels-last tensor as a contiguous
    permutation of itself, as :class:`FusedSGD` does. Its state is torch's, updated in place through the views."""

    def _init_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], *state: Any) -> Any:
        result = super()._init_group(group, params, grads, *state)
        # the moments (and amsgrad's maxima), each shaped as its parameter; not the step counts
        moments = [
            values
            for values in state
            if isinstance(values, list)
            and len(values) == len(params)
            and all(v.shape == p.shape for v, p in zip(values, params))
        ]
        orders = [
            _dense_order([p, g] + [values[i] for values in moments]) for i, (p, g) in enumerate(zip(params, grads))
        ]
        for values in (params, grads, *moments):
            values[:] = _permuted(values, orders)
        return result


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, *, fused: bool | None = None, foreach: bool = False
) -> torch.optim.Optimizer:
    """``cfg``'s optimizer over :func:`param_groups`. ``fused`` (default: wherever every parameter is on the CPU or
    CUDA) takes torch's fused step, one kernel over all the parameters, the same update to float rounding and
    faster than torch's default per-parameter loop on the CPU (docs/results.md, "The optimizer step").
    ``fused=False`` keeps torch's own default, as a plain loop gets it, or with ``foreach`` torch's multi-tensor
    step (its CUDA default), as the optimizer benchmark compares them."""
    groups = param_groups(model, cfg)
    if not groups:
        raise UserError("nothing to train: every parameter is frozen")
    if fused is None:
        fused = not foreach and all(p.device.type in FUSED_DEVICES for group in groups for p in group["params"])
    options = {"fused": True} if fused else {"foreach": True} if foreach else {}
    if cfg.optimizer == "sgd":
        return (FusedSGD if fused else torch.optim.SGD)(groups, lr=cfg.lr, momentum=cfg.momentum, **options)
    return (FusedAdamW if fused else torch.optim.AdamW)(groups, lr=cfg.lr, **options)


def lr_factor(step: int, *, total: int, warmup: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Linear warmup from 0.1% of the rate, then cosine, step or constant."""
    if step < warmup:
        return 0.001 + (1 - 0.001) * step / max(warmup, 1)
    if cfg.schedule == "cosine":
        progress = (step - warmup) / max(total - warmup, 1)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if cfg.schedule == "step":
        epoch = step // max(steps_per_epoch, 1)
        return float(cfg.step_gamma ** sum(epoch >= m for m in cfg.step_milestones))
    return 1.0


@dataclass(frozen=True)
class EpochStats:
    """Timings of one training epoch: optimizer steps, images, wall seconds, and seconds spent waiting for data."""

    steps: int
    images: int
    seconds: float
    data_seconds: float
    losses: dict[str, float] = field(default_factory=dict)  # each loss term's mean over the epoch's steps

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.steps, 1)

    @property
    def data_fraction(self) -> float:
        return self.data_seconds / self.seconds if self.seconds else 0.0


@dataclass
class Setup:
    """What a task runner hands the engine: the model, the task, both loaders, checkpoint metadata and a
    one-line summary of the run. The benchmark suite trains from the same object."""

    model: nn.Module
    task: Task
    train_loader: DataLoader[Any]
    val_loader: DataLoader[Any]
    meta: dict[str, Any]
    summary: str
    val_data: Any = None  # the validation split as the runner loaded it, for its report
    config: Any = None  # the run's config with every auto field resolved
    recipe: Recipe | None = None  # how the auto fields were resolved, and the time budget
    input_size: tuple[int, int] | None = None  # (height, width) of a training image, for the model's GFLOPs line


def clip_gradients(model: nn.Module, limit: float, device: torch.device) -> None:
    """Scale ``model``'s gradients to norm ``limit`` where their norm is larger, as ``clip_grad_norm_`` does (the
    engine's ``train.clip_grad``). On the CPU, where reading the norm costs no device sync, the scaling pass over
    every gradient is skipped when it would multiply by 1: torch's function always multiplies so as not to sync a
    GPU (5% of the detector's CPU step, half of it that pass). The same gradients to the bit either way."""
    parameters = [p for p in model.parameters() if p.grad is not None]
    if device.type != "cpu":
        nn.utils.clip_grad_norm_(parameters, limit)
        return
    norm = nn.utils.get_total_norm([p.grad for p in parameters])
    if not bool(limit / (norm + 1e-6) >= 1.0):  # torch's own coefficient, clamped to 1; a NaN norm scales too
        nn.utils.clip_grads_with_norm_(parameters, limit, norm)


class Engine:
    """Trains and evaluates one model for one task.

    Args:
        model: the task model; in training it is called through ``task.losses``.
        task: the task protocol implementation.
        cfg: the engine settings.
        run_dir: where checkpoints, metrics.json and TensorBoard events go.
        meta: extra checkpoint entries (``task``, ``model_args``, ``config`` ...).
        budget_seconds: a wall-clock budget: after every epoch the number of epochs is fitted to what
            is left of it at the measured pace (up to ``max_epochs``).
        max_epochs: the most epochs the budget may grow the run to (default ``cfg.epochs``).
        shorten_epochs: where the budget holds fewer whole epochs than planned, shorten the epochs still to
            run instead of dropping one (the recipe's short-budget epochs: with three of them, a dropped
            epoch would leave a third of the budget unused).
    """

    clock: Callable[[], float] = staticmethod(time.perf_counter)  # tests replace it with a fake clock

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        cfg: TrainConfig,
        run_dir: Path,
        meta: dict[str, Any],
        *,
        budget_seconds: float | None = None,
        max_epochs: int | None = None,
        shorten_epochs: bool = False,
    ) -> None:
        left = [key for key in unresolved(cfg) if key not in ("workers", "cache_mb")]  # the loaders', set apart
        if left:
            raise ValueError(f"train config fields still 'auto' (resolve them with tasks.recipes): {', '.join(left)}")
        self.cfg = cfg
        self.epochs = int(cfg.epochs)  # type: ignore[arg-type]
        self.budget_seconds = budget_seconds
        self.max_epochs = max_epochs or self.epochs
        self.shorten_epochs = shorten_epochs
        self.shares: list[float] = [1.0] * self.epochs  # each epoch's share of a whole epoch's steps
        self.full_steps = 1  # optimizer steps in a whole epoch (set by prepare)
        self.skip_warning: str | None = None  # the last evaluation's unreadable images, as logged
        self.train_skipped = 0  # the last training epoch's unreadable images
        self.most_steps = 1  # the most steps an epoch may be lengthened to: one pass over the data (set by fit)
        self.elapsed = 0.0  # training and evaluation seconds so far, over resumes
        self.durations: list[float] = []  # this process's epochs, for the budget's pace
        self.save_seconds = 0.0  # the last checkpoint's writing time, counted in the budget
        self.saved_at: float | None = None  # when this process last wrote last.pt
        self.unsaved_best: dict[str, Any] | None = None  # a best epoch's checkpoint not yet in best.pt
        self.run_log = RunLog(run_dir)  # results.csv and results.png (rank 0 writes them)
        self.best_epoch = -1
        self.task = task
        self.run_dir = run_dir
        self.meta = meta
        self.device = resolve_device(cfg.device)
        distributed.setup_from_env(self.device)
        if cfg.sync_bn and distributed.world_size() > 1:
            if self.device.type != "cuda":
                raise UserError("--sync-bn needs CUDA devices: torch's SyncBatchNorm does not run on the CPU")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
            if cfg.ema
            else None
        )
        if cfg.compile:  # after the EMA copy, which stays eager; in place, so the state dict keeps its keys
            target: nn.Module = getattr(self.model, "backbone", self.model)
            target.compile()
        self.train_model: nn.Module = self.model
        if distributed.world_size() > 1:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=getattr(task, "find_unused_parameters", False),
            )
        self.amp_dtype = amp_dtype(self.device.type)
        self.scaler = amp_scaler(self.device.type, bool(cfg.amp))
        self.writer: Any = None
        self.best_metric = -math.inf
        self.start_epoch = 0

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _log(self, text: str) -> None:
        if distributed.is_main():
            print(text, flush=True)

    def steps_per_epoch(self, train_loader: DataLoader[Any]) -> int:
        """Optimizer steps in one epoch of ``train_loader`` (after accumulation and ``max_iters_per_epoch``)."""
        cfg = self.cfg
        images = len(train_loader.dataset)  # type: ignore[arg-type]
        if images < 2:  # BatchNorm cannot train on a batch of one, and one image teaches nothing
            raise UserError(f"the training split has {images} image(s); training needs at least 2")
        batches = min(len(train_loader), cfg.max_iters_per_epoch or len(train_loader))
        if batches < cfg.accumulate:
            raise UserError(
                f"train.accumulate {cfg.accumulate} is more than the {batches} batch(es) of an epoch "
                f"({images} training images at batch {cfg.batch_size}), so the optimizer would never step: "
                "lower train.accumulate or the batch size"
            )
        steps = len(train_loader) // cfg.accumulate
        if cfg.max_iters_per_epoch:
            steps = min(steps, cfg.max_iters_per_epoch // cfg.accumulate)
        return max(steps, 1)

    def cache_images(self, *loaders: DataLoader[Any]) -> None:
        """Give the loaders' datasets a :class:`DecodedCache` within ``train.cache_mb``, before their first pass
        (their worker processes copy the dataset when they start), and log its budget. Where every loader loads in
        this process, the datasets share one cache, which training fills first."""
        cachable = [loader for loader in loaders if hasattr(loader.dataset, "decoded")]
        if not cachable:
            return
        in_process = all(loader.num_workers == 0 for loader in cachable)
        loading = 1 if in_process else sum(max(loader.num_workers, 1) for loader in cachable)
        budget, why = plan_cache(self.cfg.cache_mb, loaders=loading, processes=threads.local_processes())
        shared = DecodedCache(budget)
        for loader in cachable:
            loader.dataset.decoded = shared if in_process else DecodedCache(budget)  # type: ignore[attr-defined]
        if budget:
            where = "in this process" if in_process else f"in each of the {loading} data workers"
            self._log(f"image cache: up to {budget / 2**20:.0f} MB of decoded images {where} ({why})")
        else:
            self._log(f"image cache: {why}")

    def prepare(self, steps_per_epoch: int) -> None:
        """Build the optimizer and the learning-rate schedule for ``cfg.epochs`` of ``steps_per_epoch``. The
        schedule's length follows the plan: a re-planned budget stretches or shrinks it."""
        cfg = self.cfg
        self.full_steps = steps_per_epoch
        warmup = int(cfg.warmup_epochs * steps_per_epoch)  # type: ignore[operator]
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(
                step, total=self.steps_before(self.epochs), warmup=warmup, cfg=cfg, steps_per_epoch=steps_per_epoch
            ),
        )

    def epoch_steps(self, epoch: int) -> int:
        """Optimizer steps of ``epoch`` in the current plan."""
        share = self.shares[epoch] if epoch < len(self.shares) else (self.shares[-1] if self.shares else 1.0)
        return max(round(share * self.full_steps), 1)

    def steps_before(self, epoch: int) -> int:
        """Optimizer steps of the epochs before ``epoch`` in the current plan."""
        return sum(self.epoch_steps(e) for e in range(epoch))

    def _plan(self, epochs: int) -> None:
        """``epochs`` in all: new epochs take the last epoch's share."""
        last = self.shares[-1] if self.shares else 1.0
        self.shares = (self.shares + [last] * epochs)[:epochs]
        self.epochs = epochs

    def fit(
        self, train_loader: DataLoader[Any], val_loader: DataLoader[Any], *, resume: Path | None = None
    ) -> dict[str, Any]:
        steps_per_epoch = self.steps_per_epoch(train_loader)
        self.prepare(steps_per_epoch)
        self.cache_images(train_loader, val_loader)
        self.most_steps = max(len(train_loader) // self.cfg.accumulate, steps_per_epoch)
        if resume is not None:
            self._resume(resume)
            self.run_log.resume(self.start_epoch)
        if distributed.is_main():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir))
        metrics: dict[str, Any] = {}
        try:
            metrics = self._epochs(train_loader, val_loader, steps_per_epoch)
        finally:  # a failed or interrupted run still leaves its best epoch in best.pt
            self._save_best()
        if self.writer is not None:
            self.writer.close()
        if not metrics:  # resumed after the last epoch: report the saved state
            metrics = self.evaluate(val_loader)
            if distributed.is_main():
                write_json(self.run_dir / "metrics.json", metrics)
        return metrics

    def _epochs(
        self, train_loader: DataLoader[Any], val_loader: DataLoader[Any], steps_per_epoch: int
    ) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        epoch = self.start_epoch
        while epoch < self.epochs:
            started = self.clock()
            steps = self.epoch_steps(epoch)
            stats = self.train_epoch(train_loader, epoch, steps)
            trained = self.clock() - started
            metrics = self.evaluate(val_loader)
            self._log_metrics(metrics, epoch)
            score = main_metric_value(metrics, self.task.main_metric)
            improved = score > self.best_metric
            if improved:
                self.best_metric, self.best_epoch = score, epoch
            seconds = self.clock() - started
            self.elapsed += seconds
            if self.budget_seconds is not None:  # the last epoch's checkpoint time stands in for this one's
                self._fit_budget(epoch, seconds + self.save_seconds, trained / steps)
            stop = self._stop_reason(epoch)
            saving = self.clock()
            due = (
                stop is not None
                or epoch + 1 >= self.epochs
                or self.saved_at is None
                or saving - self.saved_at >= self.cfg.checkpoint_seconds
            )
            if distributed.is_main():
                checkpoint = self._checkpoint(epoch)
                if improved:  # what eval and predict need: no optimizer state to resume from
                    best = {k: v for k, v in checkpoint.items() if k not in RESUME}
                    self.unsaved_best = best if due else _host_copy(best)  # later epochs change the weights
                if due:
                    save_checkpoint(self.run_dir / "last.pt", checkpoint)
                    self._save_best()
                write_json(self.run_dir / "metrics.json", metrics)
                self.run_log.add(
                    {
                        "epoch": epoch + 1,
                        **{f"train/{key}": value for key, value in stats.losses.items()},
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "images_per_s": stats.images / max(stats.seconds, 1e-9),
                        "seconds": seconds,
                        **{f"val/{key}": value for key, value in scalars(metrics)},
                    }
                )
                if due:  # drawn as often as last.pt is written: matplotlib takes a while
                    self.run_log.draw(self.task.main_metric, getattr(self.task, "headline_metrics", ()))
            if due:
                self.saved_at = saving
            self.save_seconds = self.clock() - saving
            self.elapsed += self.save_seconds
            self._log(
                f"epoch {epoch + 1}/{self.epochs}: {self.task.main_metric} {score:.4f}{' (best)' if improved else ''}"
            )
            epoch += 1
            if stop:
                self._log(stop)
                break
        return metrics

    def _save_best(self) -> None:
        """Write the best epoch's checkpoint, if one is waiting (rank 0 only holds one)."""
        if self.unsaved_best is not None:
            save_checkpoint(self.run_dir / "best.pt", self.unsaved_best)
            self.unsaved_best = None

    def _fit_budget(self, epoch: int, seconds: float, step_seconds: float) -> None:
        """After each epoch: as many more epochs as the rest of the budget holds at the mean pace of the
        epochs after the first (rank 0's), so that a run on a machine that slows down or speeds up still
        ends on time with its schedule complete. The cosine schedule stretches or shrinks to the new length.

        With ``shorten_epochs`` (the recipe's short-budget epochs, each a part of a pass) the number of epochs
        stands and the epochs still to run take the steps that the rest of the budget holds, at most a pass,
        at ``step_seconds`` a step plus this epoch's evaluation and checkpoint time. Epochs are dropped only
        where they would keep under a quarter of their planned steps. Once the planned epochs have all run, the
        run ends, whatever time is left: its schedule has annealed to its end.

        The plan changes only where the rest of the budget holds BUDGET_OVERRUN of an epoch less than the epochs
        left, or an epoch and BUDGET_SPARE more: a pace that wobbles by a few percent about a whole number of
        epochs kept flipping the plan (and the cosine's end) between 6 and 7 epochs, epoch after epoch."""
        assert self.budget_seconds is not None
        self.durations.append(seconds)
        steady = self.durations[1:] or self.durations  # the first epoch also pays for start-up
        pace = float(distributed.broadcast(sum(steady) / len(steady)))
        remaining = max(self.budget_seconds - float(distributed.broadcast(self.elapsed)), 0.0)
        left = self.epochs - epoch - 1
        if self.shorten_epochs and left > 0:
            step = float(distributed.broadcast(step_seconds))
            overhead = max(seconds - step * self.epoch_steps(epoch), 0.0)  # evaluation and checkpoint
            steps = min(int((remaining - left * overhead) // max(left * step, 1e-9)), self.most_steps)
            planned = self.epoch_steps(epoch + 1)
            if steps >= planned / 4:
                if steps != planned:
                    self._log(
                        f"time budget {self.budget_seconds / 60:.1f} min at {step:.2f} s per step: "
                        f"the last {left} epoch(s) of {steps} steps instead of {planned}"
                    )
                    self.shares[epoch + 1 :] = [steps / self.full_steps] * left
                    self._refresh_rates()
                return
        if left <= 0:
            return  # the schedule has annealed to its end: an epoch more would restart it from a higher rate
        holds = remaining / max(pace, 1e-9)  # epochs, fractional
        if holds < left - BUDGET_OVERRUN:
            left = int(holds + BUDGET_OVERRUN)
        elif holds >= left + 1 + BUDGET_SPARE:
            left = int(holds - BUDGET_SPARE)
        epochs = max(min(epoch + 1 + left, self.max_epochs), epoch + 1)
        if epochs != self.epochs:
            self._log(
                f"time budget {self.budget_seconds / 60:.1f} min at {pace:.1f} s per epoch: "
                f"{epochs} epochs instead of {self.epochs}"
            )
            self._plan(epochs)
            self._refresh_rates()

    def _refresh_rates(self) -> None:
        """Set the optimizer's rates to the schedule's at its current step (after a resume or a re-plan)."""
        factors = [fn(self.scheduler.last_epoch) for fn in self.scheduler.lr_lambdas]
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs, factors):
            group["lr"] = base * factor

    def _stop_reason(self, epoch: int) -> str | None:
        """Why training ends after ``epoch`` before its planned last epoch (the same on every process)."""
        patience = self.cfg.patience
        reason = None
        if epoch + 1 < self.epochs and patience is not None and epoch - self.best_epoch >= patience:
            reason = (
                f"stopped early: {self.task.main_metric} has not improved for {patience} epoch(s) "
                f"(best {self.best_metric:.4f} at epoch {self.best_epoch + 1})"
            )
        return distributed.broadcast(reason)  # every process, every epoch: rank 0 decides for all

    def train_epoch(self, loader: DataLoader[Any], epoch: int, steps: int) -> EpochStats:
        """Train for ``steps`` optimizer steps of ``loader`` (after :meth:`prepare`); log and return the timings."""
        cfg = self.cfg
        self.train_model.train()
        set_epoch(loader, epoch, cfg.seed)
        show_bar = distributed.is_main() and sys.stderr.isatty()
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.epochs}", disable=not show_bar, leave=False)
        images = skipped = 0
        data_time = 0.0
        loss_sum = torch.zeros((), device=self.device)  # summed where it is computed: no host sync per step
        term_sums: dict[str, Tensor] = {}
        start = last = time.perf_counter()
        step = checked = 0  # optimizer steps; steps whose losses are known to be finite
        first_step = self.steps_before(epoch)  # the plan's steps before this epoch, for TensorBoard
        self.optimizer.zero_grad(set_to_none=True)
        for index, batch in enumerate(loader):
            now = time.perf_counter()
            data_time += now - last
            skipped += int(batch.get("skipped", 0))
            if batch["batch_size"] == 0:  # every image of the batch was unreadable
                last = time.perf_counter()
                continue
            batch = self.task.to_device(batch, self.device)
            try:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=cfg.amp):
                    losses = self.task.losses(self.train_model, batch)
            except ValueError as error:
                if "Expected more than 1 value per channel" not in str(error):
                    raise
                raise UserError(
                    f"a training batch of {batch['batch_size']} image(s) leaves a BatchNorm layer one value per "
                    f"channel at this input size: use --batch-size 2 or more (now {cfg.batch_size}) or a larger "
                    "--image-size"
                ) from None
            loss = losses["loss"]
            self.scaler.scale(loss / cfg.accumulate).backward()
            images += int(batch["batch_size"])
            if (index + 1) % cfg.accumulate:
                last = time.perf_counter()
                continue
            if cfg.clip_grad:
                self.scaler.unscale_(self.optimizer)
                self._clip_gradients(cfg.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            step += 1
            loss_sum += loss.detach().float()
            for key, value in losses.items():
                term_sums[key] = term_sums.get(key, 0.0) + value.detach().float()
            global_step = first_step + step
            if show_bar:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{images / (time.perf_counter() - start):.0f}")
            if step % cfg.log_every == 0 or step == steps:  # the host reads the device's numbers only here
                self._check_finite(loss_sum, epoch, checked, step)
                checked = step
                if self.writer is not None:
                    for key, value in losses.items():
                        self.writer.add_scalar(f"train/{key}", value.item(), global_step)
                    self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], global_step)
            last = time.perf_counter()
            if step >= steps:
                break
        bar.close()
        if step > checked:
            self._check_finite(loss_sum, epoch, checked, step)
        elapsed = time.perf_counter() - start
        if self.writer is not None:
            self.writer.add_scalar("train/images_per_second", images / elapsed, epoch + 1)
            self.writer.add_scalar("train/data_wait_fraction", data_time / elapsed, epoch + 1)
        skipped = sum(distributed.gather(skipped))  # every process's, under torchrun
        if skipped and skipped != self.train_skipped:  # the same corrupt files every epoch: said when it changes
            self._log(
                f"warning: skipped {skipped} unreadable image(s) in epoch {epoch + 1} (said again if that changes)"
            )
        self.train_skipped = skipped
        self._log(
            f"epoch {epoch + 1}/{self.epochs}: loss {loss_sum.item() / max(step, 1):.4f}, "
            f"lr {self.optimizer.param_groups[0]['lr']:.2e}, {images / elapsed:.1f} img/s, "
            f"data wait {100 * data_time / elapsed:.0f}%, {elapsed:.1f}s"
        )
        means = {key: float(value) / max(step, 1) for key, value in term_sums.items()}
        return EpochStats(steps=step, images=images, seconds=elapsed, data_seconds=data_time, losses=means)

    def _clip_gradients(self, limit: float) -> None:
        clip_gradients(self.model, limit, self.device)

    def _check_finite(self, loss_sum: Tensor, epoch: int, checked: int, step: int) -> None:
        """Stop with one line if a loss since step ``checked`` was not finite (every ``log_every`` steps, where the
        host reads the device's numbers anyway, instead of a sync at every step). Every process decides alike: the
        sum is over all of them."""
        total = float(distributed.all_reduce_sum(loss_sum.detach().clone()))
        if not math.isfinite(total):
            steps = f"step {step}" if step == checked + 1 else f"steps {checked + 1}-{step}"
            raise UserError(
                f"the training loss became {total} in epoch {epoch + 1}, {steps}: the learning rate is too high "
                f"for this run; lower it (--lr, now train.lr {self.cfg.lr:g})"
            )

    def evaluate(self, loader: DataLoader[Any]) -> dict[str, Any]:
        """The task's metrics in float32 and NCHW weights, with or without mixed precision and channels-last
        training: the numbers that ``eval`` of the checkpoint (an NCHW model) gives again, on any machine. oneDNN
        sums a convolution in another order for NHWC weights, and that alone can flip a mask pixel's argmax."""
        model = self.eval_model
        model.eval()
        if self.cfg.channels_last:  # in place, so the optimizer's parameters stay the same tensors
            model.to(memory_format=torch.contiguous_format)
        try:
            metrics, warning = evaluate_split(self.task, model, loader, self.device)
            if warning is not None and warning != self.skip_warning:  # said again only when the count changes
                self._log(warning)
            self.skip_warning = warning
            return metrics
        finally:
            if self.cfg.channels_last:
                model.to(memory_format=torch.channels_last)

    def _log_metrics(self, metrics: dict[str, Any], epoch: int) -> None:
        if self.writer is None:
            return
        for key, value in scalars(metrics):
            self.writer.add_scalar(f"val/{key}", value, epoch + 1)

    def _checkpoint(self, epoch: int) -> dict[str, Any]:
        return {
            **self.meta,
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_states(),  # after this epoch's evaluation: where the next epoch starts
            "epoch": epoch,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "budget_epochs": self.epochs if self.budget_seconds is not None else None,
            "epoch_shares": list(self.shares) if self.budget_seconds is not None else None,
            "shorten_epochs": self.shorten_epochs,
            "elapsed_seconds": self.elapsed,
        }

    def _misfit(self, checkpoint: dict[str, Any], error: BaseException) -> str:
        """Why a resumed checkpoint's weights do not load: the model options that differ (torch's own message
        names only the first tensor, and wraps over lines)."""
        saved, now = checkpoint.get("model_args") or {}, (self.meta or {}).get("model_args") or {}
        changed = [
            f"{key} {saved.get(key)!r} there, {now.get(key)!r} here"
            for key in sorted(set(saved) | set(now))
            if saved.get(key) != now.get(key)
        ]
        if changed:
            return f"it was trained with other model options ({'; '.join(changed)}); resume with the same ones"
        return str(error).strip().splitlines()[0]

    def _resume(self, path: Path) -> None:
        checkpoint = load_checkpoint(path, task=self.task.name)
        if checkpoint.get("optimizer") is None:
            raise UserError(f"checkpoint {path} holds no optimizer state to resume from")
        try:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError) as error:
            raise UserError(f"checkpoint {path} does not fit this model: {self._misfit(checkpoint, error)}") from None
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        if self.ema is not None and checkpoint.get("ema") is not None:
            self.ema.module.load_state_dict(checkpoint["ema"])
        self.start_epoch = int(checkpoint["epoch"]) + 1
        self.best_metric = float(checkpoint["best_metric"])
        self.best_epoch = int(checkpoint.get("best_epoch", self.start_epoch - 1))
        if checkpoint.get("budget_epochs") is not None:  # the epochs its time budget fitted: the same plan again
            self._plan(int(checkpoint["budget_epochs"]))
            shares = checkpoint.get("epoch_shares")
            if (
                isinstance(shares, list)
                and len(shares) == self.epochs
                and all(isinstance(x, float) and 0.0 < x < 1e6 for x in shares)
            ):
                self.shares = list(shares)
            self.shorten_epochs = bool(checkpoint.get("shorten_epochs", self.shorten_epochs))
        self.elapsed = float(checkpoint.get("elapsed_seconds", 0.0))
        if checkpoint.get("rng") is not None:  # rank 0's: every rank is seeded alike and draws alike
            set_rng_states(checkpoint["rng"])
        # The schedule restarts at this run's own step count: with another number of processes an
        # epoch has another number of steps than the checkpoint's run had.
        self.scheduler.last_epoch = self.steps_before(self.start_epoch)
        self._refresh_rates()
        self._log(f"resumed from {path} after epoch {self.start_epoch}")


def _host_copy(value: Any) -> Any:
    """``value`` with every tensor copied to the CPU: a snapshot that later training steps do not change."""
    if isinstance(value, Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _host_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_host_copy(v) for v in value)
    return value


def main_metric_value(metrics: dict[str, Any], key: str) -> float:
    """``metrics[key]``, where a dotted key (``coco.AP``) reaches into nested sections; None counts as 0."""
    value: Any = metrics
    for part in key.split("."):
        value = value[part]
    return float(value) if value is not None else 0.0
