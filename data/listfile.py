"""Image datasets read from split lists (ImageNet-LT, iNaturalist 2018): `<relative path> <label>`
lines joined to `data.root`.

decode:
  pil          PIL decode + augmentation in the loader workers (the official pipeline);
  torchvision  torchvision.io decode (libjpeg-turbo) + the same augmentation on tensors in workers;
  device       workers only read the file bytes and draw the random parameters; decoding
               (torchvision.io.decode_jpeg, on the GPU when training there) and augmentation
               run on the training device, batch by batch (JPEG files only).

Workers hand the file bytes over as numpy arrays: the tensor that torchvision.io.read_file
returns cannot be sent from a worker to the main process (its storage has no shareable file
descriptor: the batch was dropped and the run waited forever). Every unreadable image, a PNG
or a truncated file named .JPEG included, stops the run with one line naming the file.
"""
import io
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from data.arrays import SharedEpoch
from data.augment import apply_eval, apply_train, draw_train_params, to_normalized
from data.split_lists import read_list
from core.errors import UserError, brief

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INAT_MEAN, INAT_STD = (0.466, 0.471, 0.380), (0.195, 0.194, 0.192)   # the official iNaturalist loader's


def project_path(path: str) -> str:
    """Split lists and class-name files are project files: relative paths start at the repository."""
    return path if os.path.isabs(path) else os.path.join(PROJECT_ROOT, path)


@dataclass(frozen=True)
class Encoded:
    """A sample for the device stage: the file's bytes and the augmentation to apply."""
    data: np.ndarray            # uint8 (n_bytes,): numpy, which crosses from a worker as plain bytes
    params: object              # TrainParams, or None for the test transform
    index: int = -1             # the sample's index, to name its file if it cannot be decoded


JPEG_MAGIC = b"\xff\xd8\xff"


def decoder_reason(error: Exception) -> str:
    """A decoder's reason without torchvision's C++ source location ('decode_jpeg, .../x.cpp:171, ...')."""
    if isinstance(error, UnidentifiedImageError):  # its text holds a BytesIO repr, not the reason
        return "not an image file that PIL can read"
    line = brief(error, 1000)
    if ".cpp:" in line:
        line = line.rsplit(".cpp:", 1)[1].partition(", ")[2] or line
    return brief(line, 120)


