"""Issue 16: report_to wandb works with no account and no network (offline mode): a run writes its
offline wandb run into RUN_DIR/wandb, and the logged loss is in its .wandb file, read back as
wandb's own protobuf records. A second run in the same process gets a wandb run of its own."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from core.config import RunConfig
from core.engine import prepare_run, run_training
from core.events import EventLog

# wandb's transaction log (the .wandb file): a 7-byte file header, then 32 KiB blocks of chunks,
# each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last). wandb 0.31
# reads it only in its Go core, so the few lines of framing are here; the records are its protobuf.
BLOCK, HEADER = 32768, 7


def wandb_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic) == (b":W&B", 0xBEE1) and version in (0, 1), (ident, magic, version)
    records, pos, parts = [], HEADER, b""
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # the block's tail is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
    return records


def logged(path: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of ``key`` in the history records of a .wandb file."""
    import json

    out = []
    for record in wandb_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
        if key in items:
            out.append((int(items.get("train/global_step", items.get("_step", -1))), float(items[key])))
    return out


def test_wandb_offline_run_holds_the_logged_loss(store, small_alpaca, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    # Should anything try the network, it meets a closed local port instead of the internet.
    for name in ("WANDB_BASE_URL", "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    import core.trackers as trackers

    monkeypatch.setattr(trackers, "_USER_WANDB_DIR", None)
    base = dict(model="demo", dataset=str(small_alpaca), max_steps=3, batch_size=2, max_length=64, logging_steps=1,
                validation_split=0.0, save_steps=50, report_to="wandb")
    dirs = []
    for name in ("wandb-one", "wandb-two"):
        config, run_id, run_dir = prepare_run(RunConfig(name=name, **base), store)
        result = run_training(config, store, EventLog(run_id), run_id, run_dir)
        assert result.status == "completed", result.error
        dirs.append(run_dir)
    for run_dir in dirs:
        offline = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(offline) == 1, f"one offline wandb run per ModelForge run: {offline}"
        losses = logged(offline[0], "train/loss")
        ours = [(p.step, p.value) for p in store.metrics(run_dir.name) if p.name == "loss"]
        assert [s for s, _ in losses] == [1, 2, 3]
        assert [round(v, 4) for _, v in losses] == [round(v, 4) for _, v in ours]  # the same loss as ours
