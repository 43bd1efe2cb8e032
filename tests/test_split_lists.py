"""Split lists: the parser's errors, the checks against the public releases, the ImageNet-LT
download (network replaced) and the iNaturalist 2018 converter, on small files in the real
formats written here, with the expected lines written by hand."""
import json
import os
import types
import urllib.error

import pytest

import data.download
from conftest import script, assert_one_line_error, run_cli
from data.download import write_atomic
from data.split_lists import (IMAGENET_LT_TRAIN, INAT2018_VAL, Expected, check_split, first_difference,
                              format_list, read_list, summary)
from core.errors import UserError


imagenet = script("get_imagenet_lt_list")
inat = script("make_inat2018_lists")


def write(folder, name: str, text: str) -> str:
    path = os.path.join(str(folder), name)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return path


def run_main(script, argv, capsys):
    """Call a script's main in this process; the result reads like run_cli's."""
    code = script.main(argv)
    out, err = capsys.readouterr()
    return types.SimpleNamespace(returncode=code, stdout=out, stderr=err)


# ---------------------------------------------------------------- read_list

def test_read_list_keeps_spaces_in_paths_and_skips_blank_and_crlf(tmp_path):
    path = write(tmp_path, "l.txt", "train/n01/a b.JPEG 0\r\n\nval/x.JPEG 2\n")
    assert read_list(path, num_classes=3) == (["train/n01/a b.JPEG", "val/x.JPEG"], [0, 2])


@pytest.mark.parametrize("text, line, message", [
    ("a.jpg 0\nno_label_here\n", 2, "expected '<relative/path> <label>', got 'no_label_here'"),
    ("a.jpg 0\nb.jpg one\n", 2, "label 'one' is not an integer"),
    ("a.jpg 0\n\nb.jpg 3\n", 3, "label 3 is outside 0..2"),
    ("a.jpg -1\n", 1, "label -1 is outside"),
    ("../secret/a.jpg 0\n", 1, "leaves the data root"),
    ("train\\..\\a.jpg 0\n", 1, "leaves the data root"),
    ("/imagenet/train/a.jpg 0\n", 1, "absolute path '/imagenet/train/a.jpg'"),
    ("C:/imagenet/a.jpg 0\n", 1, "absolute path"),
])
def test_read_list_names_the_bad_line(tmp_path, text, line, message):
    path = write(tmp_path, "l.txt", text)
    with pytest.raises(UserError) as e:
        read_list(path, num_classes=3)
    assert str(e.value).startswith(f"{path}:{line}: ") and message in str(e.value)


def test_read_list_missing_and_empty(tmp_path):
    with pytest.raises(UserError, match="split list not found"):
        read_list(str(tmp_path / "nope.txt"))
    with pytest.raises(UserError, match="holds no images"):
        read_list(write(tmp_path, "empty.txt", "\n\n"))


# ---------------------------------------------------------------- check_split on small lists

# Class counts 4, 2, 2, 1 (head first, as in the public lists).
SMALL = ("train/n00/a.JPEG 0\ntrain/n00/b.JPEG 0\ntrain/n00/c.JPEG 0\ntrain/n00/d.JPEG 0\n"
         "train/n01/e.JPEG 1\ntrain/n01/f.JPEG 1\n"
         "train/n02/g.JPEG 2\ntrain/n02/h.JPEG 2\n"
         "train/n03/i.JPEG 3\n")
SMALL_EXPECT = Expected(lines=9, classes=4, max_count=4, min_count=1)


def check_text(tmp_path, text: str, expect: Expected = SMALL_EXPECT) -> str:
    path = write(tmp_path, "list.txt", text)
    paths, labels = read_list(path, num_classes=expect.classes)
    check_split(paths, labels, expect, path)
    return summary(labels)


def test_check_split_accepts_the_good_list(tmp_path):
    assert check_text(tmp_path, SMALL) == "9 images, 4 classes, 4 to 1 per class"


