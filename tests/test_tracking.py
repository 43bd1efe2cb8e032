"""train.loggers: TensorBoard, CSV and Weights & Biases (engine/tracking.py). W&B runs in its
offline mode (no network, no account); the test reads back what it wrote: the run's transaction
log (<run>/wandb/offline-run-*/run-<id>.wandb, W&B's protobuf records in LevelDB's log format)
and the per-class table file, and compares them with the run's own files."""
import glob
import json
import os
import sys
import time

import pytest

import engine.trainer as trainer
from conftest import interrupt_in_epoch
from core.errors import UserError
from engine import tracking
from engine.config import config_to_dict, load_config

pytestmark = pytest.mark.usefixtures("single_thread")
BLOCK = 32 * 1024   # LevelDB log: records in 32 KiB blocks, each with a 7-byte header


def wandb_records(path: str) -> list:
    """The records of a .wandb file: a 7-byte file header (':W&B', magic, version), then records
    of [crc32c (4), length (2, little-endian), kind (1: whole, 2: first, 3: middle, 4: last part)]
    + payload, never across a block's last < 7 bytes (zero padding)."""
    from wandb.proto import wandb_internal_pb2 as pb
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B"
    pos, payloads, part = 7, [], b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        body, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            part = body
        elif kind in (3, 4):
            part += body
        if kind in (1, 4):
            payloads.append(part)
    records = []
    for payload in payloads:
        record = pb.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(folder: str) -> dict:
    """What one offline W&B run holds: {'run': RunRecord, 'config': {...}, 'history': [{...}],
    'summary': {...}, 'exit_code': int}."""
    (log,) = glob.glob(os.path.join(folder, "run-*.wandb"))
    out = {"history": [], "summary": {}, "config": {}, "exit_code": None}
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            out["config"] = {u.key: json.loads(u.value_json) for u in record.run.config.update if u.key != "_wandb"}
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            out["summary"].update({_key(u): json.loads(u.value_json) for u in record.summary.update})
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)


def test_loggers_choose_the_files(tiny_config, tmp_path):
    """metrics.jsonl always; summary.csv with csv, tb/ with tensorboard (both: the default)."""
    for loggers, csv, tb in ((["csv"], True, False), (["tensorboard"], False, True)):
        cfg = load_config(tiny_config(), ["train.epochs=1", f"train.loggers={loggers}"])
        out = tmp_path / loggers[0]
        trainer.fit(cfg, str(out))
        assert (out / "metrics.jsonl").is_file() and (out / "summary.csv").exists() == csv and (out / "tb").exists() == tb
    assert load_config(tiny_config()).train.loggers == ("tensorboard", "csv")


def test_wandb_logs_config_epochs_report_and_resume_continues_the_run(tiny_config, tmp_path, monkeypatch, offline):
    """A 3-epoch run stopped in epoch 3 and resumed: one W&B id (kept in wandb.json) for both
    attempts; the first logged epochs 1-2 and ended failed, the second epoch 3 and the report."""
    cfg = load_config(tiny_config(), ["train.epochs=3", "train.loggers=[wandb]", "train.wandb_group=cell"])
    out = tmp_path / "cut"
    real = interrupt_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(cfg, str(out))
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    (started,) = glob.glob(str(out / "wandb" / "offline-run-*"))
    while time.strftime("%Y%m%d_%H%M%S") <= started.split("-")[-2]:   # W&B names a run's folder by
        time.sleep(0.05)                                              # its second: let the clock pass it
    final = trainer.fit(load_config(str(out / "config.yaml")), str(out), resume=True)

    import wandb
    wandb.teardown()   # W&B's service writes the offline log after finish() returns: wait for it
    run_id = json.loads((out / "wandb.json").read_text())["id"]
    first, second = [read_offline_run(d) for d in sorted(glob.glob(str(out / "wandb" / f"offline-run-*-{run_id}")))]
    assert not (out / "tb").exists() and not (out / "summary.csv").exists()
    for attempt in (first, second):
        assert attempt["run"].run_id == run_id and attempt["run"].run_group == "cell"
        assert attempt["run"].display_name == "cell/cut" and attempt["run"].project == "lt-sam"
        assert attempt["config"] == config_to_dict(cfg)
    assert first["exit_code"] != 0 and second["exit_code"] == 0
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    logged = first["history"] + second["history"]
    assert [h["_step"] for h in logged if "train_loss" in h] == [0, 1, 2]
    for row, h in zip(metrics, [h for h in logged if "train_loss" in h]):
        assert {k: h[k] for k in ("lr", "train_loss", "train_acc", "top1", "head", "tail")} == \
            {k: row[k] for k in ("lr", "train_loss", "train_acc", "top1", "head", "tail")}
    for key in ("top1", "head", "medium", "tail", "ece"):
        assert second["summary"][f"final/{key}"] == final[key], key
    (table_file,) = glob.glob(str(out / "wandb" / "offline-run-*" / "files" / "media" / "**" / "*.table.json"),
                              recursive=True)
    table = json.loads(open(table_file).read())
    assert table["columns"] == ["class", "name", "train_images", "accuracy"]
    assert table["data"] == [[k, final["class_names"][k], n, a] for k, (n, a) in
                             enumerate(zip(final["class_counts"], final["per_class_acc"]))]


