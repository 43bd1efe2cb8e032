"""The device-resident CIFAR loader: its order is DistributedSampler's, its crops and flips are
valid and CifarTrain's distribution, and a run through it equals the DataLoader path."""
import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from data import build_data
from data.arrays import ArrayDataset
from data.device_loader import DeviceLoader, EpochSampler, draw_augmentation, resized_crops
from data.transforms import CIFAR_MEAN, CIFAR_STD, CLIP_STD, CifarTest, CifarTrain, ClipTest, ClipTrain
from engine.config import load_config, section
from engine.distributed import DistInfo
from engine.loaders import eval_loader, loader_kind, train_loader
from engine.trainer import fit


@pytest.mark.parametrize("n, world, drop_last", [(23, 1, False), (23, 3, False), (23, 3, True), (2, 5, False),
                                                 (24, 4, True)])
def test_order_is_distributed_samplers(n, world, drop_last):
    for epoch in (0, 3):
        shards = []
        for rank in range(world):
            ours = EpochSampler(n, rank, world, seed=7, drop_last=drop_last)
            ours.set_epoch(epoch)
            ref = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=7, drop_last=drop_last)
            ref.set_epoch(epoch)
            assert ours.indices() == list(ref) and len(ours) == len(ref)
            shards.append(ours.indices())
        if drop_last or n % world == 0:   # no padding: the ranks partition the (kept) set
            flat = sorted(i for s in shards for i in s)
            assert len(flat) == len(set(flat))


def test_order_depends_on_seed_and_epoch_only():
    a, b, c = EpochSampler(50, seed=1), EpochSampler(50, seed=1), EpochSampler(50, seed=2)
    assert a.indices() == b.indices() != c.indices()
    first = a.indices()
    a.set_epoch(1)
    assert a.indices() != first and sorted(a.indices()) == list(range(50))


def test_unshuffled_shards_partition_the_set():
    shards = [EpochSampler(10, r, 3, shuffle=False).indices() for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def _unnormalize(x: torch.Tensor) -> np.ndarray:
    mean, std = torch.tensor(CIFAR_MEAN).view(3, 1, 1), torch.tensor(CIFAR_STD).view(3, 1, 1)
    return torch.round((x * std + mean) * 255).to(torch.int64).numpy()


def test_each_output_is_a_crop_of_the_padded_input_and_flips_are_fair():
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (600, 8, 8, 3)).astype(np.uint8)
    loader = DeviceLoader(images, np.arange(600), CifarTrain(), batch_size=128, device=torch.device("cpu"), seed=3)
    flips, offsets = [], []
    for x, idx in loader:
        for out, i in zip(_unnormalize(x), idx.tolist()):
            padded = np.pad(images[i].transpose(2, 0, 1), ((0, 0), (4, 4), (4, 4))).astype(np.int64)
            # brute force over every window of the padded image and both orientations
            hits = [(t, l, f) for t in range(9) for l in range(9) for f in (0, 1)
                    if np.array_equal(out, padded[:, t:t + 8, l:l + 8][:, :, ::-1] if f else padded[:, t:t + 8, l:l + 8])]
            assert hits, f"sample {i} is not a crop of its padded image"
            flips.append(hits[0][2])
            offsets.append(hits[0][:2])
    assert len(flips) == 600
    assert abs(np.mean(flips) - 0.5) < 0.06                 # 600 fair coins: sd 0.02
    tops = np.bincount([t for t, _ in offsets], minlength=9) / 600.0
    assert tops.min() > 0.05 and tops.max() < 0.18          # uniform over 0..8: 1/9 each


def test_augmentation_depends_on_seed_epoch_and_index_only():
    a = draw_augmentation(100, 4, seed=1, epoch=2)
    assert all(torch.equal(x, y) for x, y in zip(a, draw_augmentation(100, 4, seed=1, epoch=2)))
    assert not torch.equal(a[0], draw_augmentation(100, 4, seed=1, epoch=3)[0])
    assert not torch.equal(a[0], draw_augmentation(100, 4, seed=2, epoch=2)[0])
    assert int(a[0].min()) == 0 and int(a[0].max()) == 8


def test_without_augmentation_the_batches_are_the_dataloaders():
    common = dict(name="synthetic", num_classes=4, image_size=8, max_per_class=24, imb_factor=4, test_per_class=5,
                  num_workers=0, augment=False)
    cfg, device_cfg = section("data", **common, loader="workers"), section("data", **common, loader="device")
    splits = build_data(cfg, seed=0)
    info = DistInfo(rank=1, world_size=2)
    for make in (lambda c: train_loader(splits.train, 10, info, 4, c, drop_last=False),
                 lambda c: eval_loader(splits.test, 6, info, c)):
        ref, dev = make(cfg), make(device_cfg)
        assert isinstance(dev, DeviceLoader) and len(dev) == len(ref)
        for sampler in (ref.sampler, dev.sampler):
            if hasattr(sampler, "set_epoch"):     # the evaluation ShardSampler has no epochs
                sampler.set_epoch(2)
        pairs = list(zip(ref, dev))
        assert len(pairs) == len(ref)
        for (x0, y0), (x1, y1) in pairs:
            assert torch.equal(y0, y1) and torch.equal(x0, x1)


