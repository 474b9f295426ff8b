"""Reading images as users' cameras and tools write them: EXIF orientation, 16-bit gray, decompression bombs."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.data.detection import DetectionData, DetectionDataset, DetectionSample
from tasks.data.images import READ_ERRORS, image_size, load_rgb
from tasks.data.segmentation import SegmentationSample, check_masks
from tasks.errors import UserError


def _stored(width: int = 40, height: int = 20) -> np.ndarray:
    """Red left half, blue right half, a green pixel in the top-left corner."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    pixels[0, 0] = (0, 255, 0)
    return pixels


def _with_orientation(path, pixels: np.ndarray, orientation: int) -> None:
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif)


@pytest.mark.parametrize(
    "orientation, shown",
    [
        (1, lambda a: a),
        (3, lambda a: np.rot90(a, 2)),  # upside down
        (6, lambda a: np.rot90(a, -1)),  # a phone held upright: shown turned a quarter clockwise
        (8, lambda a: np.rot90(a, 1)),
    ],
)
def test_exif_orientation_is_applied_and_sizes_are_as_shown(tmp_path, orientation, shown) -> None:
    path = tmp_path / f"o{orientation}.png"  # PNG keeps the pixels exact; PIL writes its eXIf chunk
    stored = _stored()
    _with_orientation(path, stored, orientation)
    pixels = load_rgb(path)
    np.testing.assert_array_equal(pixels, shown(stored))
    assert image_size(path) == (pixels.shape[1], pixels.shape[0])


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, the whole chunk) of each chunk of a PNG file, in order."""
    chunks, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        chunks.append((data[at + 4 : at + 8], data[at : at + 12 + length]))
        at += 12 + length
    return chunks


@pytest.mark.parametrize("where", ["before the pixels", "after the pixels", "as XMP text after the pixels", "none"])
def test_a_pngs_size_is_read_without_its_pixels_unless_its_orientation_may_follow_them(
    tmp_path, monkeypatch, where
) -> None:
    """A PNG's size as shown equals its decoded array's (load_rgb, Pillow's full read), wherever its orientation
    is stored; its pixels are decoded for the size only where a metadata chunk follows them (Pillow reads such a
    chunk only by decoding)."""
    from PIL import PngImagePlugin

    path, stored = tmp_path / "o.png", _stored()
    _with_orientation(path, stored, 6)
    chunks = _png_chunks(path.read_bytes())
    exif = next(chunk for kind, chunk in chunks if kind == b"eXIf")
    rest = [chunk for kind, chunk in chunks if kind != b"eXIf"]
    if where == "after the pixels":  # just before IEND, where some writers put it
        rest.insert(len(rest) - 1, exif)
    elif where == "as XMP text after the pixels":
        xmp = b'XML:com.adobe.xmp\x00\x00\x00\x00\x00<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
        body = b"iTXt" + xmp
        crc = zlib.crc32(body).to_bytes(4, "big")
        rest.insert(len(rest) - 1, len(xmp).to_bytes(4, "big") + body + crc)
    elif where == "before the pixels":
        rest.insert(1, exif)  # after IHDR: Pillow reads it when it opens the file
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(rest))
    pixels = load_rgb(path)
    turned = where != "none"
    assert pixels.shape[:2] == ((40, 20) if turned else (20, 40))
    decodes = []
    original = PngImagePlugin.PngImageFile.load
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", lambda self: decodes.append(1) or original(self))
    assert image_size(path) == (pixels.shape[1], pixels.shape[0])
    assert bool(decodes) == where.endswith("after the pixels")


def test_sixteen_bit_gray_is_rescaled_not_clipped(tmp_path) -> None:
    values = np.array([[0, 257 * 100, 65535, 128]], np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode.startswith("I")  # the file really is 16-bit
    pixels = load_rgb(tmp_path / "deep.png")
    assert pixels.shape == (1, 4, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[0, :, 0], [0, 100, 255, 0])  # 128/65535 of white is black in 8 bits
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_a_decompression_bomb_is_an_unreadable_image_everywhere(tmp_path, monkeypatch) -> None:
    Image.fromarray(_stored(64, 64)).save(tmp_path / "big.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "big_mask.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 is then more than twice the limit
    with pytest.raises(READ_ERRORS):
        load_rgb(tmp_path / "big.png")
    # the start-up mask check leaves it to the loader, which skips and counts it
    check_masks([SegmentationSample("big", tmp_path / "big.png", tmp_path / "big_mask.png")])


def test_detection_images_whose_size_disagrees_with_their_annotations_are_skipped_and_named(tmp_path, capsys) -> None:
    path = tmp_path / "turned.png"
    _with_orientation(path, _stored(40, 20), 6)  # shown 20 wide, 40 tall
    boxes = np.array([[1, 1, 10, 10]], np.float32)
    empty = np.zeros(1, bool)

    def sample(width: int, height: int) -> DetectionSample:
        return DetectionSample(1, path, width, height, boxes, np.array([1]), empty, empty)

    def transform(image, boxes, labels):
        return image, boxes, labels

    right = DetectionData([sample(20, 40)], ["thing"], [1], "t")
    wrong = DetectionData([sample(40, 20)], ["thing"], [1], "t")  # the stored size: what a tool ignoring EXIF says
    assert DetectionDataset(right, transform, train=True)[0] is not None
    assert DetectionDataset(wrong, transform, train=True)[0] is None
    err = capsys.readouterr().err
    assert str(path) in err and "reads as 20x40 but its annotations say 40x20" in err


def test_a_mask_is_checked_against_its_image_as_shown(tmp_path) -> None:
    _with_orientation(tmp_path / "photo.png", _stored(40, 20), 6)
    Image.fromarray(np.zeros((40, 20), np.uint8)).save(tmp_path / "upright.png")  # drawn on the upright photo
    Image.fromarray(np.zeros((20, 40), np.uint8)).save(tmp_path / "stored.png")
    check_masks([SegmentationSample("p", tmp_path / "photo.png", tmp_path / "upright.png")])
    with pytest.raises(UserError, match="is 40x20 but its image .* is 20x40"):
        check_masks([SegmentationSample("p", tmp_path / "photo.png", tmp_path / "stored.png")])


def test_the_recipe_samples_sizes_as_shown_and_passes_over_unreadable_files(tmp_path) -> None:
    from tasks.recipes import sample_sizes

    _with_orientation(tmp_path / "portrait.png", _stored(40, 20), 6)  # stored 40×20, shown 20×40
    (tmp_path / "broken.png").write_bytes(b"not an image")
    Image.fromarray(_stored(30, 10)).save(tmp_path / "plain.png")
    paths = [tmp_path / "portrait.png", tmp_path / "broken.png", tmp_path / "plain.png"]
    assert sample_sizes(paths) == ((20, 40), (30, 10))


def _folder(tmp_path, count: int = 4, side: int = 24) -> list:
    """``count`` random RGB PNGs in two class folders, and one file that is not an image."""
    from tasks.data.folders import Sample

    rng = np.random.default_rng(0)
    samples = []
    for index in range(count):
        path = tmp_path / f"c{index % 2}" / f"{index}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side, side + index, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(path, index % 2))
    (tmp_path / "c0" / "broken.png").write_bytes(b"not an image")
    return [*samples, Sample(tmp_path / "c0" / "broken.png", 0)]


def test_the_decoded_image_cache_reads_each_file_once_and_gives_the_same_items(tmp_path, monkeypatch, capsys) -> None:
    import tasks.data.images as images
    from tasks.data.folders import ClassificationDataset, collate_classification
    from tasks.data.transforms import classification_eval

    samples = _folder(tmp_path)
    plain = ClassificationDataset(samples, classification_eval(16))
    expected = [plain[index] for index in range(len(samples))]
    assert capsys.readouterr().err.count("skipping unreadable image") == 1
    reads: list[str] = []
    real = images.load_rgb
    monkeypatch.setattr(images, "load_rgb", lambda path: reads.append(str(path)) or real(path))
    cached = ClassificationDataset(samples, classification_eval(16))
    cached.decoded = images.DecodedCache(2**20)
    for _ in range(3):
        items = [cached[index] for index in range(len(samples))]
        assert items[-1] is None  # the broken file: skipped and counted every epoch, but named once a process
        assert "skipping unreadable image" not in capsys.readouterr().err
        assert collate_classification(items)["skipped"] == 1
        for got, want in zip(items[:-1], expected[:-1]):
            assert torch.equal(got["image"], want["image"]) and got["label"] == want["label"]
    assert sorted(reads[: len(samples)]) == sorted(str(s.path) for s in samples)
    assert reads[len(samples) :] == [str(samples[-1].path)] * 2  # after the first pass only the broken file is read
    assert cached.decoded.hits == 2 * (len(samples) - 1)
    kept = next(iter(cached.decoded.arrays.values()))
    with pytest.raises(ValueError):  # no transform can change a cached image
        kept[0, 0, 0] = 1


def test_the_decoded_image_cache_keeps_what_fits_its_budget_and_reads_the_rest_each_time(tmp_path, monkeypatch) -> None:
    import tasks.data.images as images

    samples = _folder(tmp_path, count=4, side=20)[:-1]
    sizes = [load_rgb(s.path).nbytes for s in samples]
    cache = images.DecodedCache(sizes[0] + sizes[1] + sizes[2] - 1)  # the first two fit, the third does not
    reads: list[str] = []
    real = images.load_rgb
    monkeypatch.setattr(images, "load_rgb", lambda path: reads.append(str(path)) or real(path))
    for _ in range(2):
        for sample in samples:
            assert np.array_equal(cache.load(sample.path), real(sample.path))
    assert cache.used == sizes[0] + sizes[1] <= cache.budget
    names = [str(s.path) for s in samples]
    assert reads == names + names[2:]  # the third no longer fits, the fourth (the largest) neither
    assert images.DecodedCache(0).load(samples[0].path).shape == (20, 20, 3)  # budget 0: reads, keeps nothing


def test_the_cache_budget_is_an_eighth_of_free_memory_at_most_4096_mb_divided_among_loading_processes(
    monkeypatch,
) -> None:
    import tasks.data.images as images

    monkeypatch.setattr(images, "available_memory", lambda: 16 * 2**30)
    assert images.plan_cache("auto", loaders=1) == (2 * 2**30, "an eighth of the 16.0 GiB available, at most 4096 MB")
    budget, why = images.plan_cache("auto", loaders=2, processes=2)
    assert budget == 2**29 and why.endswith("divided among 4 loading processes")
    monkeypatch.setattr(images, "available_memory", lambda: 64 * 2**30)
    assert images.plan_cache("auto", loaders=1)[0] == 4096 * 2**20  # capped
    assert images.plan_cache(300, loaders=3) == (100 * 2**20, "train.cache_mb 300, divided among 3 loading processes")
    assert images.plan_cache(0, loaders=1) == (0, "off (train.cache_mb 0)")
    monkeypatch.setattr(images, "available_memory", lambda: None)
    assert images.plan_cache("auto", loaders=1)[0] == 0


@pytest.mark.skipif(not Path("/proc/meminfo").is_file(), reason="reads Linux's /proc/meminfo")
def test_the_available_memory_is_read_from_the_kernel() -> None:
    from tasks.data.images import available_memory

    with open("/proc/meminfo") as info:
        total = int(info.readline().split()[1]) * 1024  # MemTotal, the first line
    assert 0 < available_memory() <= total


def test_the_training_batch_is_normalised_as_albumentations_normalises_each_image(tmp_path) -> None:
    """The classification training pipeline leaves uint8 and the collate normalises the batch at once; the batch
    equals the same seeded augmentations followed by albumentations' own Normalize on each image."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    from tasks.data.folders import ClassificationDataset, collate_classification
    from tasks.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Pipeline, classification_train

    samples = _folder(tmp_path, count=6)[:-1]
    ours = classification_train(16, scale_min=0.5, hflip=0.5, color_jitter=0.3, seed=7)
    steps = list(classification_train(16, scale_min=0.5, hflip=0.5, color_jitter=0.3).compose.transforms)
    reference = Pipeline([*steps, A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()], seed=7)
    items = [ClassificationDataset(samples, ours)[index] for index in range(len(samples))]
    assert all(item["image"].dtype == torch.uint8 for item in items)
    batch = collate_classification(items)["images"]
    want = torch.stack([ClassificationDataset(samples, reference)[index]["image"] for index in range(len(samples))])
    assert batch.dtype == torch.float32 and batch.shape == want.shape == (len(samples), 3, 16, 16)
    assert want.abs().max() > 1.5  # normalised, not in [0, 1]
    torch.testing.assert_close(batch, want, rtol=0, atol=1e-5)


def _segmentation_set(tmp_path, sides: list[tuple[int, int]]):
    """Random RGB PNGs with palette-free masks of classes 0..2 and some void; the last mask holds a value 7 that
    is no class."""
    from tasks.data.segmentation import SegmentationData, SegmentationSample

    rng = np.random.default_rng(0)
    samples = []
    for index, (height, width) in enumerate(sides):
        image, mask = tmp_path / f"{index}.png", tmp_path / f"{index}_mask.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(image)
        values = rng.choice(np.array([0, 1, 2, 255], dtype=np.uint8), size=(height, width))
        if index == len(sides) - 1:
            values[0, 0] = 7
        Image.fromarray(values).save(mask)
        samples.append(SegmentationSample(str(index), image, mask))
    return SegmentationData(samples, ["a", "b", "c"], str(tmp_path))


def test_the_segmentation_training_batch_is_normalised_as_albumentations_normalises_each_image(tmp_path) -> None:
    """The segmentation training pipeline leaves uint8 and the collate normalises the batch at once; images and
    masks equal the same seeded augmentations followed by albumentations' own Normalize on each image."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    from tasks.data.segmentation import SegmentationDataset, collate_segmentation
    from tasks.data.transforms import IMAGENET_MEAN, IMAGENET_STD, SegmentationPipeline, segmentation_train

    data = _segmentation_set(tmp_path, [(40, 48), (30, 36), (50, 40), (36, 36), (20, 20)])
    data.samples = data.samples[:-1]  # every mask valid
    ours = segmentation_train(32, scale=(0.5, 2.0), hflip=0.5, color_jitter=0.3, seed=3)
    steps = list(segmentation_train(32, scale=(0.5, 2.0), hflip=0.5, color_jitter=0.3).compose.transforms)
    reference = SegmentationPipeline([*steps, A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()], seed=3)
    items = [SegmentationDataset(data, ours)[index] for index in range(len(data.samples))]
    assert all(item["image"].dtype == torch.uint8 for item in items)
    batch = collate_segmentation(items)
    want = [SegmentationDataset(data, reference)[index] for index in range(len(data.samples))]
    images = torch.stack([item["image"] for item in want])
    assert batch["images"].dtype == torch.float32 and batch["images"].shape == images.shape == (4, 3, 32, 32)
    assert images.abs().max() > 1.5  # normalised, not in [0, 1]
    torch.testing.assert_close(batch["images"], images, rtol=0, atol=1e-5)
    masks = torch.stack([item["mask"] for item in want])
    assert batch["masks"].dtype == torch.int64 and torch.equal(batch["masks"], masks)
    assert (masks == 255).any()  # the scale's padding is void


def test_evaluation_batches_pad_normalised_images_with_zero_and_masks_with_void(tmp_path) -> None:
    from tasks.data.segmentation import SegmentationDataset, collate_segmentation
    from tasks.data.transforms import segmentation_eval

    data = _segmentation_set(tmp_path, [(40, 48), (30, 36), (20, 20)])
    items = [SegmentationDataset(data, segmentation_eval())[index] for index in range(2)]
    batch = collate_segmentation(items)
    assert batch["images"].shape == (2, 3, 64, 64) and batch["sizes"] == [(40, 48), (30, 36)]
    for index, (height, width) in enumerate(batch["sizes"]):
        assert torch.equal(batch["images"][index, :, :height, :width], items[index]["image"])
        assert torch.equal(batch["masks"][index, :height, :width], items[index]["mask"])
        assert not batch["images"][index, :, height:].any() and not batch["images"][index, :, :, width:].any()
        assert (batch["masks"][index, height:] == 255).all() and (batch["masks"][index, :, width:] == 255).all()


def test_the_decoded_cache_keeps_checked_masks_and_rereads_a_bad_one(tmp_path, monkeypatch, capsys) -> None:
    """Masks go through the decoded cache as checked uint8 arrays: each valid mask is read once, and items equal
    an uncached dataset's; a mask with a value that is no class is not kept, so it is read, named and skipped each
    time, as before."""
    import tasks.data.segmentation as segmentation
    from tasks.data.images import DecodedCache
    from tasks.data.transforms import segmentation_eval

    data = _segmentation_set(tmp_path, [(20, 24), (16, 16), (12, 20)])
    expected = [segmentation.SegmentationDataset(data, segmentation_eval())[index] for index in range(3)]
    assert expected[-1] is None
    capsys.readouterr()
    reads: list[str] = []
    real = segmentation.read_mask
    monkeypatch.setattr(segmentation, "read_mask", lambda path: reads.append(Path(path).name) or real(path))
    cached = segmentation.SegmentationDataset(data, segmentation_eval())
    cached.decoded = DecodedCache(2**20)
    for _ in range(3):
        items = [cached[index] for index in range(3)]
        assert items[-1] is None and "are neither a class" in capsys.readouterr().err
        for got, want in zip(items[:-1], expected[:-1]):
            assert torch.equal(got["image"], want["image"]) and torch.equal(got["mask"], want["mask"])
            got["mask"][0, 0] = 1  # each item's mask is its own: writing it leaves the kept one as it was
    assert reads == ["0_mask.png", "1_mask.png", "2_mask.png", "2_mask.png", "2_mask.png"]
    kept = cached.decoded.arrays[str(data.samples[0].mask)]
    assert kept.dtype == np.uint8 and not kept.flags.writeable
