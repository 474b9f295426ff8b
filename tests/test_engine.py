"""The engine's training options, each checked by its own effect on a model small enough to replay by hand."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader

from tasks.config import TrainConfig, apply
from tasks.engine import Engine, build_optimizer, param_groups


class _Square:
    """loss = mean(model(x)²); records whether the forward ran under autocast, and in which dtype."""

    name = "classify"
    main_metric = "accuracy"

    def __init__(self) -> None:
        self.autocast: list[tuple[bool, torch.dtype]] = []

    def to_device(self, batch, device):
        return batch

    def losses(self, model, batch):
        out = model(batch["x"])
        self.autocast.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return {"loss": out.float().pow(2).mean()}

    def evaluate(self, model, loader, device):
        return {"accuracy": 0.5}


def _batches(count: int = 4) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(4, 3, generator=generator) * 3, "batch_size": 4} for _ in range(count)]


def _config(**train) -> TrainConfig:
    return apply(TrainConfig(), {"epochs": 1, "lr": 0.1, "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0,
                                "backbone_lr_scale": 1.0, "warmup_epochs": 0.0, "clip_grad": None,
                                "schedule": "constant", "device": "cpu", "amp": False, "channels_last": False,
                                **train}, source="t")  # fmt: skip


def _run(tmp_path, batches, model=None, **train):
    cfg = _config(**train)
    torch.manual_seed(0)
    model = model or nn.Linear(3, 1)
    start = copy.deepcopy(model)
    task = _Square()
    engine = Engine(model, task, cfg, tmp_path, {"task": "classify"})
    seen: list[dict] = []  # at each optimizer step: the gradients it applies and the weights after it
    prepare = engine.prepare  # the optimizer is built in fit(): wrap its step there

    def prepare_and_watch(steps_per_epoch):
        prepare(steps_per_epoch)
        engine.optimizer.register_step_pre_hook(
            lambda *_: seen.append({"grads": [p.grad.detach().clone() for p in model.parameters()]})
        )
        engine.optimizer.register_step_post_hook(
            lambda *_: seen[-1].update(weights=[p.detach().clone() for p in model.parameters()])
        )

    engine.prepare = prepare_and_watch
    loader = DataLoader(batches, batch_size=None)
    engine.fit(loader, loader)
    return engine, start, seen, task


def _gradients(model: nn.Module, batch: dict) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(batch["x"]).pow(2).mean().backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def test_accumulation_steps_once_per_group_with_the_groups_mean_gradient(tmp_path) -> None:
    batches = _batches(4)
    engine, start, seen, _ = _run(tmp_path, batches, accumulate=2)
    assert len(seen) == 2  # 4 batches, 2 per step
    replay = copy.deepcopy(start)
    for group, step in zip((batches[:2], batches[2:]), seen):
        pairs = [_gradients(replay, b) for b in group]
        mean = [(a + b) / 2 for a, b in zip(*pairs)]
        for got, want in zip(step["grads"], mean):
            torch.testing.assert_close(got, want)
        with torch.no_grad():
            for p, g in zip(replay.parameters(), mean):
                p -= 0.1 * g
    for got, want in zip(engine.model.parameters(), replay.parameters()):
        torch.testing.assert_close(got, want)


def test_clipping_bounds_the_applied_gradient_norm_and_only_when_it_is_larger(tmp_path) -> None:
    _, _, free, _ = _run(tmp_path / "free", _batches(3))
    norms = [float(torch.linalg.vector_norm(torch.stack([g.norm() for g in s["grads"]]))) for s in free]
    limit = min(norms) / 2  # every step's gradient is above it
    _, _, clipped, _ = _run(tmp_path / "clipped", _batches(3), clip_grad=limit)
    applied = [float(torch.linalg.vector_norm(torch.stack([g.norm() for g in s["grads"]]))) for s in clipped]
    assert applied[0] == pytest.approx(limit, rel=1e-5)  # the same first gradient as the free run, scaled down
    assert all(norm <= limit * (1 + 1e-5) for norm in applied)
    _, _, loose, _ = _run(tmp_path / "loose", _batches(3), clip_grad=max(norms) * 10)
    for a, b in zip(loose, free):  # a limit above every norm changes nothing
        for x, y in zip(a["grads"], b["grads"]):
            torch.testing.assert_close(x, y)


def test_clipping_gives_torchs_gradients_to_the_bit_and_skips_the_multiply_within_the_limit(
    tmp_path, monkeypatch
) -> None:
    cfg = _config()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    engine = Engine(model, _Square(), cfg, tmp_path, {"task": "classify"})
    model(torch.randn(16, 3) * 3).pow(2).mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
    scaled = []
    real = nn.utils.clip_grads_with_norm_
    monkeypatch.setattr(nn.utils, "clip_grads_with_norm_", lambda *a, **k: scaled.append(1) or real(*a, **k))
    for limit, multiplies in ((norm / 3, True), (norm * 3, False), (norm * (1 + 1e-9), True)):
        for p, g in zip(model.parameters(), grads):  # torch's clip_grad_norm_ on a copy of the gradients
            p.grad = g.clone()
        nn.utils.clip_grad_norm_(model.parameters(), limit)
        reference = [p.grad.clone() for p in model.parameters()]
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        scaled.clear()
        engine._clip_gradients(limit)
        assert all(torch.equal(p.grad, r) for p, r in zip(model.parameters(), reference)), limit
        assert bool(scaled) is multiplies, limit  # within torch's 1e-6 of the limit it scales, as torch does


def test_the_benchmarks_training_steps_clip_as_the_engine_does(tmp_path) -> None:
    """Both loops that ``python -m tasks.bench training`` times, and the profiler's step, clip to the recipe's
    ``train.clip_grad``: ``training_stepper`` takes the engine's weights after each step, to the bit, and the bare
    loop's step (torch's ``clip_grad_norm_`` and default optimizer step) the stepper's with that step. Unclipped,
    the main job's detector diverged after about 17 steps and both timed NaN steps over fewer boxes; here the
    unclipped engine's weights differ from every clipped loop's."""
    from types import SimpleNamespace

    from tasks.bench import bare_loop_step, training_stepper
    from tasks.engine import build_optimizer

    batches = _batches(3)
    _, _, free, _ = _run(tmp_path / "free", batches)
    norms = [float(torch.linalg.vector_norm(torch.stack([g.norm() for g in s["grads"]]))) for s in free]
    limit = min(norms) / 2  # every step's gradient is above it
    _, start, seen, _ = _run(tmp_path / "clipped", batches, clip_grad=limit)
    cfg = _config(clip_grad=limit)
    step = training_stepper(SimpleNamespace(model=copy.deepcopy(start), task=_Square()), cfg, amp=False,
                            channels_last=False)  # fmt: skip
    default_step = training_stepper(SimpleNamespace(model=copy.deepcopy(start), task=_Square()), cfg, amp=False,
                                    channels_last=False, fused=False)  # fmt: skip
    bare = SimpleNamespace(model=copy.deepcopy(start), task=_Square())
    bare_step = bare_loop_step(bare, build_optimizer(bare.model, cfg, fused=False), limit)
    for batch, engine_step, unclipped in zip(batches, seen, free):
        step(batch)
        default_step(batch)
        bare_step(batch)
        for weights, want in ((step.model.parameters(), engine_step["weights"]),
                              (bare.model.parameters(), list(default_step.model.parameters()))):  # fmt: skip
            weights = list(weights)
            assert all(torch.equal(a, b) for a, b in zip(weights, want))
            assert not all(torch.equal(a, b) for a, b in zip(weights, unclipped["weights"]))


def test_a_timed_loop_with_a_loss_that_is_not_finite_is_refused() -> None:
    from tasks.bench import finite_losses

    finite_losses([torch.tensor(1.0), torch.tensor(2.0)], "loop")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(RuntimeError, match=r"^loop: the loss was not finite in 1 of 3 steps"):
            finite_losses([torch.tensor(1.0), torch.tensor(bad), torch.tensor(3.0)], "loop")


def test_ema_is_the_exponential_average_of_the_weights_after_each_step(tmp_path) -> None:
    decay = 0.5
    engine, _, seen, _ = _run(tmp_path, _batches(4), ema=True, ema_decay=decay)
    average = [w.clone() for w in seen[0]["weights"]]  # the first update copies the weights
    for step in seen[1:]:
        average = [decay * a + (1 - decay) * w for a, w in zip(average, step["weights"])]
    for got, want in zip(engine.ema.module.parameters(), average):
        torch.testing.assert_close(got, want)
    assert not torch.equal(next(engine.ema.module.parameters()), next(engine.model.parameters()))
    assert engine.eval_model is engine.ema.module  # evaluation and best.pt use the average


def test_amp_runs_the_forward_in_bfloat16_on_the_cpu_and_not_without_it(tmp_path) -> None:
    _, _, _, task = _run(tmp_path / "amp", _batches(2), amp=True)
    assert task.autocast and all(on and dtype == torch.bfloat16 for on, dtype in task.autocast)
    _, _, _, plain = _run(tmp_path / "plain", _batches(2))
    assert plain.autocast and all(not on and dtype == torch.float32 for on, dtype in plain.autocast)


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 1),
    )  # fmt: skip


def test_channels_last_trains_as_nchw_and_bfloat16_within_its_rounding(tmp_path) -> None:
    """The auto recipe's speed settings against plain float32 NCHW, over the same 4 steps: channels-last alone
    gives the same weights to float rounding. bfloat16 autocast (8 mantissa bits, about 0.4% a rounding) points
    each step's gradient the same way (cosine ≥ 0.999; measured ≥ 0.9997) and leaves the weights within 5% of
    what training moved them."""
    generator = torch.Generator().manual_seed(0)
    batches = [{"x": torch.randn(4, 3, 16, 16, generator=generator) * 3, "batch_size": 4} for _ in range(4)]
    runs = {}
    for name, amp, channels_last in (("nchw", False, False), ("nhwc", False, True), ("bf16", True, True)):
        engine, start, seen, task = _run(tmp_path / name, batches, _conv_net(), amp=amp, channels_last=channels_last)
        assert len(seen) == 4
        conv = engine.model[0].weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last  # really NHWC, or really not
        assert {dtype for _, dtype in task.autocast} == {torch.bfloat16 if amp else torch.float32}
        runs[name] = seen
    for a, b in zip(runs["nhwc"], runs["nchw"], strict=True):
        torch.testing.assert_close(a["weights"], b["weights"], rtol=1e-4, atol=1e-5)
    flat = lambda tensors: torch.cat([t.detach().flatten() for t in tensors])  # noqa: E731
    for a, b in zip(runs["bf16"], runs["nchw"], strict=True):  # each step descends the same way
        assert torch.nn.functional.cosine_similarity(flat(a["grads"]), flat(b["grads"]), dim=0) >= 0.999
    moved = flat(runs["nchw"][-1]["weights"]) - flat(start.parameters())
    apart = flat(runs["bf16"][-1]["weights"]) - flat(runs["nchw"][-1]["weights"])
    assert apart.norm() <= 0.05 * moved.norm()  # measured: 1.3%


class _Exploding(_Square):
    """The loss of the third step onwards is not finite, as with a learning rate far too high."""

    def losses(self, model, batch):
        out = super().losses(model, batch)
        if len(self.autocast) >= 3:
            return {"loss": out["loss"] * float("inf")}
        return out


def test_a_loss_that_is_not_finite_stops_the_run_with_one_line(tmp_path) -> None:
    from tasks.errors import UserError

    cfg = apply(TrainConfig(), {"epochs": 2, "lr": 0.1, "optimizer": "sgd", "weight_decay": 0.0, "log_every": 2,
                                "backbone_lr_scale": 1.0, "warmup_epochs": 0.0, "clip_grad": None,
                                "device": "cpu", "amp": False, "channels_last": False}, source="t")  # fmt: skip
    engine = Engine(nn.Linear(3, 1), _Exploding(), cfg, tmp_path, {"task": "classify"})
    loader = DataLoader(_batches(5), batch_size=None)
    expected = r"loss became (inf|nan) in epoch 1, steps 3-4: .* lower it \(--lr, now train.lr 0.1\)"
    with pytest.raises(UserError, match=expected):
        engine.fit(loader, loader)
    engine = Engine(nn.Linear(3, 1), _Exploding(), apply(cfg, {"log_every": 20}, source="t"), tmp_path, {})
    with pytest.raises(UserError, match="in epoch 1, steps 1-5"):  # checked at the epoch's end
        engine.fit(loader, loader)


def test_results_csv_has_a_row_per_epoch_and_results_png_draws_it(tmp_path, monkeypatch) -> None:
    import csv

    engine, *_ = _run(tmp_path, _batches(4), epochs=3, checkpoint_seconds=0.0)
    with (tmp_path / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert list(rows[0]) == ["epoch", "train/loss", "lr", "images_per_s", "seconds", "val/accuracy"]
    assert {row["val/accuracy"] for row in rows} == {"0.5"} and all(float(row["images_per_s"]) > 0 for row in rows)
    assert float(rows[0]["train/loss"]) > float(rows[2]["train/loss"]) > 0  # SGD on a square: it falls
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # resumed after epoch 2 in the same folder: the rows up to it stay, the third is written again
    monkeypatch.setattr("tasks.engine.load_checkpoint", lambda path, task: torch.load(path, weights_only=True))
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    torch.save({**last, "epoch": 1}, tmp_path / "after2.pt")
    cfg = engine.cfg
    again = Engine(nn.Linear(3, 1), _Square(), cfg, tmp_path, {"task": "classify"})
    loader = DataLoader(_batches(4), batch_size=None)
    again.fit(loader, loader, resume=tmp_path / "after2.pt")
    with (tmp_path / "results.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2", "3"]


class _Backboned(nn.Module):
    """A small convolutional net with a ``backbone``, as the task models have."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.backbone(x).mean(dim=(2, 3)))


