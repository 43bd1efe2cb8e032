"""The structure promised in the README's "Layout" and "Extending": libraries that
import nothing of the engine, one source of option defaults, a new component in one file."""
import ast
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from engine.config import load_config, options_table
from optim import RandomSAM
from reference import MLP, params_of, per_sample_ce

LIBRARIES = ("optim", "losses", "models", "data", "core")


def imported_modules(path):
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


@pytest.mark.parametrize("package", LIBRARIES)
def test_libraries_import_nothing_of_the_engine(package):
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                bad = [m for m in imported_modules(path) if m == "engine" or m.startswith("engine.")]
                assert not bad, f"{os.path.relpath(path, ROOT)} imports {bad}"


def test_importing_optim_loads_no_engine_or_data_module():
    code = ("import sys, optim, losses, models; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('engine', 'data', 'repro')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_readme_option_table_is_generated_from_the_options_classes():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"<!-- options-table -->\n(.*?)\n<!-- /options-table -->", text, re.S)
    assert block and block.group(1) == options_table(), "run python scripts/options_table.py"


def test_readme_extending_example_is_the_shipped_file_and_its_registry_line():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"<!-- readme-example: extending -->\s*```python\n(.*?)```", text, re.S).group(1)
    assert block == open(os.path.join(ROOT, "optim", "random_sam.py")).read()
    line = '"random_sam": Component(_optimizer(RandomSAM), RandomSAMOptions),'
    assert line in text and line in open(os.path.join(ROOT, "optim", "__init__.py")).read()
    from optim import RandomSAM, optimizer_class
    assert optimizer_class("random_sam") is RandomSAM


def test_the_example_optimizer_runs_from_a_config_and_validates_its_keys(tmp_path):
    cfg = load_config(os.path.join(ROOT, "configs", "smoke.yaml"),
                      ["optim.name=random_sam", "~optim.gamma", "~optim.lam", "optim.seed=3"])
    assert cfg.optim.seed == 3 and cfg.optim.rho == 0.05
    from core.errors import ConfigError
    with pytest.raises(ConfigError, match="optim.gamma: is not used by optimizer 'random_sam'"):
        load_config(os.path.join(ROOT, "configs", "smoke.yaml"), ["optim.name=random_sam"])


def test_random_sam_gradient_is_the_gradient_at_a_random_point_of_radius_rho():
    torch.manual_seed(0)
    model = MLP().double()
    w0 = params_of(model)
    x, y = torch.randn(10, 6, dtype=torch.float64), torch.randint(0, 4, (10,))
    opt = RandomSAM(model.parameters(), lr=0.5, rho=0.3, seed=7)
    names = [n for n, _ in model.named_parameters()]
    eps = dict(zip(names, opt.random_direction([p for _, p in model.named_parameters()], [0.3] * len(names))))
    assert torch.sqrt(sum((e ** 2).sum() for e in eps.values())).item() == pytest.approx(0.3)
    # Independently: the loss gradient at w0 + eps, then one plain SGD step from w0.
    moved = {n: (w0[n] + eps[n]).requires_grad_(True) for n in names}
    loss = per_sample_ce(torch.func.functional_call(model, moved, (x,)), y).mean()
    grads = torch.autograd.grad(loss, [moved[n] for n in names])
    opt.step(model, x, y, per_sample_ce)
    for n, g in zip(names, grads):
        torch.testing.assert_close(dict(model.named_parameters())[n].detach(), w0[n] - 0.5 * g, rtol=0, atol=1e-12)
    state = opt.state_dict()
    assert state["steps"] == 1
    again = RandomSAM(MLP().double().parameters(), lr=0.5, rho=0.3, seed=7)
    again.load_state_dict(state)
    assert again.steps == 1          # the next direction after a resume is the uninterrupted run's
