"""Out-of-distribution test sets of an ImageNet-LT model (paper section 5.3, Tables 4 and 7) and
ImageNet-C's corruption errors.

The sets are user-supplied folders with ImageNet's 1,000 classes:
  ImageNet-Sketch (Wang et al. 2019)   <root>/<wnid>/*.JPEG (50,889 images in the release)
  ImageNetV2 (Recht et al. 2019)       <root>/<class index 0..999>/*.jpeg (10,000 images per variant)
  ImageNet-C (Hendrycks & Dietterich)  <root>/<corruption>/<severity 1..5>/<wnid>/*.JPEG
A class folder is named by its WordNet id or by its label index; the label is its position in
the model's class order, which for ImageNet-LT is ImageNet's (data_txt/ImageNet_LT/classnames.txt
lists the WordNet id of each label).

Corruption error (Hendrycks & Dietterich 2019, section 4): for a model f with top-1 error
E^f_{s,c} on corruption c at severity s,

    CE^f_c = sum_s E^f_{s,c} / sum_s E^AlexNet_{s,c},      mCE^f = mean over the 15 corruptions of CE^f_c

(both in percent; AlexNet has mCE 100). Only the AlexNet error summed (or averaged) over the five
severities enters, so the reference below is AlexNet's mean error per corruption over
severities 1-5, as published with ImageNet-C (the constants of its authors' evaluation code,
github.com/hendrycks/robustness; also in AugMix's ImageNet script).
"""
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from core.errors import UserError

# The 15 corruptions, grouped and ordered as the columns of paper Table 7.
CORRUPTION_GROUPS = (
    ("blur", ("motion_blur", "defocus_blur", "glass_blur", "zoom_blur")),
    ("noise", ("gaussian_noise", "impulse_noise", "shot_noise")),
    ("digital", ("contrast", "elastic_transform", "jpeg_compression", "pixelate")),
    ("weather", ("brightness", "snow", "fog", "frost")),
)
CORRUPTIONS = tuple(c for _, group in CORRUPTION_GROUPS for c in group)
SEVERITIES = (1, 2, 3, 4, 5)

# AlexNet's top-1 error (fraction) on each corruption, mean over severities 1-5.
ALEXNET_ERROR = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
    "snow": 0.866816, "frost": 0.826572, "fog": 0.819324, "brightness": 0.564592,
    "contrast": 0.853204, "elastic_transform": 0.646056, "pixelate": 0.717840, "jpeg_compression": 0.606500,
}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
WNID = re.compile(r"^n\d{8}$")


def read_wnids(path: str, num_classes: int) -> List[str]:
    """The WordNet id of each label from a 'wnid name' file (data_txt/ImageNet_LT/classnames.txt)."""
    if not path or not os.path.isfile(path):
        raise UserError(f"ImageNet class list {path or '(none)'} not found; the OOD sets need the WordNet id of "
                        "each label: pass --ood-classes data_txt/ImageNet_LT/classnames.txt")
    with open(path) as f:
        wnids = [line.split()[0] for line in f if line.strip()]
    bad = [w for w in wnids if not WNID.match(w)]
    if bad or len(wnids) != num_classes:
        raise UserError(f"{path}: expected {num_classes} lines starting with a WordNet id (n01440764 ...), "
                        f"found {len(wnids)} lines" + (f", first bad id {bad[0]!r}" if bad else ""))
    return wnids


def class_folder_label(name: str, index: Dict[str, int], num_classes: int) -> Optional[int]:
    """Label of a class folder named by WordNet id or by label index; None if neither."""
    if name in index:
        return index[name]
    if name.isdigit() and int(name) < num_classes:
        return int(name)
    return None


def scan_class_folders(root: str, wnids: Sequence[str]) -> Tuple[List[str], List[int]]:
    """(paths relative to root, labels) of every image under root/<class folder>/ (recursively)."""
    if not os.path.isdir(root):
        raise UserError(f"OOD folder {root} does not exist")
    index = {w: k for k, w in enumerate(wnids)}
    paths, labels = [], []
    for name in sorted(os.listdir(root)):
        if not os.path.isdir(os.path.join(root, name)):
            continue
        label = class_folder_label(name, index, len(wnids))
        if label is None:
            raise UserError(f"{os.path.join(root, name)}: a class folder must be named by a WordNet id of the "
                            f"class list or by a label index 0..{len(wnids) - 1}")
        for dirpath, _, files in sorted(os.walk(os.path.join(root, name))):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.relpath(os.path.join(dirpath, f), root))
                    labels.append(label)
    if not paths:
        raise UserError(f"no images found in class folders under {root}")
    return paths, labels


def imagenet_c_subsets(root: str) -> Dict[Tuple[str, int], str]:
    """{(corruption, severity): folder} of the 15 corruptions present under root/<c>/<s>/."""
    if not os.path.isdir(root):
        raise UserError(f"ImageNet-C folder {root} does not exist")
    found = {(c, s): os.path.join(root, c, str(s)) for c in CORRUPTIONS for s in SEVERITIES
             if os.path.isdir(os.path.join(root, c, str(s)))}
    if not found:
        raise UserError(f"{root} holds no ImageNet-C corruption folder (<corruption>/<severity>/, e.g. "
                        "gaussian_noise/1/)")
    return found


def corruption_errors(errors: Dict[Tuple[str, int], float]) -> dict:
    """CE per corruption and mCE, in percent, from top-1 errors (percent) per (corruption, severity).

    A corruption missing a severity gets no CE, and mCE needs all 15 corruptions: a partial
    ImageNet-C gives partial results, never a mean over another set of corruptions.
    """
    ce, mean_error = {}, {}
    for c in CORRUPTIONS:
        if all((c, s) in errors for s in SEVERITIES):
            total = sum(errors[(c, s)] for s in SEVERITIES)
            mean_error[c] = total / len(SEVERITIES)
            ce[c] = 100.0 * total / (100.0 * ALEXNET_ERROR[c] * len(SEVERITIES))
    mce = sum(ce.values()) / len(ce) if len(ce) == len(CORRUPTIONS) else None
    return {"ce": ce, "mce": mce, "mean_error": mean_error}
