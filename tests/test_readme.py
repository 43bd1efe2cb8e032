"""The README's promises: its library example runs, and CI runs exactly its test command."""
import os
import re

from conftest import ROOT


def readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_library_example_runs():
    text = readme()
    block = re.search(r"<!-- readme-example: library -->\s*```python\n(.*?)```", text, re.S)
    assert block, "the library example is marked in the README"
    scope = {}
    exec(compile(block.group(1), "README example", "exec"), scope)
    assert scope["loss"].ndim == 0 and scope["logits"].shape == (16, 4)
    assert scope["opt"].param_groups[0]["lr"] < 0.1            # the scheduler stepped
    assert "base" in scope["state"]


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(python -m pytest[^\n]*)\n```", readme())
    assert commands == ["python -m pytest"]
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        lines = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    assert lines[-1] == commands[0]
