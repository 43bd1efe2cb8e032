"""scripts/figures.py: Figure 3 from class counts, the Hessian / landscape figures from given runs
(with reuse of finished analyses), the ablation sweep's plan and plot."""
import csv
import json

import numpy as np
import pytest

import figures


pytestmark = pytest.mark.usefixtures("single_thread")


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_focal_weights_figure_from_class_counts(tmp_path):
    figures.main(["focal-weights", "--datasets", "cifar10_lt", "cifar100_lt", "--gammas", "1", "3", "--out", str(tmp_path)])
    with open(tmp_path / "fig3_focal_weights.json") as f:
        doc = json.load(f)
    for name, n_max, classes in (("cifar10_lt", 5000, 10), ("cifar100_lt", 500, 100)):
        counts = [int(n_max * 0.01 ** (k / (classes - 1))) for k in range(classes)]   # IF 100 profile
        assert doc[name]["class_counts"] == counts
        pi = np.asarray(counts) / sum(counts)
        for gamma in (1.0, 3.0):
            np.testing.assert_allclose(doc[name]["weights"][str(gamma)], (1 - pi) ** gamma, rtol=1e-12)
    assert len(read_csv(tmp_path / "fig3_focal_weights.csv")) == 2 * (10 + 100)
    assert (tmp_path / "fig3_focal_weights.png").stat().st_size > 10_000


def test_spectra_figure_from_given_runs_reuses_finished_analyses(tiny_run, tmp_path, capsys):
    argv = ["spectra", "--figure", "2", "--run", f"A={tiny_run}", "--run", f"B={tiny_run}", "--out", str(tmp_path),
            "--samples", "10", "--power-iters", "2", "--trace-samples", "2", "--slq-steps", "3", "--progress", "off",
            "--device", "cpu"]
    figures.main(argv)
    rows = read_csv(tmp_path / "fig2_hessian.csv")
    assert [(r["method"], r["group"]) for r in rows] == [("A", "head"), ("B", "head"), ("A", "tail"), ("B", "tail")]
    with open(tmp_path / "A" / "hessian.json") as f:
        a = json.load(f)
    assert float(rows[0]["lambda_max"]) == a["groups"][0]["lambda_max"]
    assert rows[0]["lambda_max"] == rows[1]["lambda_max"]          # the same run, the same seed
    assert (tmp_path / "fig2_hessian.png").stat().st_size > 10_000
    capsys.readouterr()
    figures.main(argv)                                              # same settings: reused, not recomputed
    assert capsys.readouterr().out.count("reusing") == 2
    figures.main(argv[:-4] + ["--seed", "1", "--progress", "off", "--device", "cpu"])
    assert "reusing" not in capsys.readouterr().out


def test_landscape_figure_from_given_runs(tiny_run, tmp_path):
    figures.main(["landscapes", "--figure", "7", "--run", f"Focal-SAM={tiny_run}", "--out", str(tmp_path),
                  "--samples", "10", "--points-1d", "3", "--points-2d", "3", "--progress", "off", "--device", "cpu"])
    rows = read_csv(tmp_path / "fig7_landscape.csv")
    assert [(r["method"], r["group"]) for r in rows] == [("Focal-SAM", "head"), ("Focal-SAM", "tail")]
    for view in ("surface", "contour", "line"):
        assert (tmp_path / f"fig7_landscape_{view}.png").stat().st_size > 10_000


def test_spectra_without_table_runs_names_them_and_the_script(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        figures.main(["spectra", "--figure", "9", "--out-root", str(tmp_path / "none"), "--out", str(tmp_path / "f")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cifar100_lt/vs_imbsam/if100/seed0" in err[0] and "table6_cifar100_lt.sh" in err[0]


def test_ablation_plan_and_plot(tmp_path, capsys):
    root = tmp_path / "runs"
    base = ["ablation", "--figure", "4", "--dataset", "cifar10_lt", "--values", "1", "2", "--seeds", "0 1",
            "--out-root", str(root)]
    figures.main(base + ["--dry-run"])
    out = capsys.readouterr().out
    assert "6 runs" in out                        # gamma 1, 2 and the config's 3.0, two seeds each
    assert "optim.gamma=3.0" in out and "ablation/cifar10_lt/la_focal_sam/gamma3/seed1" in out
    # Finished runs as the trainer leaves them (final.json); one seed of gamma 2 missing.
    done = {("gamma1", 0): 70.0, ("gamma1", 1): 72.0, ("gamma2", 0): 75.0, ("gamma3", 0): 77.0, ("gamma3", 1): 78.0}
    for (v, s), top1 in done.items():
        folder = root / "ablation" / "cifar10_lt" / "la_focal_sam" / v / f"seed{s}"
        folder.mkdir(parents=True)
        (folder / "final.json").write_text(json.dumps({"top1": top1, "head": 90.0, "medium": 70.0, "tail": top1 - 20}))
    figures.main(base + ["--plot-only", "--out", str(tmp_path / "fig")])
    rows = read_csv(tmp_path / "fig" / "fig4_gamma.csv")
    assert [float(r["value"]) for r in rows] == [1.0, 2.0, 3.0]
    assert [r["paper_setting"] for r in rows] == ["False", "False", "True"]
    assert [int(r["seeds_done"]) for r in rows] == [2, 1, 2]
    assert float(rows[0]["top1_mean"]) == pytest.approx(71.0) and float(rows[0]["top1_std"]) == pytest.approx(2 ** 0.5)
    assert rows[1]["top1_std"] == "" and float(rows[2]["tail_mean"]) == pytest.approx(57.5)
    assert (tmp_path / "fig" / "fig4_gamma.png").stat().st_size > 10_000
