"""Config layering: defaults, YAML, --set and flags, with one-line errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pytest

from tasks.classify import ClassifyConfig
from tasks.config import ConfigError, TrainConfig, apply, load_yaml, packaged_config, parse_set_option


@dataclass
class _Inner:
    size: int = 3
    names: list[str] | None = None


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=_Inner)
    rate: float = 0.1
    mode: str = "a"


def test_apply_validates_types_and_keys() -> None:
    cfg = apply(_Outer(), {"inner": {"size": 5, "names": ["x"]}, "rate": 1}, source="test")
    assert cfg.inner.size == 5 and cfg.inner.names == ["x"] and cfg.rate == 1.0 and isinstance(cfg.rate, float)
    with pytest.raises(ConfigError, match=r"test: unknown config key 'inner.sise' \(valid keys: size, names\)"):
        apply(_Outer(), {"inner": {"sise": 5}}, source="test")
    with pytest.raises(ConfigError, match="'inner.size' must be an integer, got 'big'"):
        apply(_Outer(), {"inner": {"size": "big"}}, source="test")
    with pytest.raises(ConfigError, match="must be an integer, got True"):
        apply(_Outer(), {"inner": {"size": True}}, source="test")
    with pytest.raises(ConfigError, match="'train.optimizer' must be one of 'sgd', 'adamw'"):
        apply(ClassifyConfig(), {"train": {"optimizer": "adam"}}, source="test")


def test_yaml_syntax_error_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 3\n  lr: [0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: YAML syntax error at line \d"):
        load_yaml(path)


def test_set_option_is_nested_yaml() -> None:
    assert parse_set_option("train.ema=true") == {"train": {"ema": True}}
    assert parse_set_option("data.classes=[a, b]") == {"data": {"classes": ["a", "b"]}}
    with pytest.raises(ConfigError):
        parse_set_option("novalue")


def test_packaged_configs_ship_as_package_data() -> None:
    names = {p.name for p in resources.files("configs").joinpath("classify").iterdir()}
    assert "digits.yaml" in names
    digits = packaged_config("classify/digits")
    assert digits is not None and load_yaml(digits)["data"]["image_size"] == 32
    assert load_yaml("classify/digits") == load_yaml(digits)  # names resolve without a path
    for yaml_file in resources.files("configs").joinpath("classify").iterdir():
        if yaml_file.name.endswith(".yaml"):
            apply(
                ClassifyConfig(), load_yaml(packaged_config(f"classify/{yaml_file.name[:-5]}")), source=yaml_file.name
            )


def test_train_config_defaults_are_valid() -> None:
    cfg = apply(TrainConfig(), {"clip_grad": 1.0, "step_milestones": [3, 6]}, source="t")
    assert cfg.clip_grad == 1.0 and cfg.step_milestones == [3, 6]


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "a.jpg", "b dir", "--checkpoint", "best.pt"],
        ["predict", "--checkpoint", "best.pt", "a.jpg", "b dir"],
        ["--checkpoint", "best.pt", "predict", "a.jpg", "b dir"],
        ["predict", "a.jpg", "--checkpoint", "best.pt", "b dir"],
    ],
)
def test_options_and_images_mix_in_any_order(argv) -> None:
    from tasks.cli import common_parser

    args = common_parser("detect", "d").parse_args(argv)
    assert (args.command, args.inputs, args.checkpoint) == ("predict", ["a.jpg", "b dir"], Path("best.pt"))
    assert common_parser("detect", "d").parse_args(["--data", "x"]).command == "train"  # still the default


@pytest.mark.parametrize(
    "argv, unknown",
    [
        (["--project", "runs"], "--project"),  # argparse alone: "argument command: invalid choice: 'runs'"
        (["--imgsz", "640", "--data", "d", "--name", "exp"], "--imgsz --name"),
        (["predict", "a.jpg", "--bogus=1"], "--bogus=1"),
        (["-x", "3"], "-x"),
    ],
)
def test_unknown_options_are_named(argv, unknown) -> None:
    from tasks.cli import common_parser
    from tasks.errors import UserError

    with pytest.raises(UserError) as caught:
        common_parser("detect", "d").parse_args(argv)
    assert str(caught.value) == f"python -m tasks.detect: unrecognized arguments: {unknown}"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--ep", "3"], dict(epochs=3)),  # a prefix argparse expands
        (["--lr", "-0.5", "--set=train.momentum=0.8"], dict(lr=-0.5, set=["train.momentum=0.8"])),
        (["predict", "--checkpoint", "b.pt", "--", "-odd.jpg"], dict(command="predict", inputs=["-odd.jpg"])),
    ],
)
def test_known_options_prefixes_and_negative_numbers_still_parse(argv, expected) -> None:
    from tasks.cli import common_parser

    args = common_parser("detect", "d").parse_args(argv)
    assert {key: getattr(args, key) for key in expected} == expected


def test_an_output_that_cannot_be_a_folder_is_one_line_and_the_file_stays(tmp_path) -> None:
    """--output naming a file, or a place no folder can be made, raised FileExistsError and FileNotFoundError."""
    from tasks.cli import new_run_dir
    from tasks.errors import UserError

    taken = tmp_path / "results.txt"
    taken.write_text("keep me")
    for output, message in (
        (taken, f"--output {taken} is a file; name a folder for the run's files"),
        (taken / "run", f"--output {taken / 'run'}: the folder cannot be made (Not a directory)"),
    ):
        with pytest.raises(UserError) as caught:
            new_run_dir(str(output), "classify", "train")
        assert str(caught.value) == message
    assert taken.read_text() == "keep me"
    assert new_run_dir(str(tmp_path / "a" / "b"), "classify", "train") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()


def test_predict_inputs_get_output_names_that_never_collide(tmp_path) -> None:
    from PIL import Image

    from tasks.cli import PredictImages

    folder = tmp_path / "photos"
    for name in ("1.jpg", "1.png", "a/1.jpg", "b/1.jpg", "notes.txt"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (2, 2)).save(folder / name, format="PNG")  # a file named alone must have an image header
    elsewhere = tmp_path / "x" / "1.jpg"
    elsewhere.parent.mkdir()
    Image.new("RGB", (2, 2)).save(elsewhere, format="PNG")
    images = PredictImages([str(folder), str(elsewhere), str(folder / "a" / "1.jpg")], "p")
    names = [images.output_name(p) for p in images.paths]
    assert names == ["1", "1_png", "a/1", "b/1", "1_jpg"]  # the repeated a/1.jpg is predicted once
    again = PredictImages([str(elsewhere), str(tmp_path / "x")], "p")  # a file, then its own folder
    assert [again.output_name(p) for p in again.paths] == ["1"]


@pytest.mark.parametrize(
    "update, message",
    [
        ({"train": {"batch_size": -4}}, "'train.batch_size' must be ≥ 1, got -4"),
        ({"train": {"lr": 0}}, "'train.lr' must be > 0, got 0"),
        ({"train": {"workers": -1}}, "'train.workers' must be ≥ 0"),
        ({"train": {"ema_decay": 1.5}}, "'train.ema_decay' must be > 0 and ≤ 1"),
        ({"data": {"image_size": 8}}, "'data.image_size' must be ≥ 16 and ≤ 4096, got 8"),
    ],
)
def test_numbers_out_of_range_are_one_line_errors(update, message) -> None:
    with pytest.raises(ConfigError) as caught:
        apply(ClassifyConfig(), update, source="run.yaml")
    assert str(caught.value).startswith("run.yaml: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert apply(ClassifyConfig(), {"train": {"lr": "auto", "batch_size": 1}}, source="t").train.batch_size == 1
