"""Weight loading: files, URLs, official names, wrappers, strictness and safety."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from conftest import randomize_bn_stats
from safetensors.torch import save_file

from backbones import WeightsError, build_backbone
from backbones.weights import official_url, read_state_dict


@pytest.fixture()
def reference(tmp_path):
    model = torchvision.models.resnet18().eval()
    randomize_bn_stats(model)  # default statistics (0, 1) would let swapped or mis-mapped BatchNorms pass
    return model, model.state_dict()


@pytest.fixture(autouse=True)
def _hub_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))


def _equal_to(backbone, model) -> None:
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        got = backbone.eval()(x)["c5"]
        ref = model
        want = ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {"model": {f"_orig_mod.{k}": v for k, v in sd.items()}, "epoch": 3},
        lambda sd: {f"backbone.{k}": v for k, v in sd.items()},
        lambda sd: {"model": {f"module._orig_mod.backbone.{k}": v for k, v in sd.items()}},
    ],
    ids=["plain", "state_dict+module", "model+orig_mod", "backbone", "nested-prefixes"],
)
def test_wrappers_and_prefixes_are_removed(reference, tmp_path, wrap) -> None:
    model, state = reference
    torch.save(wrap(state), tmp_path / "w.pt")
    _equal_to(build_backbone("resnet18", weights=tmp_path / "w.pt"), model)


def test_detector_checkpoint_keeps_only_the_backbone_body(reference, tmp_path) -> None:
    model, state = reference
    detector = {f"backbone.body.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    detector["backbone.fpn.inner_blocks.0.0.weight"] = torch.zeros(256, 64, 1, 1)
    detector["rpn.head.conv.0.0.weight"] = torch.zeros(256, 256, 3, 3)
    torch.save(detector, tmp_path / "det.pth")
    _equal_to(build_backbone("resnet18", weights=str(tmp_path / "det.pth")), model)


def test_safetensors_file(reference, tmp_path) -> None:
    model, state = reference
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    _equal_to(build_backbone("resnet18", weights=tmp_path / "w.safetensors"), model)


def test_file_url_is_cached_under_torch_hub(reference, tmp_path) -> None:
    model, state = reference
    source = tmp_path / "remote" / "resnet18-custom.pth"
    source.parent.mkdir()
    torch.save(state, source)
    backbone = build_backbone("resnet18", weights=source.as_uri())
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-custom.pth"
    assert cached.exists()
    _equal_to(backbone, model)
    source.unlink()  # the second load is served from the cache
    _equal_to(build_backbone("resnet18", weights=source.as_uri()), model)


def test_hash_in_official_style_filename_is_verified(reference, tmp_path) -> None:
    _, state = reference
    blob = tmp_path / "blob.pth"
    torch.save(state, blob)
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    good = tmp_path / f"resnet18-{digest[:8]}.pth"
    bad = tmp_path / "resnet18-00000000.pth"
    blob.rename(good)
    bad.write_bytes(good.read_bytes())
    build_backbone("resnet18", weights=good.as_uri())
    with pytest.raises(WeightsError, match="could not download"):
        build_backbone("resnet18", weights=bad.as_uri())


def test_a_failed_download_says_where_to_put_the_file_by_hand(tmp_path) -> None:
    """Offline, the message names the cache file that a copied checkpoint would be read from, and it is."""
    missing = tmp_path / "elsewhere" / "resnet18-f37072fd.pth"
    with pytest.raises(WeightsError) as caught:
        build_backbone("resnet18", weights=missing.as_uri())
    cached = Path(torch.hub.get_dir()) / "checkpoints" / missing.name
    assert f"could not download weights from {missing.as_uri()}: " in str(caught.value)
    assert str(caught.value).endswith(f"copy that file to {cached} or pass a local path as the weights")
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), cached)  # the hash in the name is not checked for a file already cached
    net = build_backbone("resnet18", weights=missing.as_uri())
    assert torch.equal(net.state_dict()["conv1.weight"], reference.state_dict()["conv1.weight"])


def test_official_names_resolve_to_real_download_locations() -> None:
    v1 = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    v2 = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
    assert official_url("IMAGENET1K_V1", "resnet50") == v1
    assert official_url("IMAGENET1K_V2", "resnet50") == v2
    assert official_url("DEFAULT", "resnet50") == v2
    cfg = timm.models.get_pretrained_cfg("resnet50d")
    url = official_url("timm", "resnet50d")
    assert cfg.hf_hub_id in url and url.endswith(".safetensors")
    assert "a1_in1k" in official_url("timm:a1_in1k", "resnet50")
    with pytest.raises(WeightsError, match="tags for resnet50"):
        official_url("timm:no_such_tag", "resnet50")
    with pytest.raises(WeightsError, match="no weights for 'resnet50d'"):
        official_url("IMAGENET1K_V1", "resnet50d")


def test_missing_and_unexpected_keys_are_listed(reference, tmp_path) -> None:
    _, state = reference
    broken = dict(state)
    del broken["layer3.0.conv1.weight"]
    broken["layer9.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(WeightsError) as error:
        build_backbone("resnet18", weights=tmp_path / "broken.pth")
    assert "layer3.0.conv1.weight" in str(error.value) and "layer9.weight" in str(error.value)


def test_wrong_architecture_reports_shape_mismatch(reference, tmp_path) -> None:
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(WeightsError, match="missing keys|unexpected keys"):
        build_backbone("resnet18", weights=tmp_path / "r34.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickled_objects_are_refused(tmp_path, capsys) -> None:
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "evil": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="cannot read"):
        read_state_dict(tmp_path / "evil.pth")
    assert "unpickled!" not in capsys.readouterr().out


def _bad_weight_files(folder):
    """Files a user may pass as weights by mistake, each with the reason the message must give."""
    good = folder / "good.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, good)
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "evil": _Payload()}, folder / "evil.pth")
    (folder / "empty.pth").write_bytes(b"")
    (folder / "truncated.pth").write_bytes(good.read_bytes()[:2000])
    (folder / "photo.pth").write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))  # a JPEG's first bytes
    (folder / "notes.pth").write_text("conv1.weight = 0\n")
    (folder / "folder.pth").mkdir()
    return {
        "evil.pth": r"holds a Python object \((builtins\.)?print\) that a safe load \(weights_only=True\) refuses",
        "empty.pth": "the file is empty",
        "truncated.pth": "truncated or corrupted",
        "photo.pth": "it is a JPEG image, not a checkpoint",
        "notes.pth": "it is not a PyTorch checkpoint",
        "folder.pth": "it is a folder, not a file",
    }


def test_unreadable_weight_files_say_why(tmp_path, capsys) -> None:
    """One line naming the file and what is wrong with it, without torch's advice to load with
    weights_only=False (its message for a refused object) and without an unpickler opcode or a bare KeyError
    (its messages for a file that is no checkpoint)."""
    for name, reason in _bad_weight_files(tmp_path).items():
        with pytest.raises(WeightsError) as caught:
            read_state_dict(tmp_path / name)
        message = str(caught.value)
        assert message.startswith(f"cannot read weights file {tmp_path / name}: "), message
        assert re.search(reason, message), (name, message)
        assert "\n" not in message and "weights_only` set to `False" not in message and "operand" not in message
    assert "unpickled!" not in capsys.readouterr().out


def test_missing_file_and_unknown_name(tmp_path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        build_backbone("resnet18", weights=tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match="not a file, a URL or an official name"):
        build_backbone("resnet18", weights="imagenet")


def test_timm_backbone_loads_a_timm_checkpoint_file(tmp_path) -> None:
    reference = timm.create_model("resnet18").eval()
    randomize_bn_stats(reference)
    torch.save(reference.state_dict(), tmp_path / "t.pth")
    backbone = build_backbone("timm:resnet18", weights=tmp_path / "t.pth").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = reference.forward_features(x)
        torch.testing.assert_close(backbone(x)["c5"], want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "vit_small_patch14_dinov2"])
def test_a_vits_maps_are_its_tokens_after_its_trained_final_norm(name, tmp_path) -> None:
    """A plain ViT's last map is timm's ``forward_features`` patch tokens, after the model's final LayerNorm with
    the checkpoint's weights: timm's feature getter drops that norm, so the map was the last block's raw output
    and a pretrained norm's weights were thrown away. Checked with a norm whose weights are far from 1 and 0."""
    reference = timm.create_model(name, dynamic_img_size=True).eval()
    with torch.no_grad():
        reference.norm.weight.uniform_(0.5, 2.0)
        reference.norm.bias.uniform_(-1.0, 1.0)
    torch.save(reference.state_dict(), tmp_path / "t.pth")
    backbone = build_backbone(f"timm:{name}", weights=tmp_path / "t.pth").eval()
    patch = reference.patch_embed.patch_size[0]
    x = torch.randn(2, 3, 6 * patch, 8 * patch)
    with torch.no_grad():
        tokens = reference.forward_features(x)[:, reference.num_prefix_tokens :]  # (N, H * W, C)
        want = tokens.reshape(2, 6, 8, -1).permute(0, 3, 1, 2)
        ours = backbone(x)
    level = "c4" if patch == 16 else "c5"  # patch 14 has no pyramid: the map itself is c5
    torch.testing.assert_close(ours[level], want, rtol=0, atol=1e-5)