class ListDataset(Dataset, SharedEpoch):
    def __init__(self, root: str, list_path: str, num_classes: int, train: bool, image_size: int,
                 mean: Sequence[float], std: Sequence[float], jitter: float, decode: str, seed: int,
                 eval_resize: Optional[int] = None, entries: Optional[Tuple[List[str], List[int]]] = None):
        """`eval_resize`: the test transform's shorter side (default: image_size * 256/224).
        `entries`: (paths, labels) found otherwise (class folders, data/ood.py); `list_path` then
        only names their source in messages."""
        SharedEpoch.__init__(self)
        if decode != "pil" and not hasattr(torchvision.io, "decode_jpeg"):
            raise UserError(f"data.decode={decode} needs torchvision.io's JPEG decoder, which torchvision "
                            f"{torchvision.__version__} no longer has; use data.decode=pil")
        self.root, self.list_path = root, list_path
        self.paths, self.labels = entries if entries is not None else read_list(list_path, num_classes)
        self.num_classes, self.train, self.size = num_classes, train, image_size
        self.mean, self.std, self.jitter, self.decode, self.seed = mean, std, jitter, decode, seed
        self.eval_resize = eval_resize

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> List[int]:
        return self.labels

    def _where(self, i: int) -> str:
        if not os.path.isfile(self.list_path):
            return f"{self.paths[i]} (from {self.list_path}, root {self.root})"
        return f"{self.paths[i]} (line {_line_number(self.list_path, i)} of {self.list_path}, data.root={self.root})"

    def __getitem__(self, i: int):
        full = os.path.join(self.root, self.paths[i])
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        label = torch.tensor(self.labels[i])
        try:
            if self.decode == "device":
                return self._encoded(i, full, rng), label
            img = self._decode(full)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot read image {self._where(i)}: {decoder_reason(e)}") from None
        if self.train:
            width, height = img.size if isinstance(img, Image.Image) else (img.shape[-1], img.shape[-2])
            img = apply_train(img, draw_train_params(rng, width, height, self.jitter), self.size)
        else:
            img = apply_eval(img, self.size, self.eval_resize)
        return to_normalized(img, self.mean, self.std), label

    def _encoded(self, i: int, full: str, rng) -> Encoded:
        data = np.fromfile(full, dtype=np.uint8)
        if data[:3].tobytes() != JPEG_MAGIC:
            raise UserError(f"cannot read image {self._where(i)}: it is {_image_kind(data)}, not a JPEG; "
                            "data.decode=device decodes JPEG only (use data.decode=pil or torchvision)")
        width, height = Image.open(io.BytesIO(data.tobytes())).size     # header only
        params = draw_train_params(rng, width, height, self.jitter) if self.train else None
        return Encoded(data, params, int(i))

    def _decode(self, full: str):
        if self.decode == "pil":
            with open(full, "rb") as f:
                return Image.open(io.BytesIO(f.read())).convert("RGB")
        return torchvision.io.decode_image(torchvision.io.read_file(full), mode=torchvision.io.ImageReadMode.RGB)

    # ------------------------------------------------------------ decode="device"
    @property
    def collate(self):
        """Batches of encoded samples stay lists (their sizes differ); others use the default."""
        return collate_encoded if self.decode == "device" else None

    @property
    def device_stage(self):
        return self._device_stage if self.decode == "device" else None

    def _device_stage(self, batch, device: torch.device):
        """Decode a batch on `device` and apply each sample's augmentation there."""
        encoded, labels = batch
        images = decode_batch(encoded, device, self._where)
        out = [apply_train(img, e.params, self.size) if e.params is not None else apply_eval(img, self.size, self.eval_resize)
               for img, e in zip(images, encoded)]
        return torch.stack([to_normalized(x, self.mean, self.std) for x in out]), labels

    def check_files(self) -> None:
        """Fail before training if any listed image is missing or unreadable (existence and
        permissions only: a corrupt file is reported at the batch that reads it). The progress
        bar shows on a terminal only."""
        from tqdm import tqdm
        for i in tqdm(range(len(self.paths)), desc=f"checking {os.path.basename(self.list_path)}", leave=False,
                      disable=None):
            full = os.path.join(self.root, self.paths[i])
            if not os.path.isfile(full) or not os.access(full, os.R_OK):
                raise UserError(f"missing or unreadable image {self._where(i)}")


def _image_kind(data: np.ndarray) -> str:
    if not len(data):
        return "an empty file"
    try:
        return f"a {Image.open(io.BytesIO(data.tobytes())).format} image"
    except (OSError, UnidentifiedImageError):
        return "not an image"


def decode_batch(encoded, device: torch.device, where=str) -> List[torch.Tensor]:
    """Decode a batch in one call; if that fails, one by one to name the file that does
    (`where(index)` describes a sample's file for the message)."""
    data = [torch.from_numpy(e.data) for e in encoded]
    mode = torchvision.io.ImageReadMode.RGB
    try:
        return torchvision.io.decode_jpeg(data, device=device, mode=mode)
    except RuntimeError:
        for e, d in zip(encoded, data):
            try:
                torchvision.io.decode_jpeg(d, device=device, mode=mode)
            except RuntimeError as err:
                raise UserError(f"cannot decode image {where(e.index)}: {decoder_reason(err)}") from None
        raise


def collate_encoded(samples):
    encoded, labels = zip(*samples)
    return list(encoded), torch.stack(labels)


def _line_number(list_path: str, index: int) -> int:
    """The file line of the index-th entry (blank lines are skipped by read_list); errors only."""
    seen = -1
    with open(list_path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                seen += 1
                if seen == index:
                    return number
    return index + 1


def read_class_names(path: str, num_classes: int) -> List[str]:
    """ImageNet-LT classnames.txt ('wnid name' per label) or iNaturalist categories.json (by id)."""
    if not path or not os.path.isfile(project_path(path)):
        return [f"class_{k}" for k in range(num_classes)]
    full = project_path(path)
    try:
        with open(full, encoding="utf-8") as f:
            text = f.read()
        if full.endswith(".json"):
            import json
            by_id = {c["id"]: str(c["name"]) for c in json.loads(text)}
            return [by_id.get(k, f"class_{k}") for k in range(num_classes)]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"data.class_names {path} cannot be read ({type(e).__name__}: {brief(e, 80)}); "
                        "expected classnames.txt lines or a categories.json list of {id, name}") from None
    names = [line.split(" ", 1)[-1] for line in text.splitlines() if line.strip()]
    return names if len(names) == num_classes else [f"class_{k}" for k in range(num_classes)]