@pytest.mark.slow
def test_a_compiled_backbone_trains_as_the_eager_one(tmp_path) -> None:
    """train.compile: the same gradients and weights as eager to float rounding, and the same state-dict keys."""
    generator = torch.Generator().manual_seed(1)
    batches = [{"x": torch.randn(4, 3, 12, 12, generator=generator), "batch_size": 4} for _ in range(3)]
    cfg = apply(TrainConfig(), {"epochs": 1, "lr": 0.05, "optimizer": "sgd", "weight_decay": 0.0,
                                "backbone_lr_scale": 1.0, "warmup_epochs": 0.0, "clip_grad": None,
                                "schedule": "constant", "device": "cpu", "amp": False, "channels_last": False},
                source="t")  # fmt: skip
    runs = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model, task = _Backboned(), _Square()
        engine = Engine(model, task, apply(cfg, {"compile": compiled}, source="t"), tmp_path / str(compiled), {})
        grads = []
        prepare = engine.prepare

        def watch(steps, engine=engine, prepare=prepare, grads=grads, model=model):
            prepare(steps)
            engine.optimizer.register_step_pre_hook(
                lambda *_: grads.append([p.grad.detach().clone() for p in model.parameters()])
            )

        engine.prepare = watch
        loader = DataLoader(batches, batch_size=None)
        engine.fit(loader, loader)
        assert (model.backbone._compiled_call_impl is not None) == compiled  # really compiled, or really not
        runs[compiled] = (model.state_dict(), grads)
    (eager, eager_grads), (compiled, compiled_grads) = runs[False], runs[True]
    assert list(compiled) == list(eager)  # no "_orig_mod." prefixes: checkpoints load either way
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    for a, b in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_results_png_marks_whole_epochs_only(tmp_path, monkeypatch) -> None:
    """Two epochs drawn: the epoch axis reads 1 and 2, not matplotlib's default 1.0, 1.2, ... 2.0."""
    from matplotlib import pyplot as plt

    from tasks.run_log import RunLog

    drawn = []
    monkeypatch.setattr(plt, "close", lambda figure: drawn.append(figure))
    log = RunLog(tmp_path)
    for epoch, loss in ((1, 1.9), (2, 0.8)):
        log.add({"epoch": epoch, "train/loss": loss, "val/accuracy": 0.4 * epoch})
    assert log.draw("accuracy") == tmp_path / "results.png"
    for axes in drawn[-1].axes:
        low, high = axes.get_xlim()
        ticks = [t for t in axes.get_xticks() if low <= t <= high]
        assert ticks == [1.0, 2.0], ticks


