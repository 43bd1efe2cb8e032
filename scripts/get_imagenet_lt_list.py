#!/usr/bin/env python
"""Get the ImageNet-LT training list (115,846 lines, over 4 MiB, so not shipped) and check it.

    python scripts/get_imagenet_lt_list.py                       # download to data_txt/ImageNet_LT/
    python scripts/get_imagenet_lt_list.py --out /data/lists/ImageNet_LT_train.txt
    python scripts/get_imagenet_lt_list.py --check               # check a copy placed by hand
    python scripts/get_imagenet_lt_list.py --check PATH

The list comes from the public copy in facebookresearch/classifier-balancing, which redistributes
the ImageNet-LT split of Liu et al. 2019 (OLTR). The check: every line `<relative/path> <label>`,
exactly 115,846 images, labels 0..999 all present, 1,280 images in the largest class and 5 in the
smallest. The download is checked in memory and then written atomically, so a failure leaves the
destination as it was. Errors are one `error: ...` line with exit status 2.
"""
import argparse
import io
import os
import sys

from _root import ROOT  # noqa: E402  (the repository on the import path)

from data.download import fetch_text, write_atomic                                      # noqa: E402
from data.split_lists import IMAGENET_LT_TRAIN, check_split, parse_list, read_list, summary  # noqa: E402
from core.args import ArgumentParser, positive_seconds  # noqa: E402
from core.errors import UserError                                                       # noqa: E402

NAME = "ImageNet_LT_train.txt"
REPO_PAGE = "github.com/facebookresearch/classifier-balancing (data/ImageNet_LT/)"
# The default branch is `main` (links in other projects use it); `master` is the name it had before.
URLS = [f"https://raw.githubusercontent.com/facebookresearch/classifier-balancing/{branch}/data/ImageNet_LT/{NAME}"
        for branch in ("main", "master")]
DEFAULT_OUT = os.path.join(ROOT, "data_txt", "ImageNet_LT", NAME)


def by_hand(out: str) -> str:
    """What to do without internet or with a damaged file."""
    return (f"copy {NAME} by hand from {REPO_PAGE} to {out} and check it with: "
            f"python scripts/get_imagenet_lt_list.py --check {out}")


def shipped_list(path: str) -> bool:
    """One of the lists that ship with the repository (the test and val lists, class names)."""
    shipped = os.path.dirname(DEFAULT_OUT)
    return (os.path.isfile(path) and os.path.basename(path) != NAME
            and os.path.dirname(os.path.abspath(path)) == os.path.abspath(shipped))


def check_file(path: str) -> str:
    """Check a list on disk against the public release; -> its summary line."""
    try:
        paths, labels = read_list(path, num_classes=IMAGENET_LT_TRAIN.classes)
        check_split(paths, labels, IMAGENET_LT_TRAIN, path)
    except UserError as e:
        if shipped_list(path):  # never advise an --out that would overwrite a shipped list
            raise UserError(f"{e}; {os.path.basename(path)} ships with the repository and is not the training "
                            f"list: check {NAME} instead (--check {DEFAULT_OUT})") from None
        raise UserError(f"{e}; get a fresh copy with: python scripts/get_imagenet_lt_list.py --out {path}") from None
    return summary(labels)


def download(out: str, timeout: float) -> str:
    """Download, check in memory, then write `out` atomically; -> the summary line."""
    text, url = fetch_text(URLS, timeout, by_hand(out))
    try:
        paths, labels = parse_list(io.StringIO(text), url, num_classes=IMAGENET_LT_TRAIN.classes)
        check_split(paths, labels, IMAGENET_LT_TRAIN, url)
    except UserError as e:
        raise UserError(f"{e}; nothing was written; try again later, or {by_hand(out)}") from None
    write_atomic(out, text)
    return f"{summary(labels)}, from {url}"


def check_out(out: str) -> None:
    """Before downloading: --out must be a file path that is not one of the shipped lists."""
    if os.path.isdir(out):
        raise UserError(f"--out {out} is a folder; give the file path, e.g. {os.path.join(out, NAME)}")
    if shipped_list(out):
        raise UserError(f"--out {out} would overwrite a list that ships with the repository; "
                        f"give another path (default: {DEFAULT_OUT})")


def parse_args(argv):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"where to write the list (default: {DEFAULT_OUT})")
    parser.add_argument("--check", nargs="?", const=DEFAULT_OUT, metavar="PATH",
                        help="only check an existing list (default PATH: the --out default); no download")
    parser.add_argument("--timeout", type=positive_seconds, default=60.0,
                        help="seconds to wait for the server (default 60)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.check:
            print(f"ok: {args.check}: {check_file(args.check)}")
        else:
            check_out(args.out)
            print(f"wrote {args.out}: {download(args.out, args.timeout)}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
