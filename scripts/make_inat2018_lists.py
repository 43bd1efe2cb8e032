#!/usr/bin/env python
"""Build the iNaturalist 2018 train and val lists from the official annotation files, and check them.

    python scripts/make_inat2018_lists.py --train-json train2018.json --val-json val2018.json
    python scripts/make_inat2018_lists.py --fetch        # download the public lists instead
    python scripts/make_inat2018_lists.py --check        # check lists copied by hand into --out-dir
    python scripts/make_inat2018_lists.py --val-json small.json --skip-official-checks --out-dir /tmp/lists

The annotation files are COCO style: `images` [{id, file_name}], `annotations` [{image_id,
category_id}], `categories` [{id}]. Each output line is `<file_name> <category_id>` (the label is
the category id itself), in the order of `images`; annotations are joined by `image_id`, in
whatever order they come. Checks: every image has exactly one annotation, every category id is
listed, every path is relative; then, unless --skip-official-checks, 437,513 train and 24,426 val
images over all 8,142 classes, and the val list equal line for line to the shipped
data_txt/iNaturalist18/iNaturalist18_val.txt. Nothing is written unless every list passes; each
file is written atomically. Errors are one `error: ...` line with exit status 2.
"""
import argparse
import io
import json
import os
import sys
from typing import Dict, List, NamedTuple, Optional, Tuple

from _root import ROOT  # noqa: E402  (the repository on the import path)

from data.download import fetch_text, write_atomic                     # noqa: E402
from data.split_lists import (INAT2018_TRAIN, INAT2018_VAL, Expected,   # noqa: E402
                              check_relative, check_split, first_difference, format_list, parse_list,
                              read_list, summary)
from core.args import ArgumentParser, positive_seconds  # noqa: E402
from core.errors import UserError                                      # noqa: E402

TRAIN, VAL = "iNaturalist18_train.txt", "iNaturalist18_val.txt"
EXPECTED = {TRAIN: INAT2018_TRAIN, VAL: INAT2018_VAL}
DEFAULT_OUT_DIR = os.path.join(ROOT, "data_txt", "iNaturalist18")
SHIPPED_VAL = os.path.join(DEFAULT_OUT_DIR, VAL)
ANNOTATIONS_PAGE = "github.com/visipedia/inat_comp (2018)"
# Same repository as the ImageNet-LT list; `main` first, `master` is the branch's former name.
URL = "https://raw.githubusercontent.com/facebookresearch/classifier-balancing/{branch}/data/iNaturalist18/{name}"


class Built(NamedTuple):
    """One list in memory and where it came from (a JSON file or a URL), for messages."""
    paths: List[str]
    labels: List[int]
    source: str
    text: Optional[str] = None  # a downloaded list is written as it came, line ends included


def load_annotations(path: str) -> dict:
    """The parsed annotation file, with `images`, `annotations` and `categories` lists."""
    if not os.path.isfile(path):
        raise UserError(f"{path} not found; download the iNaturalist 2018 annotations (train2018.json, "
                        f"val2018.json) from {ANNOTATIONS_PAGE}, or use --fetch")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); download it again") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 JSON; expected an iNaturalist 2018 annotation file") from None
    except RecursionError:
        raise UserError(f"{path} nests too deeply to be an iNaturalist 2018 annotation file") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise UserError(f"{path} has no '{key}' list; expected an iNaturalist 2018 annotation file "
                            f"(COCO style: images, annotations, categories)")
    return data


def _field(entry, key: str, where: str, kinds: tuple):
    """entry[key], which must exist and be one of `kinds` (a JSON true is not an integer id)."""
    value = entry.get(key) if isinstance(entry, dict) else None
    if value is None:
        raise UserError(f"{where} has no '{key}'")
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise UserError(f"{where}: '{key}' is {value!r}, expected {' or '.join(k.__name__ for k in kinds)}")
    return value