def test_results_png_draws_the_tasks_headlines_before_the_other_columns(tmp_path, monkeypatch) -> None:
    """The multi-task run's classification section has more columns than results.png draws; each task's
    headline (from MultiTaskTask.headline_metrics) is drawn all the same, the main metric first."""
    from matplotlib import pyplot as plt

    from tasks.multitask import MultiTaskTask
    from tasks.run_log import MAX_METRIC_LINES, RunLog

    drawn = []
    monkeypatch.setattr(plt, "close", lambda figure: drawn.append(figure))
    classify = ["accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_micro", "recall_micro"]
    classify += ["f1_micro", "precision_weighted", "recall_weighted", "f1_weighted"]
    columns = [f"val/classify/{key}" for key in classify] + ["val/detect/coco/AP", "val/detect/coco/AP50"]
    columns += ["val/segment/mIoU", "val/segment/mDice", "val/main"]
    assert len(columns) > MAX_METRIC_LINES
    log = RunLog(tmp_path)
    for epoch in (1, 2):
        log.add({"epoch": epoch, "train/loss": 1.0 / epoch, **{c: 0.1 * epoch for c in columns}})
    log.draw(MultiTaskTask.main_metric, MultiTaskTask.headline_metrics)
    labels = [line.get_label() for line in drawn[-1].axes[1].get_lines()]
    assert labels[:4] == ["main", "classify/accuracy", "detect/coco/AP", "segment/mIoU"], labels
    assert len(labels) == MAX_METRIC_LINES and {"detect/coco/AP50", "segment/mDice"} <= set(labels)