def test_wandb_missing_is_one_line(tiny_config, tmp_path, monkeypatch, capsys):
    """Imported only when chosen: without wandb a default run trains, a wandb run stops first."""
    monkeypatch.setitem(sys.modules, "wandb", None)   # `import wandb` raises ImportError
    import train
    with pytest.raises(SystemExit) as stop:
        train.main(["--config", tiny_config(), "--out", str(tmp_path / "w"), "--set", "train.loggers=[csv,wandb]"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "pip install wandb" in err, err
    assert not (tmp_path / "w" / "config.yaml").exists()    # stopped before any work
    trainer.fit(load_config(tiny_config(), ["train.epochs=1"]), str(tmp_path / "plain"))


def test_a_wandb_run_id_of_another_run_is_refused(tiny_config, tmp_path, monkeypatch, offline, capsys):
    out = tmp_path / "r"
    trainer.fit(load_config(tiny_config(), ["train.epochs=1", "train.loggers=[wandb]"]), str(out))
    stored = json.loads((out / "wandb.json").read_text())["id"]
    monkeypatch.setenv("WANDB_RUN_ID", "other1")
    import train
    with pytest.raises(SystemExit) as stop:
        train.main(["--resume", str(out)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: WANDB_RUN_ID=other1 does not belong to") and f"logs to W&B run {stored}" in err
    monkeypatch.setenv("WANDB_RUN_ID", stored)      # its own id is fine
    assert tracking.choose_id(str(out), 1) == stored
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    with pytest.raises(UserError, match="2 seeds train together"):
        tracking.choose_id(str(tmp_path / "new"), 2)
    assert tracking.choose_id(str(tmp_path / "new"), 1) == "abc123"
    (out / "wandb.json").write_text("{not json")
    with pytest.raises(UserError, match="wandb.json is damaged"):
        tracking.choose_id(str(out), 1)


def test_wandb_keys_without_wandb_are_refused(tiny_config):
    with pytest.raises(UserError, match="train.wandb_group: is read only with wandb"):
        load_config(tiny_config(), ["train.wandb_group=g"])
    with pytest.raises(UserError, match="names a logger twice"):
        load_config(tiny_config(), ["train.loggers=[csv,csv]"])


def test_seeds_trained_together_log_to_one_wandb_run_each(tiny_config, tmp_path, offline):
    cfgs = [load_config(tiny_config(), [f"seed={s}", "train.epochs=1", "train.loggers=[wandb]"]) for s in (0, 1)]
    finals = trainer.fit_members(cfgs, [str(tmp_path / f"s{s}") for s in (0, 1)])
    import wandb
    wandb.teardown()
    ids = [json.loads((tmp_path / f"s{s}" / "wandb.json").read_text())["id"] for s in (0, 1)]
    assert ids[0] != ids[1]
    for s, (run_id, final) in enumerate(zip(ids, finals)):
        (folder,) = glob.glob(str(tmp_path / f"s{s}" / "wandb" / f"offline-run-*-{run_id}"))
        logged = read_offline_run(folder)
        assert logged["config"]["seed"] == s and logged["run"].display_name == f"s{s}"
        assert logged["summary"]["final/top1"] == final["top1"]