@pytest.mark.parametrize("case, text, expect, message", [
    ("cut inside the last line", SMALL[:-4], SMALL_EXPECT, "list.txt:9: expected '<relative/path> <label>'"),
    ("cut at a line end", SMALL[:SMALL.index("train/n03")], SMALL_EXPECT, "has 8 images, expected 9"),
    ("a line too many", SMALL + "train/n02/z.JPEG 2\n", SMALL_EXPECT, "has 10 images, expected 9"),
    ("class 1 missing", SMALL.replace("JPEG 1", "JPEG 2"), SMALL_EXPECT, "class 1 has no image; expected all 4"),
    ("largest class too small", SMALL.replace("d.JPEG 0", "d.JPEG 1"), SMALL_EXPECT,
     "the largest class (label 1) has 3 images, expected 4"),
    ("smallest class too large", SMALL + "train/n03/j.JPEG 3\n", Expected(classes=4, max_count=4, min_count=1),
     "the smallest class (label 1) has 2 images, expected 1"),
])
def test_check_split_refuses_corrupt_lists(tmp_path, case, text, expect, message):
    with pytest.raises(UserError) as e:
        check_text(tmp_path, text, expect)
    assert message in str(e.value), case
    assert "list.txt" in str(e.value)


def test_check_split_refuses_labels_outside_and_paths_that_leave_the_root():
    with pytest.raises(UserError, match="src: label 4 is outside 0..3"):
        check_split(["a", "b"], [0, 4], Expected(classes=4), "src")
    with pytest.raises(UserError, match="src: image 2: path '../b' leaves the data root"):
        check_split(["a", "../b"], [0, 1], Expected(), "src")


def test_release_expectations_are_the_published_figures():
    assert IMAGENET_LT_TRAIN == Expected(lines=115_846, classes=1000, max_count=1280, min_count=5)
    assert INAT2018_VAL == Expected(lines=24_426, classes=8142)
    assert inat.EXPECTED[inat.TRAIN] == Expected(lines=437_513, classes=8142)


# ---------------------------------------------------------------- ImageNet-LT: check and download

def imagenet_lt_like() -> str:
    """A list with the published shape: class 0 holds 1280 images, class 999 holds 5, and the
    other 998 classes 114 or 115, for 115,846 lines (1280 + 5 + 789*115 + 209*114)."""
    counts = [1280] + [115] * 789 + [114] * 209 + [5]
    assert sum(counts) == 115_846 and len(counts) == 1000
    return "".join(f"train/n{k:08d}/n{k:08d}_{i}.JPEG {k}\n" for k, n in enumerate(counts) for i in range(n))


@pytest.fixture(scope="module")
def good_imagenet_lt():
    return imagenet_lt_like()


def fake_network(monkeypatch, answers: dict):
    """Replace the network: answers maps a URL to bytes or to an exception to raise."""
    calls = []

    def http_get(url, timeout):
        calls.append(url)
        answer = answers.get(url, urllib.error.HTTPError(url, 404, "Not Found", None, None))
        if isinstance(answer, Exception):
            raise answer
        return answer
    monkeypatch.setattr(data.download, "http_get", http_get)
    return calls


MAIN_URL = ("https://raw.githubusercontent.com/facebookresearch/classifier-balancing/main/"
            "data/ImageNet_LT/ImageNet_LT_train.txt")
MASTER_URL = MAIN_URL.replace("/main/", "/master/")


def test_check_accepts_a_list_of_the_published_shape(tmp_path, capsys, good_imagenet_lt):
    path = write(tmp_path, "ImageNet_LT_train.txt", good_imagenet_lt)
    proc = run_main(imagenet, ["--check", path], capsys)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"ok: {path}: 115,846 images, 1,000 classes, 1,280 to 5 per class\n"