class _Pooled(nn.Module):
    """A conv backbone (its parameters at backbone_lr_scale), BatchNorm (no weight decay) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.backbone(x).mean((2, 3)))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_fused_optimizer_step_is_torchs_default_step_to_float_rounding(optimizer) -> None:
    torch.manual_seed(0)
    model = _Pooled()
    cfg = apply(TrainConfig(), {"optimizer": optimizer, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.01,
                                "backbone_lr_scale": 0.1}, source="t")  # fmt: skip
    start = copy.deepcopy(model)
    models = {"fused": model, "default": copy.deepcopy(model), "foreach": copy.deepcopy(model)}
    optimizers = {
        name: build_optimizer(net, cfg, fused=None if name == "fused" else False, foreach=name == "foreach")
        for name, net in models.items()
    }
    assert optimizers["fused"].defaults["fused"] and not optimizers["default"].defaults["fused"]
    assert optimizers["foreach"].defaults["foreach"] and not optimizers["default"].defaults["foreach"]
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(4, 3, 8, 8, generator=generator)
        for name, net in models.items():
            optimizers[name].zero_grad(set_to_none=True)
            net(x).pow(2).mean().backward()
            optimizers[name].step()
    for name in ("fused", "foreach"):
        for got, want in zip(models[name].parameters(), models["default"].parameters()):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        moved = [float((a - b).abs().max()) for a, b in zip(models["default"].parameters(), start.parameters())]
    assert min(moved) > 1e-4  # every parameter took steps far larger than the tolerance


def _copies_of(shape: torch.Size, step) -> int:
    """How many ``aten::clone`` calls on a tensor of ``shape`` ``step()`` makes, torch's kernels' own included."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as recorded:
        step()
    return sum(e.name == "aten::clone" and e.input_shapes[:1] == [list(shape)] for e in recorded.events())


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_fused_step_on_channels_last_weights_is_torchs_to_the_bit_without_copying_them(optimizer) -> None:
    """build_optimizer's fused step hands torch's kernel each channels-last tensor as a contiguous permutation of
    itself. The parameters and state equal torch's own fused optimizer's to the bit, keep their layout, and load
    from its state dict; and no weight-sized tensor is copied (torch's kernel copies each such gradient)."""
    torch.manual_seed(0)
    model = _Pooled().to(memory_format=torch.channels_last)
    weight = model.backbone[0].weight
    assert not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)
    cfg = apply(TrainConfig(), {"optimizer": optimizer, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.01,
                                "backbone_lr_scale": 0.1}, source="t")  # fmt: skip
    models = {"ours": model, "torch": copy.deepcopy(model)}
    torch_class = torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW
    torch_options = {"momentum": cfg.momentum} if optimizer == "sgd" else {}
    optimizers = {
        "ours": build_optimizer(models["ours"], cfg),
        "torch": torch_class(param_groups(models["torch"], cfg), lr=cfg.lr, fused=True, **torch_options),
    }
    assert type(optimizers["ours"]) is not torch_class and optimizers["ours"].defaults["fused"]
    copies = {}
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(4, 3, 8, 8, generator=generator).to(memory_format=torch.channels_last)
        for name, net in models.items():
            optimizers[name].zero_grad(set_to_none=True)
            net(x).pow(2).mean().backward()
            copies[name] = copies.get(name, 0) + _copies_of(weight.shape, optimizers[name].step)
    assert copies == {"ours": 0, "torch": 3}
    for got, want in zip(models["ours"].parameters(), models["torch"].parameters()):
        assert torch.equal(got, want) and got.stride() == want.stride()
    ours, theirs = optimizers["ours"].state_dict(), optimizers["torch"].state_dict()
    assert ours["state"].keys() == theirs["state"].keys()
    for index, state in theirs["state"].items():
        for key, want in state.items():
            got = ours["state"][index][key]
            assert torch.equal(got, want) and got.stride() == want.stride(), (index, key)
    assert weight.stride() == models["torch"].backbone[0].weight.stride()
    # a run resumed from torch's own state goes on as torch's (a copy: loading keeps the tensors it is given)
    optimizers["ours"].load_state_dict(copy.deepcopy(theirs))
    x = torch.randn(4, 3, 8, 8, generator=generator).to(memory_format=torch.channels_last)
    for name, net in models.items():
        optimizers[name].zero_grad(set_to_none=True)
        net(x).pow(2).mean().backward()
        optimizers[name].step()
    for got, want in zip(models["ours"].parameters(), models["torch"].parameters()):
        assert torch.equal(got, want)