def _label_of_image(data: dict, source: str) -> Dict[object, int]:
    """image id -> category id, refusing unknown categories and images annotated twice."""
    known = {_field(c, "id", f"{source}: categories[{i}]", (int,)) for i, c in enumerate(data["categories"])}
    labels = {}
    for j, annotation in enumerate(data["annotations"]):
        where = f"{source}: annotations[{j}]"
        image_id = _field(annotation, "image_id", where, (int, str))
        category = _field(annotation, "category_id", where, (int,))
        if category not in known:
            raise UserError(f"{where}: category_id {category} is not in 'categories'")
        if image_id in labels:
            raise UserError(f"{where}: image {image_id!r} has a second annotation; expected one label per image")
        labels[image_id] = category
    return labels


def convert(data: dict, source: str) -> Tuple[List[str], List[int]]:
    """-> (file names, category ids) in the order of data['images'], joined on image id."""
    if not data["images"]:
        raise UserError(f"{source}: 'images' is empty; expected an iNaturalist 2018 annotation file")
    label_of = _label_of_image(data, source)
    paths, labels, first = [], [], {}
    for i, image in enumerate(data["images"]):
        where = f"{source}: images[{i}]"
        image_id = _field(image, "id", where, (int, str))
        file_name = _field(image, "file_name", where, (str,))
        if image_id in first:
            raise UserError(f"{where}: image id {image_id!r} is also the id of images[{first[image_id]}]; "
                            "expected one entry per image")
        first[image_id] = i
        if image_id not in label_of:
            raise UserError(f"{where}: image {image_id!r} ({file_name}) has no annotation")
        check_relative(file_name, where)
        paths.append(file_name)
        labels.append(label_of.pop(image_id))
    if label_of:
        raise UserError(f"{source}: an annotation refers to image {next(iter(label_of))!r}, which is not in 'images'")
    return paths, labels


def lists_from_json(train_json: Optional[str], val_json: Optional[str]) -> Dict[str, Built]:
    """The lists of the annotation files given (train, val or both)."""
    lists = {}
    for name, path in ((TRAIN, train_json), (VAL, val_json)):
        if path:
            lists[name] = Built(*convert(load_annotations(path), path), path)
    return lists


def lists_from_fetch(timeout: float, official: bool) -> Dict[str, Built]:
    """Download both public lists into memory and parse them (labels 0..8141 when official)."""
    hint = ("without internet, build the lists from the official annotations: "
            "python scripts/make_inat2018_lists.py --train-json train2018.json --val-json val2018.json")
    lists = {}
    for name in (TRAIN, VAL):
        urls = [URL.format(branch=branch, name=name) for branch in ("main", "master")]
        text, url = fetch_text(urls, timeout, hint)
        num_classes = EXPECTED[name].classes if official else None
        lists[name] = Built(*parse_list(io.StringIO(text), url, num_classes), url, text)
    return lists


def lists_on_disk(out_dir: str, official: bool) -> Dict[str, Built]:
    """The lists already in `out_dir` (copied by hand): the train list, and the val list if there."""
    lists = {}
    for name in (TRAIN, VAL):
        path = os.path.join(out_dir, name)
        if name == TRAIN and not os.path.isfile(path):
            raise UserError(f"{path} not found; copy {TRAIN} there by hand, or make it with --train-json or --fetch")
        if os.path.isfile(path):
            lists[name] = Built(*read_list(path, EXPECTED[name].classes if official else None), path)
    return lists


def compare_with_shipped(val: Built, shipped: str) -> None:
    """Refuse a val list that differs from the shipped one; the message names the first line."""
    if not os.path.isfile(shipped):
        raise UserError(f"shipped val list not found: {shipped}")
    try:
        with open(shipped, encoding="utf-8") as f:
            theirs = [line.rstrip("\n").rstrip("\r") for line in f if line.strip()]
    except UnicodeDecodeError:
        raise UserError(f"{shipped} is not UTF-8 text; give the shipped val list (--shipped-val)") from None
    ours = format_list(val.paths, val.labels).splitlines()
    number = first_difference(ours, theirs)
    if number is not None:
        raise UserError(f"{val.source}: the val list differs from {shipped} at line {number} "
                        f"({_line(ours, number)} vs {_line(theirs, number)}); nothing was written; "
                        f"check that it is the iNaturalist 2018 validation set")


