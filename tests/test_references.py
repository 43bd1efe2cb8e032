"""Every reference in configs/ and the documentation resolves inside the repository: files and
folders named by path, markdown links and their anchors, sections named in quotes, and other
markdown files named bare. A file of another repository must be written with that repository
(`github.com/owner/name path`), so that a reader knows where to look."""
import glob
import os
import re
import subprocess

import pytest

from conftest import ROOT

DOCS = ["README.md", "data_txt/README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
# Repositories the documents cite: a path right after one of these is a file there, not here.
EXTERNAL = re.compile(r"(github\.com/|(?<![\w/])(scongl/Focal-SAM|cool-xuan/Imbalanced_SAM|zzpustc/CC-SAM|"
                      r"val-iisc/Saddle-LongTail|orparask/VS-Loss|kaidic/LDAM-DRW|shijxcs/LIFT|wang22ti/DDC|"
                      r"HaohanWang/ImageNet-Sketch|modestyachts/ImageNetV2|hendrycks/robustness|pytorch/vision|"
                      r"facebookresearch/\w+|huggingface/[\w-]+|KellerJordan/[\w-]+)\b)")
PACKAGES = "configs|docs|scripts|repro|data_txt|tests|engine|models|optim|losses|data|analysis|core"
# Files the user makes with our scripts (too large to ship): scripts/get_imagenet_lt_list.py and
# scripts/make_inat2018_lists.py write them.
GENERATED = ("data_txt/ImageNet_LT/ImageNet_LT_train.txt", "data_txt/iNaturalist18/iNaturalist18_train.txt")
PATH = re.compile(rf"(?<![\w/.~-])((?:{PACKAGES})/[\w./*{{}},-]*[\w*}}])")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SECTION = re.compile(r"(README(?:\.md)?|[\w/-]+\.md)(?:'s)?,? (?:section )?\"([^\"]+)\"")
NEAR = re.compile(r"\"([^\"]{3,80})\",? (above|below)")
BARE_MD = re.compile(r"(?<![\w/.-])(?<!\]\()([\w-]+\.md)\b")     # not a link target: LINK checks those


def text_of(path: str) -> str:
    """A config's comment lines, or a document's text, with line breaks and comment marks folded
    into spaces (references wrap across lines)."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        raw = f.read()
    if path.endswith(".yaml"):
        raw = "\n".join(line.split("#", 1)[1] for line in raw.splitlines() if "#" in line)
    return re.sub(r"\s*\n\s*", " ", raw)


def headings(path: str):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return [line.lstrip("#").strip() for line in f if line.startswith("#")]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def expand(token: str):
    """Brace alternatives (`cifar{10,100}_lt`) into plain glob patterns."""
    m = re.search(r"\{([^{}]*)\}", token)
    if not m:
        return [token]
    return [p for alt in m.group(1).split(",") for p in expand(token[:m.start()] + alt + token[m.end():])]


def exists(pattern: str) -> bool:
    return bool(glob.glob(os.path.join(ROOT, pattern))) or os.path.exists(os.path.join(ROOT, pattern))


def is_external(text: str, start: int) -> bool:
    """The path at `start` follows a cited repository within its sentence (80 characters)."""
    before = text[max(0, start - 80):start]
    return bool(EXTERNAL.search(re.split(r"[.;:]\s", before)[-1]))


def markdown_file(name: str, here: str) -> str:
    """The repository file a document means by `name` (README, docs/x.md, x.md beside it)."""
    if name == "README":                       # "README, ..." is the repository's front page
        return "README.md"
    for candidate in (os.path.join(os.path.dirname(here), name), name, os.path.join("docs", name)):
        if os.path.isfile(os.path.join(ROOT, candidate)):
            return os.path.normpath(candidate)
    return ""


def unresolved(path: str):
    text = text_of(path)
    for m in PATH.finditer(text):
        token = m.group(1).rstrip(".,")
        if token in GENERATED or token.startswith(("data/", "tests/")) and not token.endswith(".py"):
            continue          # a made file, a dataset folder under data/, a test's own files
        if not any(exists(p) for p in expand(token)) and not is_external(text, m.start()):
            yield f"{path}: {token}"
    for m in SECTION.finditer(text):
        target = markdown_file(m.group(1), path)
        if not target or not any(m.group(2).lower() == h.lower() for h in headings(target)):
            yield f"{path}: {m.group(1)}, \"{m.group(2)}\""
    for m in NEAR.finditer(text):
        if path.endswith(".md") and not any(m.group(1).lower() == h.lower() for h in headings(path)):
            yield f"{path}: \"{m.group(1)}\" {m.group(2)}"
    for m in BARE_MD.finditer(text):
        if not markdown_file(m.group(1), path) and not is_external(text, m.start()):
            yield f"{path}: {m.group(1)}"
    if path.endswith(".md"):
        for m in LINK.finditer(text):
            target, _, anchor = m.group(1).partition("#")
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
            if not os.path.exists(os.path.join(ROOT, file)):
                yield f"{path}: link {m.group(1)}"
            elif anchor and file.endswith(".md") and anchor not in {slug(h) for h in headings(file)}:
                yield f"{path}: anchor {m.group(1)}"
    if path.endswith(".yaml"):
        for m in re.finditer(r"(?<![\w/.*-])([\w-]+\.yaml)\b", text):
            if not exists(os.path.join(os.path.dirname(path), m.group(1))) and not is_external(text, m.start()):
                yield f"{path}: {m.group(1)}"


@pytest.mark.parametrize("path", DOCS + CONFIGS)
def test_references_resolve_in_the_repository(path):
    assert list(unresolved(path)) == []


# The design and style notes beside a developer's checkout are not part of the repository: no file
# may send a reader to them (this file and test_config_sources.py name them to test for them).
OUTSIDE = re.compile(r"\b(DESIGN|STYLE)\.md\b|\.\./shared\b|\bshared/(papers|tools|data)\b")


def tracked_files():
    """git's list of the repository's files; in a copy without .git, its source and text files
    outside hidden folders (.venv, .git) and run outputs (datasets under data/ are not text)."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0:
        return listed.stdout.split()
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "runs"]
        files += [os.path.relpath(os.path.join(folder, n), ROOT) for n in names
                  if n.endswith((".py", ".sh", ".md", ".yaml", ".toml", ".ini", ".txt"))]
    return files


def test_no_file_cites_notes_outside_the_repository():
    found = []
    for path in tracked_files():
        if path in ("tests/test_references.py", "tests/test_config_sources.py"):
            continue
        try:
            text = open(os.path.join(ROOT, path), encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue                                   # binary or unreadable: not prose
        found += [f"{path}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
    assert found == []


def test_the_checker_finds_what_it_is_for(tmp_path, monkeypatch):
    """A dangling file, section, link and bare markdown name are found; a cited repository's file is not."""
    doc = tmp_path / "docs" / "x.md"
    doc.parent.mkdir()
    doc.write_text('# Title\n\nSee DESIGN.md section 4, README, "Differences", configs/nope.yaml and\n'
                   '[a](missing.md); github.com/scongl/Focal-SAM scripts/cifar.sh is theirs; "Title" above.\n')
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    (tmp_path / "README.md").write_text("# Readme\n")
    found = sorted(unresolved("docs/x.md"))
    assert found == sorted(['docs/x.md: configs/nope.yaml', 'docs/x.md: README, "Differences"', "docs/x.md: DESIGN.md",
                            "docs/x.md: link missing.md"])