def test_auto_is_device_on_cuda_only():
    cfg = section("data", name="synthetic")
    assert loader_kind(cfg, torch.device("cpu")) == "workers"
    assert loader_kind(cfg, torch.device("cuda")) == "device"
    assert loader_kind(section("data", name="imagenet_lt"), torch.device("cuda")) == "workers"


def test_training_through_either_loader_is_the_same(tiny_config, tmp_path):
    def run(kind):
        cfg = load_config(tiny_config({"data": {"augment": False, "loader": kind}, "train": {"epochs": 2}}))
        final = fit(cfg, str(tmp_path / kind))
        return final, torch.load(tmp_path / kind / "last.pt", weights_only=True)["model"]
    (f0, w0), (f1, w1) = run("workers"), run("device")
    assert f0["top1"] == f1["top1"] and f0["ece"] == f1["ece"]
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


# ------------------------------------------------------------------------- CLIP preprocessing
def _clip_images(n=24, side=32):
    return np.random.RandomState(0).randint(0, 256, (n, side, side, 3)).astype(np.uint8)


@pytest.mark.parametrize("transform", [ClipTrain(), ClipTest()], ids=["train", "test"])
def test_clip_batches_are_the_worker_paths_to_one_grey_level(transform):
    """Same crop boxes and flips as ArrayDataset draws for each (seed, epoch, index); the resize
    is torchvision's there and ours here: both round to uint8 before normalising, so they agree
    to one grey level (their fixed-point and float weights round differently)."""
    images = _clip_images()
    ds = ArrayDataset(images, np.arange(len(images)), transform, seed=5)
    ds.set_epoch(2)
    loader = DeviceLoader(images, np.arange(len(images)), transform, 10, torch.device("cpu"), seed=5)
    loader.sampler.set_epoch(2)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    seen = []
    for x, idx in loader:
        assert x.shape == (len(idx), 3, 224, 224) and x.dtype == torch.float32
        ref = torch.stack([ds[int(i)][0] for i in idx])
        levels = ((x - ref) * std * 255).round().abs()
        assert float(levels.max()) <= 1 and float((levels > 0).float().mean()) < 0.3
        seen += idx.tolist()
    assert sorted(seen) == list(range(len(images)))


def test_clip_resize_is_bilinear_with_half_pixel_centres():
    """Before rounding, each output is torch's bilinear interpolate (align_corners=False) of the
    crop, mirrored where flipped: an independent implementation of the same resize."""
    images = torch.from_numpy(_clip_images(4)).permute(0, 3, 1, 2).contiguous()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        top, left = torch.randint(0, 16, (2,), generator=g)
        h, w = int(torch.randint(3, 32 - int(top), (1,), generator=g)), int(torch.randint(3, 32 - int(left), (1,), generator=g))
        flip = bool(torch.rand(1, generator=g) < 0.5)
        crop = images[1:2, :, top:top + h, left:left + w].float()
        ref = torch.nn.functional.interpolate(crop, size=(224, 224), mode="bilinear", align_corners=False)[0]
        ref = ref.flip(-1) if flip else ref
        got = resized_crops(images, torch.tensor([1]), top[None], left[None], torch.tensor([h]), torch.tensor([w]),
                            torch.tensor([flip]), 224)[0].float()
        assert float((got - ref.round()).abs().max()) <= 1      # ours rounds its own float blend


def test_clip_device_loader_refuses_non_square_images():
    with pytest.raises(ValueError, match="square"):
        DeviceLoader(np.zeros((2, 8, 10, 3), np.uint8), np.arange(2), ClipTest(), 2, torch.device("cpu"))
    with pytest.raises(ValueError, match="not Nothing"):
        DeviceLoader(np.zeros((2, 8, 8, 3), np.uint8), np.arange(2), type("Nothing", (), {})(), 2, torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("transform", [CifarTrain(), CifarTest(), ClipTrain(), ClipTest()],
                         ids=["cifar-train", "cifar-test", "clip-train", "clip-test"])
def test_device_loader_on_cuda_equals_the_cpu(transform):
    """The same batches on the GPU as on the CPU: CIFAR's crop, flip and normalisation bit for bit
    (index arithmetic, correctly rounded division); CLIP's resize to one grey level (the GPU may
    fuse the blend's multiply-adds)."""
    images = _clip_images(40)
    make = lambda device: DeviceLoader(images, np.arange(40), transform, 16, torch.device(device), seed=3)
    cpu, gpu = make("cpu"), make("cuda")
    for loader in (cpu, gpu):
        loader.sampler.set_epoch(1)
    for (x0, y0), (x1, y1) in zip(cpu, gpu):
        assert torch.equal(y0, y1.cpu())
        if isinstance(transform, (CifarTrain, CifarTest)):
            assert torch.equal(x0, x1.cpu())
        else:
            assert float(((x0 - x1.cpu()) * torch.tensor(CLIP_STD).view(3, 1, 1) * 255).abs().max()) <= 1.01
