"""The entry points and every script run from a plain checkout, without `pip install -e .`: a lent
GPU machine has torch but cannot install anything, and the GPU command runs the scripts there.

One subprocess with the editable install hidden (`python -S`: no site-packages .pth files, so the
editable finder is not installed; the environment's site-packages are given through PYTHONPATH,
so torch and the other dependencies stay importable) runs each entry point and script the way
`python <file> --help` would: the file's own folder first on the import path, no project module
already imported. CLIP's library is blocked, as on the GPU machine, which has no open_clip.
"""
import os
import site
import subprocess
import sys

from conftest import ROOT

ENTRY_POINTS = ["train.py", "eval.py", "analyze.py"] + sorted(
    os.path.join("scripts", f) for f in os.listdir(os.path.join(ROOT, "scripts"))
    if f.endswith(".py") and not f.startswith("_"))
PACKAGES = ("core", "data", "engine", "losses", "models", "optim", "repro", "analysis")

DRIVER = r"""
import importlib.abc, os, runpy, sys
root, files = sys.argv[1], sys.argv[2:]

class NoOpenClip(importlib.abc.MetaPathFinder):       # as on the GPU machine
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "open_clip":
            raise ModuleNotFoundError("No module named 'open_clip' (blocked by the test)")

sys.meta_path.insert(0, NoOpenClip())
base_path, base_modules = list(sys.path), set(sys.modules)
try:
    import core
    print("FAIL: the project imports without its folder on the path: the editable install is not hidden")
except ModuleNotFoundError:
    pass
for rel in files:
    path = os.path.join(root, rel)
    sys.path[:] = [os.path.dirname(path)] + base_path
    for name in set(sys.modules) - base_modules:
        if name.split(".")[0] in PACKAGES or name in ("_root", "__main__"):
            del sys.modules[name]
    sys.argv = [path, "--help"]
    try:
        runpy.run_path(path, run_name="__main__")
        print("FAIL", rel, "printed no help")
    except SystemExit as e:
        print(("ok " if e.code in (0, None) else f"FAIL exit {e.code} ") + rel)
    except BaseException as e:
        print("FAIL", rel, type(e).__name__, str(e).splitlines()[0][:200])
"""


def test_every_entry_point_runs_without_the_editable_install(tmp_path):
    site_dirs = [d for d in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(d)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(site_dirs)
    driver = DRIVER.replace("PACKAGES", repr(PACKAGES))
    proc = subprocess.run([sys.executable, "-S", "-c", driver, ROOT, *ENTRY_POINTS], cwd=str(tmp_path),
                          capture_output=True, text=True, env=env, timeout=600)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(("ok ", "FAIL"))]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [l for l in lines if l.startswith("FAIL")] == [], "\n".join(lines) + proc.stderr[-2000:]
    assert len(lines) == len(ENTRY_POINTS), proc.stdout[-3000:]
