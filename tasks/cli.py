"""The command-line contract every task shares: parsing, config layering, run folders, exit codes."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from backbones import BackboneError, WeightsError, list_backbones
from tasks import distributed, heap, threads
from tasks.checkpoint import load_checkpoint
from tasks.config import apply, dump_yaml, load_yaml, merge_dicts, nested_update, packaged_config, parse_set_option
from tasks.data import holdout
from tasks.data.images import READ_ERRORS, image_size, is_image_file, load_rgb, warn_unreadable
from tasks.engine import Engine, Setup, resolve_device
from tasks.errors import UserError
from tasks.export import check_format, format_of
from tasks.io import write_text
from tasks.model_summary import model_size
from tasks.recipes import Recipe, adopt_resumed

T = TypeVar("T")

COMMANDS = ("train", "eval", "predict", "export")

# flag destination -> dotted config key
COMMON_FLAGS: dict[str, str] = {
    "backbone": "model.backbone",
    "weights": "model.weights",
    "data": "data.root",
    "format": "data.format",
    "train_split": "data.train_split",
    "val_split": "data.val_split",
    "image_size": "data.image_size",
    "epochs": "train.epochs",
    "time": "train.time",
    "patience": "train.patience",
    "recipe": "train.recipe",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "workers": "train.workers",
    "seed": "train.seed",
    "device": "train.device",
    "amp": "train.amp",
    "sync_bn": "train.sync_bn",
    "output": "output",
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line :class:`UserError` s (exit code 2, no usage dump), and whose
    options and positional arguments mix in any order (``predict --checkpoint best.pt photo.jpg`` as well as
    ``predict photo.jpg --checkpoint best.pt``)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        unknown = [token for token in _options(argv) if not self._knows(token)]
        if unknown:  # argparse would read `--project runs` as the command `runs`: "invalid choice: 'runs'"
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return self.parse_intermixed_args(argv, namespace)

    def _knows(self, token: str) -> bool:
        """Whether ``token`` (``--name`` or ``--name=value``) is one of this parser's options, or a prefix that
        argparse expands to one (it reports an ambiguous prefix itself)."""
        options = self._option_string_actions
        if not token.startswith("--"):
            return token[:2] in options  # -h, or -h joined with a value
        name = token.split("=", 1)[0]
        return name in options or (self.allow_abbrev and any(o.startswith(name) for o in options if o[:2] == "--"))


def _options(argv: Sequence[str]) -> Iterator[str]:
    """The tokens of ``argv`` that argparse reads as options: before a bare ``--``, not ``-`` or a negative number."""
    for token in argv:
        if token == "--":
            return
        if token.startswith("-") and token != "-" and not re.fullmatch(r"-\d+|-\d*\.\d+", token):
            yield token


def auto_or(kind: Callable[[str], T]) -> Callable[[str], T | str]:
    """An argparse type that also takes the word ``auto``."""

    def parse(text: str) -> T | str:
        return "auto" if text == "auto" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def common_parser(task: str, description: str, *, commands: Sequence[str] = COMMANDS) -> ArgumentParser:
    parser = ArgumentParser(prog=f"python -m tasks.{task}", description=description)
    parser.add_argument("command", nargs="?", default="train", choices=commands, help="default: train")
    parser.add_argument("inputs", nargs="*", help="predict: image files or folders")
    parser.add_argument("--backbone", help="a registered backbone or timm:<model>")
    parser.add_argument("--weights", help="backbone weights: file, URL, IMAGENET1K_V1/V2, timm[:tag]")
    parser.add_argument("--checkpoint", type=Path, help="a whole model of this library (eval, predict)")
    parser.add_argument(
        "--resume", help="continue training from this last.pt; auto: from --output's last.pt if there is one"
    )
    parser.add_argument("--data", help="dataset root or dataset YAML; omitted: the built-in default data")
    parser.add_argument(
        "--format",
        help="dataset format (default: detected from the layout); export: onnx (default), torchscript or openvino",
    )
    parser.add_argument("--train-split")
    parser.add_argument("--val-split")
    parser.add_argument("--epochs", type=auto_or(int), help="default: auto (see --time)")
    parser.add_argument(
        "--time", help="wall-clock budget, e.g. 15m or 1h: epochs and schedule are fitted to it (default: 10m on a CPU)"
    )
    parser.add_argument("--patience", type=int, help="stop after N epochs without a better main metric")
    parser.add_argument("--recipe", choices=("auto", "fixed"), help="auto (default): resolve auto fields from the run")
    parser.add_argument(
        "--batch-size", type=auto_or(int), help="per process; classify default: auto, smaller on small data"
    )
    parser.add_argument("--lr", type=auto_or(float), help="default: auto")
    parser.add_argument("--image-size", type=auto_or(int), help="default: auto, from the training images")
    parser.add_argument(
        "--workers", type=auto_or(int), help="DataLoader workers; default: auto, the cores torch's threads leave free"
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"))
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed precision; default: auto (bfloat16 on a CPU with AMX or AVX-512 bf16 for inputs of 64 px or more, "
        "float16 on CUDA)",
    )
    parser.add_argument(
        "--sync-bn", action="store_true", default=None, help="under torchrun: SyncBatchNorm across processes (CUDA)"
    )
    parser.add_argument(
        "--quantize", choices=("int8",), help="export: also an int8 copy (onnx, openvino), calibrated on --data"
    )
    parser.add_argument("--calibration-images", type=int, default=16, help="export --quantize: images to calibrate on")
    parser.add_argument("--config", action="append", default=[], help="YAML file or packaged name; repeatable")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. train.ema=true")
    parser.add_argument(
        "--output",
        help="run folder (default: a new runs/<task>/<command>N); export: the file (default beside --checkpoint)",
    )
    return parser


def flag_overrides(args: argparse.Namespace, flags: Mapping[str, str]) -> dict[str, Any]:
    """The explicitly given flags as a nested config mapping."""
    out: dict[str, Any] = {}
    for dest, key in flags.items():
        value = getattr(args, dest, None)
        if value is not None:
            out = merge_dicts(out, nested_update(key, value))
    return out


def resolve_config(
    defaults: T,
    args: argparse.Namespace,
    flags: Mapping[str, str],
    *,
    embedded: str | None = None,
) -> T:
    """Defaults, then the packaged recipe ``embedded`` when no layer names ``data.root`` (the built-in
    data brings its own settings), then each ``--config``, then ``--set``, then flags."""
    layers: list[tuple[dict[str, Any], str]] = [(load_yaml(path), f"config file {path}") for path in args.config]
    layers += [(parse_set_option(text), f"--set {text}") for text in args.set]
    layers.append((flag_overrides(args, flags), "command line"))
    user: dict[str, Any] = {}
    for layer, _ in layers:
        user = merge_dicts(user, layer)
    if embedded is not None and user.get("data", {}).get("root") is None:
        path = packaged_config(embedded)
        if path is None:
            raise UserError(f"packaged config {embedded} is missing from the installation")
        layers.insert(0, (load_yaml(path), f"packaged config {embedded}"))
    config = defaults
    for layer, source in layers:
        config = apply(config, layer, source=source)
    train = getattr(config, "train", None)
    if train is not None:  # threads and workers from the cores this process may use
        plan = threads.plan_cores(train.workers, device=resolve_device(train.device).type)
        threads.apply_plan(plan)
        train.workers = plan.workers
        heap.keep_freed_memory()  # no page faults for the memory each step frees and takes again
    return config


def command_flags(args: argparse.Namespace, flags: Mapping[str, str]) -> dict[str, str]:
    """The flag-to-config mapping for this command: under ``export``, ``--format`` and ``--output``
    name the exported file's format and path, not the data's format and a run folder."""
    if args.command != "export":
        return dict(flags)
    return {dest: key for dest, key in flags.items() if dest not in ("format", "output")}


def export_format(args: argparse.Namespace) -> str:
    """``export``'s format: ``--format``, else the one ``--output``'s name ends as (``.onnx``, ``.xml``,
    ``.torchscript.pt``), else onnx; checked against ``--quantize`` before anything is written."""
    fmt = args.format or format_of(args.output) or "onnx"
    check_format(fmt, args.quantize)
    return fmt


def check_backbone_name(name: str) -> None:
    if not name.startswith("timm:") and name not in list_backbones():
        raise UserError(f"unknown backbone {name!r}: choose one of {', '.join(list_backbones())} or timm:<model>")


def new_run_dir(output: str | None, task: str, command: str) -> Path:
    """``output`` as given, or a fresh ``runs/<task>/<command>``, ``<command>2``, ... never reused.

    Under torchrun, rank 0 chooses and creates the folder and every rank gets its name.
    """
    if not distributed.is_main():
        chosen = distributed.broadcast("")
        if chosen.startswith("error: "):  # rank 0 could not make it, and says why itself
            raise UserError(chosen.removeprefix("error: "))
        return Path(chosen)
    if output:
        path = Path(output)
    else:
        base = Path("runs") / task
        number = 1
        while (path := base / (command if number == 1 else f"{command}{number}")).exists():
            number += 1
    try:
        if path.exists() and not path.is_dir():
            raise UserError(f"--output {path} is a file; name a folder for the run's files")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"--output {path}: the folder cannot be made ({error.strerror or error})") from None
    except UserError as error:
        distributed.broadcast(f"error: {error}")
        raise
    return Path(distributed.broadcast(str(path)))


class PredictImages:
    """predict's inputs as (path, RGB array) pairs: files as given, folders as the images inside them.

    An unreadable file named on the command line is a one-line error; an unreadable file found
    inside a folder is skipped with a warning and counted in ``skipped``.

    :meth:`output_name` gives each input its own output name, so no output overwrites another: an image found in
    a folder keeps its path below that folder (``a/1.jpg`` -> ``a/1``), a file named alone its stem, and a name
    already taken (``1.jpg`` beside ``1.png``, or two folders' ``1.jpg``) gets its extension, then a number.
    """

    def __init__(self, inputs: Sequence[str], example: str) -> None:
        if not inputs:
            raise UserError(f"predict needs image files or folders, e.g. predict {example}")
        self.paths: list[Path] = []
        self.explicit: set[Path] = set()
        self.names: dict[Path, str] = {}
        for text in inputs:
            path = Path(text)
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
                self.paths.extend(p for p in found if p not in self.names)
                for image in found:
                    self._name(image, image.relative_to(path).with_suffix("").as_posix())
            elif path.is_file():
                try:
                    image_size(path)  # the header now, so that no run folder is made for a file that is no image
                except READ_ERRORS:
                    raise UserError(f"input {path} is not a readable image") from None
                if path not in self.names:
                    self.paths.append(path)
                self.explicit.add(path)
                self._name(path, path.stem)
            else:
                raise UserError(f"input {path} does not exist")
        self.skipped = 0

    def _name(self, path: Path, base: str) -> None:
        if path in self.names:  # the same file twice (a file and its folder): one output
            return
        taken = set(self.names.values())
        name, suffix = base, path.suffix.lstrip(".").lower()
        if name in taken:
            name = f"{base}_{suffix}" if suffix else base
        number = 2
        while name in taken:
            name, number = f"{base}_{suffix}{number}", number + 1
        self.names[path] = name

    def output_name(self, path: Path) -> str:
        """This input's own output name, without extension (may hold ``/`` for sub-folders)."""
        return self.names[path]

    def __iter__(self) -> Iterator[tuple[Path, np.ndarray]]:
        for path in self.paths:
            try:
                image = load_rgb(path)
            except READ_ERRORS as error:
                if path in self.explicit:
                    raise UserError(f"input {path} is not a readable image") from None
                warn_unreadable(path, error)
                self.skipped += 1
                continue
            yield path, image


def require_checkpoint(args: argparse.Namespace) -> Path:
    if args.checkpoint is None:
        raise UserError(f"{args.command} needs --checkpoint FILE (a best.pt or last.pt of a training run)")
    return Path(args.checkpoint)


def write_config(run_dir: Path, config: Any, recipe: Recipe | None = None) -> None:
    """``config.yaml`` of the run: the resolved values, headed by the recipe's reasons as comments."""
    if distributed.is_main():
        head = "".join(f"# {line}\n" for line in recipe.block().splitlines()) if recipe is not None else ""
        write_text(run_dir / "config.yaml", head + dump_yaml(config))


def resume_from(resume: str | None, output: str | None) -> Path | None:
    """The checkpoint ``--resume`` names. ``auto`` is ``--output``'s last.pt when there is one, else a fresh
    start: the same command can be repeated after any interruption (``torchrun --max-restarts`` does)."""
    if resume is None:
        return None
    if resume != "auto":
        return Path(resume)
    if not output:
        raise UserError("--resume auto needs --output DIR: the run folder whose last.pt it continues")
    found = Path(output) / "last.pt"
    if found.is_file():
        return found
    if distributed.is_main():
        print(f"--resume auto: no {found} yet, starting a new run")
    return None


def resumed_recipe(cfg: T, resume: Path | None, task: str) -> tuple[T, frozenset[str]]:
    """With ``--resume``: ``cfg`` with the resumed run's resolved recipe in every field this command leaves at
    auto (see :func:`tasks.recipes.adopt_resumed`), and the keys taken from it."""
    if resume is None:
        return cfg, frozenset()
    checkpoint = load_checkpoint(resume, task=task)
    return adopt_resumed(cfg, checkpoint.get("config") or {})


def fit(task: str, cfg: Any, parts: Setup, resume: Path | None) -> tuple[dict[str, Any], Path]:
    """The ``train`` command of every runner: a new run folder with its resolved config.yaml, the recipe
    printed once, then the engine's fit. Returns the last epoch's metrics and the run folder."""
    cfg = parts.config if parts.config is not None else cfg
    run_dir = new_run_dir(cfg.output, task, "train")
    write_config(run_dir, cfg, parts.recipe)
    if distributed.is_main():
        if parts.recipe is not None:
            print(parts.recipe.block())
        if threads.ACTIVE is not None:
            print(threads.ACTIVE.line())
        print(f"{parts.summary}; run folder {run_dir}")
        if parts.input_size is not None:
            print(model_size(parts.model, *parts.input_size).line(*parts.input_size))
    recipe = parts.recipe
    engine = Engine(
        parts.model,
        parts.task,
        cfg.train,
        run_dir,
        parts.meta,
        budget_seconds=recipe.budget_seconds if recipe is not None else None,
        max_epochs=recipe.max_epochs if recipe is not None else None,
        shorten_epochs=recipe.shorten_epochs if recipe is not None else False,
    )
    return engine.fit(parts.train_loader, parts.val_loader, resume=resume), run_dir


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    """Call ``main``; a user's mistake becomes one line on stderr and exit code 2."""
    holdout.forget_notes()
    try:
        code = main(argv)
        distributed.shutdown(wait=True)  # every rank done before any leaves the group
        return code
    except (UserError, WeightsError, BackboneError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; last.pt holds the last finished epoch", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
