"""``python -m tasks.cache``: converted copies record their source; older copies of a changed source are listed
and deleted, the newest and every other source's copies kept."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from tasks.cache import main


def _coco(root, masks_value: int) -> None:
    """A one-image COCO split whose polygon covers the image's left half with category ``masks_value``."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "val").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "val" / "a.png")
    document = {
        "images": [{"id": 1, "file_name": "a.png", "width": 30, "height": 20}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": masks_value, "area": 300.0, "iscrowd": 0,
                         "segmentation": [[0, 0, 15, 0, 15, 20, 0, 20]], "bbox": [0, 0, 15, 20]}],
        "categories": [{"id": 1, "name": "left"}, {"id": 2, "name": "other"}],
    }  # fmt: skip
    (root / "annotations" / "instances_val.json").write_text(json.dumps(document))


def test_an_older_copy_of_a_changed_source_is_named_and_pruned_and_the_newest_kept(tmp_path, monkeypatch, capsys):
    from tasks.data.coco_masks import coco_semantic_masks

    cache = tmp_path / "cache"
    monkeypatch.setenv("MTB_CACHE", str(cache))
    first_root, other_root = tmp_path / "coco", tmp_path / "other"
    _coco(first_root, 1)
    _coco(other_root, 1)
    _, old, _ = coco_semantic_masks(first_root, "val")
    _, other, _ = coco_semantic_masks(other_root, "val")
    assert "older cop" not in capsys.readouterr().out
    annotation = first_root / "annotations" / "instances_val.json"
    _coco(first_root, 2)  # the same file, changed: drawn again under a new key
    os.utime(annotation, ns=(annotation.stat().st_atime_ns, annotation.stat().st_mtime_ns + 10**9))
    _, new, _ = coco_semantic_masks(first_root, "val")
    assert new != old and old.is_dir()
    assert capsys.readouterr().out.strip().startswith(
        f"cache: 1 older copy of {annotation.resolve()} (val) ("
    )  # fmt: skip
    (cache / "ade20k-masks").mkdir()  # a folder an earlier version wrote
    (cache / "ade20k-masks" / "x.png").write_bytes(b"0" * 100)

    assert main([]) == 0
    listed = capsys.readouterr().out
    assert "coco-masks:" in listed and "1 older copy" in listed and "ade20k-masks: 0.0 MB (no longer read)" in listed

    assert main(["prune"]) == 0
    pruned = capsys.readouterr().out
    assert f"deleted {old} (an older copy of {annotation.resolve()} (val))" in pruned
    assert f"deleted {cache / 'ade20k-masks'} (no longer read)" in pruned
    assert not old.exists() and not old.parent.exists() and not (cache / "ade20k-masks").exists()
    assert new.is_dir() and other.is_dir()  # the newest copy, and another source's copy, stay
    mask = np.asarray(Image.open(new / "a.png"))
    assert mask[0, 0] == 2 and mask[0, 29] == 0  # the changed file's category: the copy read from now on
    _, again, _ = coco_semantic_masks(first_root, "val")
    assert again == new and "older cop" not in capsys.readouterr().out

    assert main(["prune"]) == 0
    assert capsys.readouterr().out.strip() == "nothing to delete"


def test_converted_masks_of_two_splits_in_one_folder_are_two_sources(tmp_path, monkeypatch, capsys):
    """Colour masks of train and val side by side in one folder are converted to two copies, neither older
    than the other; a changed mask makes the copy of its own split older."""
    from tasks.cache import older_copies
    from tasks.data.colour_masks import converted_samples
    from tasks.data.segmentation import SegmentationSample

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "masks"
    folder.mkdir()
    samples = {}
    for split, names in (("train", ("a", "b")), ("val", ("c",))):
        for name in names:
            Image.fromarray(np.full((4, 4), 1, np.uint8)).save(folder / f"{name}.png")
        samples[split] = [SegmentationSample(n, folder / f"{n}.png", folder / f"{n}.png") for n in names]

    def convert(path):
        return np.asarray(Image.open(path))

    first = {split: converted_samples(s, "test-masks", "v1", convert) for split, s in samples.items()}
    assert older_copies(tmp_path / "cache" / "test-masks") == []
    changed = folder / "c.png"
    Image.fromarray(np.full((4, 4), 2, np.uint8)).save(changed)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    converted_samples(samples["val"], "test-masks", "v1", convert)
    older = older_copies(tmp_path / "cache" / "test-masks")
    assert [c.folder for c in older] == [first["val"][0].mask.parent]
    assert f"cache: 1 older copy of 1 mask in {folder} (" in capsys.readouterr().out


def test_an_unknown_command_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    assert main(["clean"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: python -m tasks.cache: argument command: invalid choice: 'clean' (choose from 'list', 'prune')"
    )
    assert main([]) == 0
    assert capsys.readouterr().out.strip() == f"cache: {tmp_path / 'cache'} (empty)"


def test_the_copy_a_run_read_last_is_the_one_kept(tmp_path, monkeypatch) -> None:
    """A mask changed and then restored (its size and time as before) reads its first copy again from the cache:
    that copy becomes the newest, and the copy of the changed mask the older one."""
    from tasks.cache import older_copies
    from tasks.data.colour_masks import converted_samples
    from tasks.data.segmentation import SegmentationSample

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    mask = tmp_path / "a.png"
    Image.fromarray(np.full((4, 4), 1, np.uint8)).save(mask)
    original = mask.read_bytes(), mask.stat().st_mtime_ns
    samples = [SegmentationSample("a", mask, mask)]

    def convert(path):
        return np.asarray(Image.open(path))

    first = converted_samples(samples, "test-masks", "v1", convert)[0].mask.parent
    Image.fromarray(np.full((4, 4), 2, np.uint8)).save(mask)
    os.utime(mask, ns=(original[1] + 10**9, original[1] + 10**9))
    second = converted_samples(samples, "test-masks", "v1", convert)[0].mask.parent
    kind = tmp_path / "cache" / "test-masks"
    assert [c.folder for c in older_copies(kind)] == [first]
    mask.write_bytes(original[0])
    os.utime(mask, ns=(original[1], original[1]))
    marker = first.with_name(first.name + ".source")
    os.utime(marker, ns=(0, 0))  # made long ago: the read must refresh it
    again = converted_samples(samples, "test-masks", "v1", convert)[0].mask.parent
    assert again == first and [c.folder for c in older_copies(kind)] == [second]


def test_a_cache_the_run_cannot_write_markers_in_is_read_as_before(tmp_path, monkeypatch) -> None:
    """The marker is advisory: where writing it fails (a shared, read-only cache), the copy is made or read all
    the same."""
    import tasks.cache
    from tasks.data.colour_masks import converted_samples
    from tasks.data.segmentation import SegmentationSample

    monkeypatch.setenv("MTB_CACHE", str(tmp_path / "cache"))
    mask = tmp_path / "a.png"
    Image.fromarray(np.full((4, 4), 1, np.uint8)).save(mask)

    def refused(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(tasks.cache, "write_text", refused)
    samples = [SegmentationSample("a", mask, mask)]
    for _ in range(2):  # made, then read
        converted = converted_samples(samples, "test-masks", "v1", lambda path: np.asarray(Image.open(path)))
        assert np.asarray(Image.open(converted[0].mask)).tolist() == [[1] * 4] * 4
    assert not list((tmp_path / "cache" / "test-masks").glob("*.source"))
