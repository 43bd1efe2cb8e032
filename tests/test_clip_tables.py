"""repro/tables_foundation.yaml (the foundation-model rows with the paper's numbers) and
scripts/ood_tables.py (Tables 4 and 7 from the runs' ood.json files)."""
import json
import os

import pytest
import yaml

import ood_tables
from conftest import ROOT
from repro import spec

SPEC = os.path.join(ROOT, "repro", "tables_foundation.yaml")


@pytest.fixture(scope="module")
def doc():
    with open(SPEC) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def tables():
    return spec.load_tables(SPEC)


def test_every_run_has_a_config_and_the_30_epoch_rows_run_30_epochs(tables):
    for table in tables.values():
        for row, group, run in spec.plan_runs(table, [0]):
            assert os.path.isfile(os.path.join(ROOT, run.config)), run.config
            assert run.config.startswith("configs/clip/") and run.procs == 1
            if row.epochs == 30:
                assert run.config.endswith("_sam_30ep.yaml") and spec.read_config_info(run.config).epochs == 30
    assert len(spec.unique_runs(spec.plan_runs(tables["2F"], [0]))) == 40


def paper(tables, tid, row_name, group):
    table = tables[tid]
    row = next(r for r in table.rows if r.name == row_name)
    return row.paper[group]


def test_the_papers_repeated_numbers_agree(tables):
    """Tables 8 and 9 repeat the 20-epoch Focal-SAM rows of Tables 2 and 3."""
    for mode in ("FFT", "LIFT"):
        for group in ("IF100", "IF200", "IF50", "IF10"):
            assert paper(tables, "8F", f"{mode} + Focal-SAM (20 epochs)", group)[-1] == \
                paper(tables, "2F", f"{mode} + Focal-SAM", group)[-1]
        assert paper(tables, "9F", f"{mode} + Focal-SAM (20 epochs)", "ImageNet-LT") == \
            paper(tables, "3F", f"{mode} + Focal-SAM", "ImageNet-LT")


def test_table7_mce_is_the_mean_of_its_fifteen_ce(doc):
    rows = doc["ood_tables"]["7"]["rows"]
    assert len(rows) == 10 and doc["ood_tables"]["7"]["metrics"][1:] == ["motion_blur", "defocus_blur", "glass_blur",
        "zoom_blur", "gaussian_noise", "impulse_noise", "shot_noise", "contrast", "elastic_transform",
        "jpeg_compression", "pixelate", "brightness", "snow", "fog", "frost"]
    for row in rows:
        mce, ces = row["paper"][0], row["paper"][1:]
        assert len(ces) == 15 and abs(mce - sum(ces) / 15) <= 0.1, row["name"]   # both rounded to 0.1


def test_ood_rows_are_the_imagenet_lt_runs(doc, tables):
    for tid in ("4", "7"):
        t = doc["ood_tables"][tid]
        configs = [r.config for r in tables["3F"].rows]
        assert [r["config"] for r in t["rows"]] == configs
        assert ood_tables.run_folders(doc, tables, tid, "lift_sam", [0, 2]) == \
            ["imagenet_lt/lift_sam/seed0", "imagenet_lt/lift_sam/seed2"]
    for row in doc["ood_tables"]["4"]["rows"]:
        assert all(len(row["paper"][s]) == 4 for s in doc["ood_tables"]["4"]["sets"])


def write_ood(root, config, seed, sketch_top1, mce):
    folder = root / "imagenet_lt" / config / f"seed{seed}"
    folder.mkdir(parents=True)
    report = {"imagenet_sketch": {"top1": sketch_top1, "head": 50.0, "medium": None, "tail": 10.0},
              "imagenet_c": {"mce": mce, "ce": {"fog": 60.0}}}
    (folder / "ood.json").write_text(json.dumps(report))


def test_tables_4_and_7_from_ood_json(tmp_path, doc, tables, capsys):
    write_ood(tmp_path, "fft_sgd", 0, 40.0, 70.0)
    write_ood(tmp_path, "fft_sgd", 1, 44.0, 74.0)
    assert ood_tables.main(["--no-eval", "--out-root", str(tmp_path), "--seeds", "0 1"]) == 0
    t4 = (tmp_path / "report" / "table4.md").read_text()
    t7 = (tmp_path / "report" / "table7.md").read_text()
    # Sketch All: mean 42, sample std sqrt(8) = 2.83, paper 36.4; mCE: 72 ± 2.83 against 72.6.
    fft4 = next(l for l in t4.splitlines() if l.startswith("| FFT |"))
    assert "42.00 ± 2.83 / 36.4 (+5.60)" in fft4 and "n/a / 35.5" in fft4 and "missing" not in fft4
    assert fft4.endswith("| 2/2 |")
    fft7 = next(l for l in t7.splitlines() if l.startswith("| FFT |"))
    assert fft7.split(" | ")[1] == "72.00 ± 2.83 / 72.6 (-0.60)" and "60.00 ± 0.00 / 65.7 (-5.70)" in fft7
    assert "| LIFT | missing / 46.4" in t4


def test_an_unwritable_report_folder_is_refused_before_any_evaluation(tmp_path, monkeypatch, capsys):
    """The report folder is checked first: a typo must not cost an evaluation of every run, nor a
    traceback at the end."""
    (tmp_path / "report").write_text("a file where the folder goes")
    finished = tmp_path / "imagenet_lt" / "fft_sgd" / "seed0"
    finished.mkdir(parents=True)
    (finished / "final.json").write_text("{}")      # a finished run without ood.json: it would be evaluated
    monkeypatch.setattr(ood_tables, "evaluate",
                        lambda *a: pytest.fail("evaluated before the report folder was checked"))
    with pytest.raises(SystemExit) as e:
        ood_tables.main(["--out-root", str(tmp_path), "--sketch", str(tmp_path), "--seeds", "0"])
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert e.value.code == 2 and len(err) == 1 and f"{tmp_path / 'report'} (--out-root) is a file" in err[0], err