def test_the_engine_gives_the_datasets_a_decoded_image_cache_within_train_cache_mb(tmp_path, monkeypatch) -> None:
    from tasks.data.images import DecodedCache

    class Images(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.decoded = DecodedCache()

        def __len__(self) -> int:
            return 4

        def __getitem__(self, index):
            return index

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cfg = apply(TrainConfig(), {"epochs": 1, "lr": 0.1, "optimizer": "sgd", "weight_decay": 0.0,
                                "backbone_lr_scale": 1.0, "warmup_epochs": 0.0, "clip_grad": None, "amp": False,
                                "channels_last": False, "device": "cpu", "cache_mb": 300}, source="t")  # fmt: skip
    engine = Engine(nn.Linear(3, 1), _Square(), cfg, tmp_path, {})
    train, val = Images(), Images()
    engine.cache_images(DataLoader(train), DataLoader(val), DataLoader([1, 2]))  # a dataset without a cache: left
    assert train.decoded is val.decoded and train.decoded.budget == 300 * 2**20  # one process: one shared cache
    train, val = Images(), Images()
    engine.cache_images(DataLoader(train, num_workers=2), DataLoader(val, num_workers=1))  # workers not started
    assert train.decoded is not val.decoded
    assert train.decoded.budget == val.decoded.budget == 100 * 2**20  # 3 worker processes, each its own copy
    engine.cfg = apply(cfg, {"cache_mb": 0}, source="t")
    engine.cache_images(DataLoader(train))
    assert train.decoded.budget == 0