def _line(lines: List[str], number: int) -> str:
    return repr(lines[number - 1]) if number <= len(lines) else "no line"


def shipped_to_compare(given: Optional[str], official: bool, val_out: str) -> Optional[str]:
    """The shipped val list to compare with: the one given, else the repository's when the
    official checks run or when the new list would replace it."""
    if given:
        return given
    replaces = os.path.abspath(val_out) == os.path.abspath(SHIPPED_VAL)
    if (official or replaces) and os.path.isfile(SHIPPED_VAL):
        return SHIPPED_VAL
    return None


def parse_args(argv):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-json", help="iNaturalist 2018 train2018.json")
    parser.add_argument("--val-json", help="iNaturalist 2018 val2018.json")
    parser.add_argument("--fetch", action="store_true",
                        help="download the public train and val lists (classifier-balancing) instead of converting")
    parser.add_argument("--check", action="store_true",
                        help="only check the lists already in --out-dir (copied by hand); nothing is written")
    parser.add_argument("--out-dir", default=DEFAULT_OUT_DIR,
                        help=f"where to write the lists (default: {DEFAULT_OUT_DIR})")
    parser.add_argument("--skip-official-checks", action="store_true",
                        help="do not check the official image and class counts, nor compare val with the shipped "
                             "list (for subsets and tests)")
    parser.add_argument("--shipped-val", metavar="PATH",
                        help=f"compare the val list with this file (default: {SHIPPED_VAL} unless "
                             f"--skip-official-checks)")
    parser.add_argument("--timeout", type=positive_seconds, default=60.0,
                        help="seconds to wait for the server with --fetch")
    return parser.parse_args(argv)


def gather(args, official: bool) -> Dict[str, Built]:
    """The lists from the one source asked for: annotation files, the download, or --out-dir."""
    converting = bool(args.train_json or args.val_json)
    if args.fetch + args.check + converting > 1:
        raise UserError("choose one of --train-json/--val-json (convert), --fetch (download) and --check")
    if args.fetch:
        return lists_from_fetch(args.timeout, official)
    if args.check:
        return lists_on_disk(args.out_dir, official)
    if not converting:
        raise UserError("give --train-json and/or --val-json (iNaturalist 2018 annotation files), --fetch or --check")
    return lists_from_json(args.train_json, args.val_json)


def build(args) -> Tuple[Dict[str, Built], Optional[str]]:
    """-> (the lists asked for, all checked; the shipped val list they were compared with)."""
    official = not args.skip_official_checks
    lists = gather(args, official)
    for name, built in lists.items():
        check_split(built.paths, built.labels, EXPECTED[name] if official else Expected(), built.source)
    shipped = shipped_to_compare(args.shipped_val, official, os.path.join(args.out_dir, VAL))
    if VAL in lists and shipped:
        compare_with_shipped(lists[VAL], shipped)
    return lists, shipped


def save(name: str, built: Built, out: str, shipped: Optional[str]) -> str:
    """Write one checked list to `out`; -> the line to print."""
    if name == VAL and shipped and os.path.isfile(out) and os.path.samefile(out, shipped):
        # Equal line for line (checked in build); rewriting would only change its CRLF line ends.
        return f"kept {out}: the new val list equals it line for line"
    write_atomic(out, built.text if built.text is not None else format_list(built.paths, built.labels))
    return f"wrote {out}: {summary(built.labels)}, from {built.source}"


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        lists, shipped = build(args)
        for name, built in lists.items():
            out = os.path.join(args.out_dir, name)
            print(f"ok: {out}: {summary(built.labels)}" if args.check else save(name, built, out, shipped))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