def test_check_refuses_a_hand_copied_list_with_a_missing_line(tmp_path, capsys, good_imagenet_lt):
    path = write(tmp_path, "ImageNet_LT_train.txt", good_imagenet_lt.split("\n", 1)[1])
    proc = run_main(imagenet, ["--check", path], capsys)
    assert_one_line_error(proc, path, "has 115,845 images, expected 115,846", "get_imagenet_lt_list.py")


def test_download_writes_the_checked_list(tmp_path, capsys, monkeypatch, good_imagenet_lt):
    calls = fake_network(monkeypatch, {MAIN_URL: good_imagenet_lt.encode()})
    out = str(tmp_path / "lists" / "ImageNet_LT_train.txt")
    proc = run_main(imagenet, ["--out", out], capsys)
    assert proc.returncode == 0, proc.stderr
    assert calls == [MAIN_URL]
    with open(out, encoding="utf-8", newline="") as f:
        assert f.read() == good_imagenet_lt
    assert os.listdir(tmp_path / "lists") == ["ImageNet_LT_train.txt"]  # no temporary file left
    assert proc.stdout.startswith(f"wrote {out}: 115,846 images, 1,000 classes, 1,280 to 5 per class")


def test_download_falls_back_to_the_master_branch(tmp_path, capsys, monkeypatch, good_imagenet_lt):
    calls = fake_network(monkeypatch, {MASTER_URL: good_imagenet_lt.encode()})
    out = str(tmp_path / "ImageNet_LT_train.txt")
    assert run_main(imagenet, ["--out", out], capsys).returncode == 0
    assert calls == [MAIN_URL, MASTER_URL] and os.path.getsize(out) == len(good_imagenet_lt)


