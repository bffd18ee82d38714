"""Tests for vimtune.data: readers, image loading, transforms, mixup and loaders (no shared data)."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import Mixup
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from torchvision.transforms.functional import pil_to_tensor

from vimtune.data import (
    AugmentConfig,
    BadImageError,
    CIFARDataset,
    DatasetNotFoundError,
    SizeAdaptiveTransform,
    UnsafePickleError,
    build_dataset,
    build_eval_transform,
    build_loader,
    build_mixup,
    build_train_transform,
    load_rgb,
    safe_load_pickle,
    to_rgb,
)

# ---------------------------------------------------------------- helpers


def _save(path: Path, mode: str, value: int = 100, size: int = 8) -> Path:
    """Write a small image in the given PIL mode (RGB, L, P or RGBA)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        img = Image.new("RGB", (size, size), (value, 0, 255 - value)).convert("P")
    elif mode == "RGBA":
        img = Image.new("RGBA", (size, size), (value, value, 0, 128))
    elif mode == "L":
        img = Image.new("L", (size, size), value)
    else:
        img = Image.new("RGB", (size, size), (value, 10, 20))
    img.save(path)
    return path


def _corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return path


def _make_vtab(root: Path, with_classes: bool = True) -> Path:
    """Task folder: 4 train, 2 val, 3 test images, 3 classes, modes mixed (L, P, RGBA, RGB)."""
    modes = ["RGB", "L", "P", "RGBA", "RGB", "L"]
    train = [(f"images/trainval/{i:05d}.png", i % 3) for i in range(4)]
    val = [(f"images/trainval/{i:05d}.png", i % 3) for i in range(4, 6)]
    test = [(f"images/test/{i:05d}.png", lab) for i, lab in enumerate([2, 0, 1])]
    for i, (rel, _) in enumerate(train + val):
        _save(root / rel, modes[i], value=20 * i)
    for rel, _ in test:
        _save(root / rel, "L")

    def write(name: str, items: list[tuple[str, int]]) -> None:
        (root / name).write_text("".join(f"{p} {y}\n" for p, y in items))

    write("train800.txt", train)
    write("val200.txt", val)
    write("train800val200.txt", train + val)
    write("test.txt", test)
    if with_classes:
        (root / "classes.txt").write_text("ant\nbee\ncow\n")
    return root