def test_a_detector_fine_tuning_timm_weights_freezes_their_batchnorms_as_torchvisions_does(tmp_path) -> None:
    from torchvision.ops import FrozenBatchNorm2d as TimmFrozenBatchNorm2d  # timm's freezing makes these

    from tasks.detect import build_model

    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "t.pth")
    pretrained = build_model("timm:resnet18", num_classes=3, weights=str(tmp_path / "t.pth"))
    scratch = build_model("timm:resnet18", num_classes=3)
    assert isinstance(pretrained.backbone.model.bn1, TimmFrozenBatchNorm2d)
    assert isinstance(scratch.backbone.model.bn1, torch.nn.BatchNorm2d)


def test_the_loading_check_fails_on_swapped_batchnorm_statistics(reference, tmp_path) -> None:
    """The equality check is sharp enough to catch two BatchNorms' statistics loaded into each other."""
    model, state = reference
    swapped = dict(state)
    for key in ("running_mean", "running_var", "weight", "bias"):
        a, b = f"layer1.0.bn1.{key}", f"layer1.0.bn2.{key}"
        swapped[a], swapped[b] = state[b], state[a]
    torch.save(swapped, tmp_path / "swapped.pt")
    with pytest.raises(AssertionError):
        _equal_to(build_backbone("resnet18", weights=tmp_path / "swapped.pt"), model)