def test_failed_download_leaves_no_file(tmp_path, capsys, monkeypatch):
    offline = urllib.error.URLError("Name or service not known")
    fake_network(monkeypatch, {MAIN_URL: offline, MASTER_URL: offline})
    out = str(tmp_path / "ImageNet_LT_train.txt")
    proc = run_main(imagenet, ["--out", out], capsys)
    assert_one_line_error(proc, "download failed", "Name or service not known", "by hand", f"--check {out}")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("case, body, message", [
    ("truncated", lambda good: good[:len(good) // 2].rsplit("\n", 1)[0] + "\n", "images, expected 115,846"),
    ("cut mid-line", lambda good: good[:len(good) // 2], "expected '<relative/path> <label>'"),
    ("an HTML page", lambda good: "<!DOCTYPE html>\n<html><body>Rate limited</body></html>\n",
     ":1: label 'html>' is not an integer"),
])
def test_corrupt_download_keeps_the_old_file(tmp_path, capsys, monkeypatch, good_imagenet_lt, case, body, message):
    fake_network(monkeypatch, {MAIN_URL: body(good_imagenet_lt).encode()})
    out = write(tmp_path, "ImageNet_LT_train.txt", "an older copy\n")
    proc = run_main(imagenet, ["--out", out], capsys)
    assert_one_line_error(proc, MAIN_URL, message, "nothing was written")
    assert os.listdir(tmp_path) == ["ImageNet_LT_train.txt"]
    with open(out) as f:
        assert f.read() == "an older copy\n", case


def test_write_atomic_interrupted_keeps_the_old_file(tmp_path, monkeypatch):
    out = write(tmp_path, "list.txt", "old\n")

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(UserError, match="cannot write .*list.txt: No space left on device"):
        write_atomic(out, "new\n")
    assert os.listdir(tmp_path) == ["list.txt"] and open(out).read() == "old\n"


# ---------------------------------------------------------------- iNaturalist 2018 converter

def inat_json(images, annotations, categories) -> dict:
    return {"info": {"year": 2018}, "images": images, "annotations": annotations, "categories": categories,
            "licenses": []}


# Category ids 40, 7, 2 in file order (not 0..C-1); annotations in another order than images.
CATEGORIES = [{"id": 40, "name": "Quercus alba", "supercategory": "Plantae"},
              {"id": 7, "name": "Apis mellifera", "supercategory": "Insecta"},
              {"id": 2, "name": "Turdus migratorius", "supercategory": "Aves"}]
TRAIN_IMAGES = [{"id": 101, "file_name": "train_val2018/Plantae/40/0a1b.jpg", "width": 800, "height": 600},
                {"id": 5, "file_name": "train_val2018/Insecta/7/77ef.jpg", "width": 800, "height": 533},
                {"id": 77, "file_name": "train_val2018/Plantae/40/c3d4.jpg", "width": 600, "height": 800},
                {"id": 12, "file_name": "train_val2018/Aves/2/9f00.jpg", "width": 800, "height": 800}]
TRAIN_ANNOTATIONS = [{"id": 77, "image_id": 77, "category_id": 40}, {"id": 12, "image_id": 12, "category_id": 2},
                     {"id": 101, "image_id": 101, "category_id": 40}, {"id": 5, "image_id": 5, "category_id": 7}]
VAL_IMAGES = [{"id": 900, "file_name": "train_val2018/Aves/2/ee11.jpg"},
              {"id": 901, "file_name": "train_val2018/Insecta/7/ff22.jpg"}]
VAL_ANNOTATIONS = [{"id": 901, "image_id": 901, "category_id": 7}, {"id": 900, "image_id": 900, "category_id": 2}]

TRAIN_LINES = ("train_val2018/Plantae/40/0a1b.jpg 40\n"
               "train_val2018/Insecta/7/77ef.jpg 7\n"
               "train_val2018/Plantae/40/c3d4.jpg 40\n"
               "train_val2018/Aves/2/9f00.jpg 2\n")
VAL_LINES = ("train_val2018/Aves/2/ee11.jpg 2\n"
             "train_val2018/Insecta/7/ff22.jpg 7\n")


@pytest.fixture
def inat_files(tmp_path):
    """-> (train json, val json, output folder) in tmp_path."""
    train = write(tmp_path, "train2018.json", json.dumps(inat_json(TRAIN_IMAGES, TRAIN_ANNOTATIONS, CATEGORIES)))
    val = write(tmp_path, "val2018.json", json.dumps(inat_json(VAL_IMAGES, VAL_ANNOTATIONS, CATEGORIES)))
    return train, val, str(tmp_path / "out")


def read(path: str) -> str:
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def test_convert_joins_on_image_id_in_images_order():
    paths, labels = inat.convert(inat_json(TRAIN_IMAGES, TRAIN_ANNOTATIONS, CATEGORIES), "train2018.json")
    assert format_list(paths, labels) == TRAIN_LINES


def test_converter_writes_both_lists(inat_files, capsys):
    train, val, out = inat_files
    proc = run_main(inat, ["--train-json", train, "--val-json", val, "--out-dir", out, "--skip-official-checks"],
                    capsys)
    assert proc.returncode == 0, proc.stderr
    assert read(os.path.join(out, "iNaturalist18_train.txt")) == TRAIN_LINES
    assert read(os.path.join(out, "iNaturalist18_val.txt")) == VAL_LINES
    assert sorted(os.listdir(out)) == ["iNaturalist18_train.txt", "iNaturalist18_val.txt"]
    assert f"wrote {out}/iNaturalist18_train.txt: 4 images, 3 classes, 2 to 1 per class, from {train}" in proc.stdout


def test_converter_checks_the_official_counts_by_default(inat_files, capsys):
    train, _, out = inat_files
    proc = run_main(inat, ["--train-json", train, "--out-dir", out], capsys)
    assert_one_line_error(proc, train, "has 4 images, expected 437,513")
    assert not os.path.exists(out)


def test_val_equal_to_the_shipped_list_passes(inat_files, tmp_path, capsys):
    train, val, out = inat_files
    shipped = write(tmp_path, "shipped_val.txt", VAL_LINES)
    proc = run_main(inat, ["--val-json", val, "--out-dir", out, "--skip-official-checks", "--shipped-val", shipped],
                    capsys)
    assert proc.returncode == 0, proc.stderr
    assert read(os.path.join(out, "iNaturalist18_val.txt")) == VAL_LINES


@pytest.mark.parametrize("shipped_text, message", [
    ("train_val2018/Aves/2/ee11.jpg 2\ntrain_val2018/Insecta/7/ff22.jpg 40\n",
     "at line 2 ('train_val2018/Insecta/7/ff22.jpg 7' vs 'train_val2018/Insecta/7/ff22.jpg 40')"),
    (VAL_LINES + "train_val2018/Aves/2/0000.jpg 2\n", "at line 3 (no line vs 'train_val2018/Aves/2/0000.jpg 2')"),
    ("train_val2018/Insecta/7/ff22.jpg 7\ntrain_val2018/Aves/2/ee11.jpg 2\n", "at line 1"),
])
def test_val_that_differs_from_the_shipped_list_writes_nothing(inat_files, tmp_path, capsys, shipped_text, message):
    train, val, out = inat_files
    shipped = write(tmp_path, "shipped_val.txt", shipped_text)
    proc = run_main(inat, ["--train-json", train, "--val-json", val, "--out-dir", out, "--skip-official-checks",
                           "--shipped-val", shipped], capsys)
    assert_one_line_error(proc, val, f"differs from {shipped}", message, "nothing was written")
    assert not os.path.exists(out)


def test_val_equal_to_the_file_it_would_replace_is_left_as_it_is(inat_files, capsys):
    train, val, out = inat_files
    os.makedirs(out)
    shipped = write(out, "iNaturalist18_val.txt", VAL_LINES.replace("\n", "\r\n"))  # CRLF, as shipped
    proc = run_main(inat, ["--val-json", val, "--out-dir", out, "--skip-official-checks", "--shipped-val", shipped],
                    capsys)
    assert proc.returncode == 0, proc.stderr
    assert read(shipped) == VAL_LINES.replace("\n", "\r\n") and "kept" in proc.stdout


def test_check_of_lists_copied_by_hand(tmp_path, capsys):
    folder = tmp_path / "lists"
    os.makedirs(folder)
    write(folder, "iNaturalist18_train.txt", TRAIN_LINES.replace("\n", "\r\n"))
    write(folder, "iNaturalist18_val.txt", VAL_LINES)
    shipped = write(tmp_path, "shipped.txt", VAL_LINES)
    argv = ["--check", "--out-dir", str(folder), "--skip-official-checks", "--shipped-val", shipped]
    proc = run_main(inat, argv, capsys)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (f"ok: {folder}/iNaturalist18_train.txt: 4 images, 3 classes, 2 to 1 per class\n"
                           f"ok: {folder}/iNaturalist18_val.txt: 2 images, 2 classes, 1 to 1 per class\n")
    assert read(folder / "iNaturalist18_train.txt") == TRAIN_LINES.replace("\n", "\r\n")  # not rewritten

    write(folder, "iNaturalist18_train.txt", TRAIN_LINES)
    proc = run_main(inat, ["--check", "--out-dir", str(folder), "--shipped-val", shipped], capsys)
    assert_one_line_error(proc, "iNaturalist18_train.txt has 4 images, expected 437,513")


def test_first_difference_by_hand():
    assert first_difference(["a 0", "b 1"], ["a 0", "b 1"]) is None
    assert first_difference(["a 0", "b 1"], ["a 0", "b 2"]) == 2
    assert first_difference(["a 0"], ["a 0", "b 1"]) == 2
    assert first_difference([], []) is None


def test_official_val_json_reproduces_the_shipped_list(tmp_path, capsys):
    """A val2018.json in the official shape (24,426 images, 8,142 categories, annotations in reverse
    order) built from the shipped list: with the default checks it must come back line for line."""
    paths, labels = read_list(inat.SHIPPED_VAL)
    images = [{"id": 675_170 + i, "file_name": p} for i, p in enumerate(paths)]
    annotations = [{"id": 675_170 + i, "image_id": 675_170 + i, "category_id": y} for i, y in enumerate(labels)]
    categories = [{"id": k, "name": f"species {k}"} for k in reversed(range(8142))]
    val = write(tmp_path, "val2018.json", json.dumps(inat_json(images, annotations[::-1], categories)))
    out = str(tmp_path / "out")
    proc = run_main(inat, ["--val-json", val, "--out-dir", out], capsys)
    assert proc.returncode == 0, proc.stderr
    with open(inat.SHIPPED_VAL, encoding="utf-8") as f:  # the shipped copy has CRLF line ends
        assert read(os.path.join(out, "iNaturalist18_val.txt")) == f.read()

    images[3]["file_name"], images[4]["file_name"] = images[4]["file_name"], images[3]["file_name"]
    swapped = write(tmp_path, "val2018.json", json.dumps(inat_json(images, annotations, categories)))
    assert_one_line_error(run_main(inat, ["--val-json", swapped, "--out-dir", out], capsys), "at line 4")


def broken(what: str) -> dict:
    """The train JSON with one defect."""
    images = [dict(i) for i in TRAIN_IMAGES]
    annotations = [dict(a) for a in TRAIN_ANNOTATIONS]
    if what == "no annotation":
        annotations = [a for a in annotations if a["image_id"] != 5]
    elif what == "unknown category":
        annotations[1]["category_id"] = 9
    elif what == "no file_name":
        del images[2]["file_name"]
    elif what == "annotated twice":
        annotations.append({"id": 999, "image_id": 101, "category_id": 7})
    elif what == "annotation of no image":
        annotations.append({"id": 998, "image_id": 4242, "category_id": 7})
    elif what == "absolute path":
        images[0]["file_name"] = "/data/inat/train_val2018/Plantae/40/0a1b.jpg"
    return inat_json(images, annotations, CATEGORIES)


@pytest.mark.parametrize("content, message", [
    (None, "not found; download the iNaturalist 2018 annotations"),
    ('{"images": [', "is not valid JSON"),
    (json.dumps({"images": [], "categories": []}), "has no 'annotations' list"),
    (json.dumps([1, 2]), "has no 'images' list"),
    (json.dumps(broken("no annotation")), "images[1]: image 5 (train_val2018/Insecta/7/77ef.jpg) has no annotation"),
    (json.dumps(broken("unknown category")), "annotations[1]: category_id 9 is not in 'categories'"),
    (json.dumps(broken("no file_name")), "images[2] has no 'file_name'"),
    (json.dumps(broken("annotated twice")), "annotations[4]: image 101 has a second annotation"),
    (json.dumps(broken("annotation of no image")), "refers to image 4242, which is not in 'images'"),
    (json.dumps(broken("absolute path")), "images[0]: absolute path"),
])
def test_bad_annotation_files_are_one_line_errors(tmp_path, capsys, content, message):
    path = str(tmp_path / "train2018.json") if content is None else write(tmp_path, "train2018.json", content)
    out = str(tmp_path / "out")
    proc = run_main(inat, ["--train-json", path, "--out-dir", out, "--skip-official-checks"], capsys)
    assert_one_line_error(proc, path, message)
    assert not os.path.exists(out)


def inat_url(name: str, branch: str = "main") -> str:
    return f"https://raw.githubusercontent.com/facebookresearch/classifier-balancing/{branch}/data/iNaturalist18/{name}"


def test_fetch_writes_both_checked_lists(tmp_path, capsys, monkeypatch):
    crlf_train = TRAIN_LINES.replace("\n", "\r\n")  # the public copies have CRLF line ends
    fake_network(monkeypatch, {inat_url("iNaturalist18_train.txt"): crlf_train.encode(),
                               inat_url("iNaturalist18_val.txt", "master"): VAL_LINES.encode()})
    shipped, out = write(tmp_path, "shipped.txt", VAL_LINES), str(tmp_path / "out")
    proc = run_main(inat, ["--fetch", "--skip-official-checks", "--shipped-val", shipped, "--out-dir", out], capsys)
    assert proc.returncode == 0, proc.stderr
    assert read(os.path.join(out, "iNaturalist18_train.txt")) == crlf_train  # written as downloaded
    assert read(os.path.join(out, "iNaturalist18_val.txt")) == VAL_LINES


def test_failed_fetch_writes_nothing(tmp_path, capsys, monkeypatch):
    fake_network(monkeypatch, {inat_url("iNaturalist18_train.txt"): TRAIN_LINES.encode()})
    out = str(tmp_path / "out")
    proc = run_main(inat, ["--fetch", "--out-dir", out], capsys)
    assert_one_line_error(proc, "download failed", "iNaturalist18_val.txt (HTTP 404)", "--train-json train2018.json")
    assert not os.path.exists(out)


def test_fetch_with_official_checks_refuses_a_small_list(tmp_path, capsys, monkeypatch):
    fake_network(monkeypatch, {inat_url(n): t.encode() for n, t in [("iNaturalist18_train.txt", TRAIN_LINES),
                                                                       ("iNaturalist18_val.txt", VAL_LINES)]})
    out = str(tmp_path / "out")
    proc = run_main(inat, ["--fetch", "--out-dir", out], capsys)
    assert_one_line_error(proc, inat_url("iNaturalist18_train.txt"), "has 4 images, expected 437,513")
    assert not os.path.exists(out)


# ---------------------------------------------------------------- the commands themselves

def test_cli_imagenet_check_of_a_missing_file_is_one_line(tmp_path):
    missing = str(tmp_path / "ImageNet_LT_train.txt")
    proc = run_cli("scripts/get_imagenet_lt_list.py", "--check", missing, timeout=60)
    assert_one_line_error(proc, f"split list not found: {missing}", "get_imagenet_lt_list.py")


def test_cli_inat_bad_annotations_are_one_line(tmp_path):
    bad = write(tmp_path, "bad.json", json.dumps(broken("unknown category")))
    proc = run_cli("scripts/make_inat2018_lists.py", "--train-json", bad, "--out-dir", str(tmp_path / "out2"),
                   "--skip-official-checks", timeout=60)
    assert_one_line_error(proc, bad, "category_id 9 is not in 'categories'")


@pytest.mark.parametrize("argv, message", [
    ([], "give --train-json and/or --val-json"),
    (["--fetch", "--val-json", "val2018.json"], "choose one of --train-json/--val-json (convert), --fetch"),
    (["--check", "--fetch"], "choose one of"),
    (["--check"], "iNaturalist18_train.txt not found; copy iNaturalist18_train.txt there by hand"),
])
def test_inat_argument_mistakes_are_one_line(tmp_path, capsys, argv, message):
    proc = run_main(inat, argv + ["--out-dir", str(tmp_path / "out")], capsys)
    assert_one_line_error(proc, message)


def test_the_shipped_val_list_is_compared_whenever_it_would_be_replaced(tmp_path):
    elsewhere = str(tmp_path / "iNaturalist18_val.txt")
    assert inat.shipped_to_compare(None, True, elsewhere) == inat.SHIPPED_VAL
    assert inat.shipped_to_compare(None, False, elsewhere) is None
    assert inat.shipped_to_compare(None, False, inat.SHIPPED_VAL) == inat.SHIPPED_VAL
    assert inat.shipped_to_compare("mine.txt", False, elsewhere) == "mine.txt"