def _cifar_batch(n: int, labels: list[int], key: str, offset: int = 0) -> dict[bytes, object]:
    """A CIFAR-style batch whose image i has constant planes R=i+offset, G=100, B=200."""
    data = np.zeros((n, 3, 32 * 32), dtype=np.uint8)
    data[:, 0, :] = (np.arange(n) + offset)[:, None]
    data[:, 1, :] = 100
    data[:, 2, :] = 200
    return {
        b"batch_label": b"training batch",
        key.encode(): labels,
        b"data": data.reshape(n, 3072),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def _dump(obj: object, path: Path, protocol: int) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


# ---------------------------------------------------------------- ImageFolder


def test_imagefolder_reads_classes_labels_and_converts_to_rgb(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    _save(root / "train" / "cat" / "a.png", "RGB")
    _save(root / "train" / "cat" / "b.png", "L")
    _save(root / "train" / "dog" / "c.png", "P")
    _save(root / "train" / "dog" / "sub" / "d.png", "RGBA")
    (root / "train" / "dog" / "notes.txt").write_text("not an image")

    ds = build_dataset("imagefolder", str(root), "train")
    assert ds.classes == ["cat", "dog"]
    assert ds.num_classes == 2
    assert len(ds) == 4
    assert [y for _, y in ds.samples] == [0, 0, 1, 1]
    assert [Path(p).name for p, _ in ds.samples] == ["a.png", "b.png", "c.png", "d.png"]
    for i in range(len(ds)):
        img, label = ds[i]
        assert img.mode == "RGB" and img.size == (8, 8)
        assert label == ds.samples[i][1]

    ds_t = build_dataset("imagefolder", str(root / "train"), "", transform=pil_to_tensor)
    x, _ = ds_t[1]
    assert x.shape == (3, 8, 8)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grayscale replicated to 3 channels


def test_imagefolder_missing_split_folder_names_path(tmp_path: Path) -> None:
    _save(tmp_path / "train" / "a" / "x.png", "RGB")
    with pytest.raises(DatasetNotFoundError) as info:
        build_dataset("imagefolder", str(tmp_path), "val")
    assert str(tmp_path / "val") in str(info.value)
    assert "'val'" in str(info.value)


# ---------------------------------------------------------------- VTAB


def test_vtab_splits_lengths_labels_classes(tmp_path: Path) -> None:
    root = _make_vtab(tmp_path / "task")
    sizes = {"train": 4, "val": 2, "trainval": 6, "test": 3}
    for split, n in sizes.items():
        ds = build_dataset("vtab", str(root), split)
        assert len(ds) == n, split
        assert ds.classes == ["ant", "bee", "cow"]
        assert ds.num_classes == 3
    test = build_dataset("vtab", str(root), "test")
    assert [y for _, y in test.samples] == [2, 0, 1]
    assert test.samples[0][0] == os.path.join(str(root), "images/test/00000.png")

    tf = build_eval_transform(AugmentConfig(recipe="none", img_size=16))
    trainval = build_dataset("vtab", str(root), "trainval", transform=tf)
    for i in range(len(trainval)):
        x, y = trainval[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert y == i % 3
    raw = build_dataset("vtab", str(root), "trainval")
    assert {raw[i][0].mode for i in range(len(raw))} == {"RGB"}  # L, P and RGBA all became RGB


def test_vtab_without_classes_file_counts_labels_over_all_lists(tmp_path: Path) -> None:
    root = _make_vtab(tmp_path / "task", with_classes=False)
    ds = build_dataset("vtab", str(root), "val")  # val holds labels 1, 2 only; train has 0..2
    assert ds.num_classes == 3
    assert ds.classes == ["0", "1", "2"]


def test_vtab_missing_split_file_names_expected_path(tmp_path: Path) -> None:
    root = _make_vtab(tmp_path / "task")
    (root / "val200.txt").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        build_dataset("vtab", str(root), "val")
    msg = str(info.value)
    assert str(root / "val200.txt") in msg
    assert "'val'" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_vtab_unknown_split_and_bad_label(tmp_path: Path) -> None:
    root = _make_vtab(tmp_path / "task")
    with pytest.raises(ValueError, match="unknown VTAB split 'dev'"):
        build_dataset("vtab", str(root), "dev")
    (root / "test.txt").write_text("images/test/00000.png 7\n")
    with pytest.raises(ValueError, match="label 7"):
        build_dataset("vtab", str(root), "test")


# ---------------------------------------------------------------- FGVC


@pytest.mark.parametrize("under_images", [True, False])
def test_fgvc_json_splits(tmp_path: Path, under_images: bool) -> None:
    root = tmp_path / "cub"
    base = root / "images" if under_images else root
    train = {"001.Albatross/a.jpg": 1, "002.Gull/b.jpg": 2, "005.Crow/c.jpg": 5}
    val = {"002.Gull/d.jpg": 2}
    test = {"005.Crow/e.jpg": 5, "001.Albatross/f.jpg": 1}
    for i, rel in enumerate([*train, *val, *test]):
        _save(base / rel, "L" if i == 0 else "RGB", value=30 * i)
    for name, d in (("train", train), ("val", val), ("test", test)):
        (root / f"{name}.json").write_text(json.dumps(d))

    ds = build_dataset("fgvc", str(root), "train", transform=pil_to_tensor)
    assert ds.image_dir == str(base)
    assert ds.class_ids == [1, 2, 5]
    assert ds.num_classes == 3
    assert [y for _, y in ds.samples] == [0, 1, 2]
    x, y = ds[0]
    assert x.shape == (3, 8, 8) and y == 0

    assert [y for _, y in build_dataset("fgvc", str(root), "val").samples] == [1]
    assert [y for _, y in build_dataset("fgvc", str(root), "test").samples] == [2, 0]
    assert len(build_dataset("fgvc", str(root), "trainval")) == 4

    (root / "val.json").unlink()
    with pytest.raises(DatasetNotFoundError, match="val.json"):
        build_dataset("fgvc", str(root), "val")


# ---------------------------------------------------------------- CIFAR


def test_cifar10_pickle_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for b in range(1, 6):
        # protocol 2 is how Python 3 would write a CIFAR-era pickle (bytes via _codecs.encode)
        _dump(_cifar_batch(2, [b % 10, (b + 1) % 10], "labels", offset=10 * b), folder / f"data_batch_{b}", 2)
    _dump(_cifar_batch(3, [9, 8, 7], "labels"), folder / "test_batch", pickle.HIGHEST_PROTOCOL)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer",
             b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump({b"label_names": names, b"num_cases_per_batch": 2, b"num_vis": 3072}, folder / "batches.meta", 2)

    train = build_dataset("cifar10", str(tmp_path), "train")
    assert isinstance(train, CIFARDataset)
    assert len(train) == 10
    assert train.targets[:4] == [1, 2, 2, 3]
    assert train.classes[0] == "airplane" and train.num_classes == 10
    img, label = train[2]  # batch 2, image 0: R = 20
    assert img.mode == "RGB" and img.size == (32, 32)
    assert img.getpixel((5, 7)) == (20, 100, 200)
    assert label == 2

    test = build_dataset("cifar10", str(folder), "test", transform=pil_to_tensor)  # batch folder itself
    x, y = test[1]
    assert len(test) == 3 and y == 8
    assert x.shape == (3, 32, 32) and x[0, 0, 0] == 1 and x[2, 31, 31] == 200

    with pytest.raises(ValueError, match="split 'val'"):
        build_dataset("cifar10", str(tmp_path), "val")


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    batch = _cifar_batch(4, [0, 99, 42, 7], "fine_labels")
    batch[b"coarse_labels"] = [0, 19, 5, 1]
    _dump(batch, folder / "train", 2)
    fine = [f"class{i}".encode() for i in range(100)]
    _dump({b"fine_label_names": fine, b"coarse_label_names": [b"c"] * 20}, folder / "meta", 2)

    ds = build_dataset("cifar100", str(tmp_path), "train")
    assert ds.num_classes == 100
    assert ds.targets == [0, 99, 42, 7]
    assert ds.classes[99] == "class99"
    with pytest.raises(DatasetNotFoundError) as info:
        build_dataset("cifar100", str(tmp_path), "test")
    assert str(folder / "test") in str(info.value)


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    _dump({b"data": _Evil()}, path, 2)
    with pytest.raises(UnsafePickleError, match="getcwd"):
        safe_load_pickle(path)
    ok = tmp_path / "ok.pkl"
    _dump({b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"labels": [1, 2]}, ok, 4)
    loaded = safe_load_pickle(ok)
    assert loaded[b"labels"] == [1, 2] and loaded[b"data"].shape == (2, 3)


# ---------------------------------------------------------------- bad images


def test_corrupt_image_error_names_file(tmp_path: Path) -> None:
    root = _make_vtab(tmp_path / "task")
    bad = _corrupt(root / "images" / "test" / "00001.png")
    ds = build_dataset("vtab", str(root), "test")  # default: no pre-scan, construction succeeds
    assert len(ds) == 3 and ds.skipped == []
    ds[0]
    with pytest.raises(BadImageError) as info:
        ds[1]
    msg = str(info.value)
    assert f"cannot read image '{bad}' (label 0)" in msg
    assert info.value.path == str(bad)
    assert pickle.loads(pickle.dumps(info.value)).path == str(bad)
    # from a DataLoader worker process the re-raised error still names the file
    tensors = build_dataset("vtab", str(root), "test", transform=pil_to_tensor)
    batches = iter(build_loader(tensors, 1, train=False, num_workers=1, distributed=False, seed=0))
    try:
        with pytest.raises(BadImageError, match="00001.png"):
            list(batches)
    finally:
        batches._shutdown_workers()  # now, not whenever the garbage collector meets the iterator (~5 s later)


def test_missing_image_file_is_bad_image(tmp_path: Path) -> None:
    with pytest.raises(BadImageError, match="nope.png"):
        load_rgb(tmp_path / "nope.png")


def test_skip_bad_images_skips_and_counts(tmp_path: Path) -> None:
    root = _make_vtab(tmp_path / "task")
    bad = _corrupt(root / "images" / "trainval" / "00002.png")
    truncated = root / "images" / "trainval" / "00004.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = build_dataset("vtab", str(root), "trainval", skip_bad_images=True)
    messages = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(messages) == 1
    assert "skipped 2 unreadable images, first: " in messages[0] and str(bad) in messages[0]
    assert ds.skipped == [str(bad), str(truncated)]
    assert len(ds) == 4
    assert [y for _, y in ds.samples] == [0, 1, 0, 2]
    for i in range(len(ds)):
        assert ds[i][0].mode == "RGB"


def test_build_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset kind 'imagenet'"):
        build_dataset("imagenet", str(tmp_path), "train")
    with pytest.raises(DatasetNotFoundError, match="does-not-exist"):
        build_dataset("vtab", str(tmp_path / "does-not-exist"), "train")


def test_to_rgb_sixteen_bit_is_rescaled() -> None:
    img = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert img.mode.startswith("I")
    assert to_rgb(img).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("LA", (2, 2), (77, 0))).getpixel((1, 1)) == (77, 77, 77)


# ---------------------------------------------------------------- transforms


@pytest.mark.parametrize("recipe", ["deit", "svp", "none"])
@pytest.mark.parametrize("src_size", [(8, 8), (60, 40)])
def test_transforms_output_size(recipe: str, src_size: tuple[int, int]) -> None:
    cfg = AugmentConfig(recipe=recipe, img_size=32)
    img = Image.new("RGB", src_size, (120, 60, 30))
    for tf in (build_train_transform(cfg), build_eval_transform(cfg)):
        x = tf(img)
        assert isinstance(x, torch.Tensor)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32


def test_recipes_resolve_to_spec() -> None:
    deit = AugmentConfig(recipe="deit").resolved()
    assert (deit.auto_augment, deit.reprob, deit.mixup, deit.cutmix, deit.smoothing) == (
        "rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0, 0.1,
    )
    assert deit.interpolation == "bicubic"
    svp = AugmentConfig(recipe="svp").resolved()
    assert (svp.auto_augment, svp.reprob, svp.mixup, svp.cutmix, svp.smoothing) == (
        "rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0, 0.1,
    )
    none = AugmentConfig(recipe="none").resolved()
    assert (none.reprob, none.mixup, none.cutmix, none.hflip) == (0.0, 0.0, 0.0, 0.0)
    assert AugmentConfig(recipe="deit", reprob=0.0).resolved().reprob == 0.0  # explicit wins
    with pytest.raises(ValueError, match="unknown augmentation recipe"):
        AugmentConfig(recipe="fancy").resolved()


def test_deit_train_transform_contains_randaugment_and_erasing() -> None:
    cfg = AugmentConfig(recipe="deit", img_size=32, scale=(0.5, 1.0))
    tf = build_train_transform(cfg)
    kinds = {type(t) for t in tf.transforms}
    assert RandAugment in kinds and RandomErasing in kinds
    rrc = tf.transforms[0]
    assert tuple(rrc.scale) == (0.5, 1.0)
    erasing = next(t for t in tf.transforms if isinstance(t, RandomErasing))
    assert erasing.probability == 0.25
    no_aa = build_train_transform(AugmentConfig(recipe="deit", img_size=32, auto_augment="none", reprob=0.0))
    assert not {RandAugment, RandomErasing} & {type(t) for t in no_aa.transforms}


def test_none_recipe_is_deterministic_plain_resize() -> None:
    cfg = AugmentConfig(recipe="none", img_size=24)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    train, evl = build_train_transform(cfg), build_eval_transform(cfg)
    a, b, c = train(img), train(img), evl(img)
    assert torch.equal(a, b) and torch.equal(a, c)
    # the whole image is kept: exactly a plain 24x24 bicubic resize normalised with ImageNet stats
    ref = pil_to_tensor(img.resize((24, 24), Image.BICUBIC)).float() / 255
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    assert torch.equal(a, (ref - mean) / std)


def test_eval_transform_crops_large_images_and_resizes_small_ones() -> None:
    cfg = AugmentConfig(recipe="deit", img_size=16)
    tf = build_eval_transform(cfg)
    assert isinstance(tf, SizeAdaptiveTransform)
    # large image: white frame around black centre -> the 0.875 center crop removes most frame
    big = Image.new("RGB", (128, 128), (255, 255, 255))
    big.paste((0, 0, 0), (8, 8, 120, 120))
    crop = build_eval_transform(AugmentConfig(recipe="deit", img_size=16, eval_resize="crop"))(big)
    plain = build_eval_transform(AugmentConfig(recipe="deit", img_size=16, eval_resize="resize"))(big)
    assert torch.equal(tf(big), crop)
    assert crop[:, 0, 0].max() < plain[:, 0, 0].min()  # the corner pixel is dark after cropping
    small = Image.new("RGB", (32, 32), (10, 200, 30))
    small.paste((255, 0, 0), (0, 0, 2, 2))
    ref_small = build_eval_transform(AugmentConfig(recipe="deit", img_size=16, eval_resize="resize"))(small)
    assert torch.equal(tf(small), ref_small)
    custom = AugmentConfig(recipe="deit", img_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x = build_eval_transform(custom)(Image.new("RGB", (32, 32), (255, 0, 255)))
    assert torch.allclose(x[:, 8, 8], torch.tensor([1.0, 0.0, 1.0]))


# ---------------------------------------------------------------- mixup


def test_build_mixup_probabilities() -> None:
    mix = build_mixup(AugmentConfig(recipe="deit"), num_classes=7)
    assert isinstance(mix, Mixup)
    assert (mix.mixup_alpha, mix.cutmix_alpha, mix.mix_prob, mix.switch_prob) == (0.8, 1.0, 1.0, 0.5)
    assert mix.label_smoothing == 0.1 and mix.num_classes == 7 and mix.mode == "batch"
    x = torch.randn(4, 3, 8, 8)
    _, target = mix(x, torch.tensor([0, 1, 2, 6]))
    assert target.shape == (4, 7)
    assert torch.allclose(target.sum(dim=1), torch.ones(4))
    assert float(target.min()) >= 0.1 / 7 - 1e-6  # smoothing mass on every class

    svp = build_mixup(AugmentConfig(recipe="svp", mixup_prob=0.5), num_classes=3)
    assert svp is not None and svp.mix_prob == 0.5 and svp.mixup_alpha == 0.8
    assert build_mixup(AugmentConfig(recipe="none"), num_classes=3) is None
    assert build_mixup(AugmentConfig(recipe="deit", mixup=0.0, cutmix=0.0), num_classes=3) is None
    only_cutmix = build_mixup(AugmentConfig(recipe="deit", mixup=0.0), num_classes=3)
    assert only_cutmix is not None and only_cutmix.mixup_alpha == 0.0 and only_cutmix.cutmix_alpha == 1.0


# ---------------------------------------------------------------- loaders


class _Range(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([float(i)]), i


def _order(loader: torch.utils.data.DataLoader) -> list[int]:
    return [int(y) for _, ys in loader for y in ys]


def test_build_loader_seeded_shuffle_and_drop_last() -> None:
    ds = _Range(10)
    a = _order(build_loader(ds, 4, train=True, num_workers=0, distributed=False, seed=1))
    b = _order(build_loader(ds, 4, train=True, num_workers=0, distributed=False, seed=1))
    c = _order(build_loader(ds, 4, train=True, num_workers=0, distributed=False, seed=2))
    assert a == b and a != c
    assert len(a) == 8 and len(set(a)) == 8  # last incomplete batch dropped
    ev = build_loader(ds, 4, train=False, num_workers=0, distributed=False, seed=1)
    assert _order(ev) == list(range(10))
    # distributed=True without an initialised process group falls back to the plain sampler
    fallback = build_loader(ds, 4, train=True, num_workers=0, distributed=True, seed=1)
    assert not isinstance(fallback.sampler, torch.utils.data.DistributedSampler)


def test_build_loader_distributed_sampler(tmp_path: Path) -> None:
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ds = _Range(10)
        tr = build_loader(ds, 4, train=True, num_workers=0, distributed=True, seed=3)
        assert isinstance(tr.sampler, torch.utils.data.DistributedSampler)
        assert tr.sampler.shuffle and tr.drop_last
        order = _order(tr)
        assert len(order) == 8 and order != sorted(order)
        ev = build_loader(ds, 4, train=False, num_workers=0, distributed=True, seed=3)
        assert isinstance(ev.sampler, torch.utils.data.DistributedSampler)
        assert _order(ev) == list(range(10))
    finally:
        dist.destroy_process_group()
