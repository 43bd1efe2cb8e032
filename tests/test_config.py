"""Config loading: inheritance, typed overrides, and every validation error (one line, key path)."""
import pytest
import yaml

from engine.config import Config, config_to_dict, load_config, save_config
from core.errors import ConfigError


def write(path, tree):
    path.write_text(yaml.safe_dump(tree) if isinstance(tree, dict) else tree)
    return str(path)


@pytest.fixture
def base(tmp_path):
    (tmp_path / "_base").mkdir()
    write(tmp_path / "_base" / "a.yaml", {"data": {"name": "synthetic", "num_classes": 5},
                                          "optim": {"lr": 0.2, "weight_decay": "2e-4"}, "train": {"epochs": 10}})
    write(tmp_path / "_base" / "b.yaml", {"optim": {"lr": 0.3, "momentum": 0.5}})
    return tmp_path


def test_inherit_merges_in_order_and_child_wins(base):
    child = write(base / "row.yaml", {"inherit": ["_base/a.yaml", "_base/b.yaml"],
                                      "optim": {"name": "sam", "rho": 0.1}, "train": {"batch_size": 8}})
    cfg = load_config(child)
    assert cfg.optim.lr == 0.3              # b overrides a
    assert cfg.optim.momentum == 0.5
    assert cfg.optim.weight_decay == 2e-4   # "2e-4" is a string in YAML 1.1: typed by the schema
    assert cfg.optim.name == "sam" and cfg.optim.rho == 0.1
    assert cfg.data.num_classes == 5 and cfg.train.epochs == 10 and cfg.train.batch_size == 8
    assert cfg.loss == Config().loss        # untouched sections keep the schema defaults


def test_inherit_single_string_and_nested(base):
    mid = write(base / "mid.yaml", {"inherit": "_base/a.yaml", "seed": 3})
    top = write(base / "top.yaml", {"inherit": "mid.yaml", "seed": 4})
    cfg = load_config(top)
    assert cfg.seed == 4 and cfg.optim.lr == 0.2
    assert load_config(mid).seed == 3


def test_overrides_are_typed(base):
    path = write(base / "row.yaml", {"inherit": "_base/a.yaml"})
    cfg = load_config(path, ["optim.lr=1e-3", "train.epochs=7", "train.max_steps_per_epoch=2",
                             "optim.name=focal_sam", "optim.rho_milestones=[[3, 0.2], [6, 0.4]]",
                             "train.amp=bf16", "data.augment=false"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 7 and cfg.train.max_steps_per_epoch == 2
    assert cfg.optim.rho_milestones == ((3, 0.2), (6, 0.4))
    assert cfg.train.amp == "bf16" and cfg.data.augment is False
    assert load_config(path, ["train.max_steps_per_epoch=null"]).train.max_steps_per_epoch is None
    # YAML 1.1 reads off / on as booleans: a word-valued option still gets its word.
    assert load_config(path, ["train.progress=off"]).train.progress == "off"
    assert load_config(path, ["train.progress=on"]).train.progress == "on"


def test_tilde_removes_a_key_so_that_a_swapped_component_validates(base):
    path = write(base / "row.yaml", {"inherit": "_base/a.yaml",
                                     "data": {"name": "imagenet_lt", "train_list": "t.txt", "num_classes": 5}})
    with pytest.raises(ConfigError, match="data.train_list: is not used by dataset 'synthetic'"):
        load_config(path, ["data.name=synthetic"])
    cfg = load_config(path, ["data.name=synthetic", "~data.train_list", "~data.test_list"])  # absent: no-op
    assert cfg.data.name == "synthetic" and cfg.data.num_classes == 5
    assert not hasattr(cfg.data, "train_list")   # the synthetic options have no such key: nothing left over
    assert load_config(path, ["~optim.lr"]).optim.lr == Config().optim.lr     # back to the default
    with pytest.raises(ConfigError, match="names no section"):
        load_config(path, ["~nosuch.key"])
    with pytest.raises(ConfigError, match="expected ~KEY"):
        load_config(path, ["~optim.lr=0.1"])


def test_saved_config_reloads_identically(base, tmp_path):
    path = write(base / "row.yaml", {"inherit": "_base/a.yaml", "optim": {"name": "imbsam", "eta": 20}})
    cfg = load_config(path)
    save_config(cfg, str(tmp_path / "resolved.yaml"))
    again = load_config(str(tmp_path / "resolved.yaml"))
    assert again == cfg
    assert "gamma" not in config_to_dict(cfg)["optim"]  # options of other optimizers are left out


@pytest.mark.parametrize("overrides, path, fragment", [
    (["optim.rhoo=0.1"], "optim.rhoo", "did you mean 'rho'"),
    (["trian.epochs=3"], "trian", "did you mean 'train'"),
    (["optim.lr=fast"], "optim.lr", "expected float, got 'fast'"),
    (["train.epochs=2.5"], "train.epochs", "expected int"),
    (["train.amp=fp8"], "train.amp", "one of 'none', 'bf16', 'fp16'"),
    (["data.augment=3"], "data.augment", "expected bool"),
    (["loss.name=focall"], "loss.name", "unknown loss 'focall'"),
    (["optim.name=focal_sma"], "optim.name", "did you mean 'focal_sam'"),
    (["model.name=resnet33"], "model.name", "choose one of"),
    (["data.name=cifar"], "data.name", "unknown dataset"),
    (["optim.name=sam", "optim.eta=20"], "optim.eta", "not used by optimizer 'sam' (used by: imbsam, sse_sam)"),
    (["loss.name=ce", "loss.tau=2"], "loss.tau", "not used by loss 'ce'"),
    (["loss.drw_epoch=10"], "loss.drw_epoch", "outside the run's epochs 0..9"),
    (["optim.name=sam", "optim.rho_milestones=[[6, 0.2], [4, 0.3]]"], "optim.rho_milestones[1]", "increasing"),
    (["optim.name=sam", "optim.rho_milestones=[[20, 0.2]]"], "optim.rho_milestones[0]", "< epochs=10"),
    (["optim.name=sam", "optim.rho_milestones=[[2]]"], "optim.rho_milestones[0]", "list of 2 values"),
    (["data.head_threshold=5", "data.tail_threshold=10"], "data.head_threshold", "below"),
    (["train.batch_size=0"], "train.batch_size", "must be >= 1"),
    (["optim"], "--set", "expected KEY=VALUE"),
])
def test_validation_errors_name_the_key(base, overrides, path, fragment):
    cfg_path = write(base / "row.yaml", {"inherit": "_base/a.yaml"})
    with pytest.raises(ConfigError) as e:
        load_config(cfg_path, overrides)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"config error: {path}:"), msg
    assert fragment in msg, msg


def test_file_level_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path / "bad.yaml", "data: [unclosed"))
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(write(tmp_path / "list.yaml", "- a\n- b\n"))
    write(tmp_path / "x.yaml", {"inherit": "y.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(write(tmp_path / "y.yaml", {"inherit": "x.yaml"}))
    with pytest.raises(ConfigError, match=r"data: expected a section"):
        load_config(write(tmp_path / "flat.yaml", {"data": 3}))
