"""DDP pretraining under torchrun: two CPU processes (gloo) complete, agree on the weights, and split
every global batch between them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slim.data.dataset import BatchPlan
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

STEPS, BATCH = 4, 8

# Runs on every rank: the real loop, with each batch the rank's loader hands it recorded on the way.
DRIVER = textwrap.dedent(
    """
    import json, os, sys
    from slim.data import dataset
    from slim.train import TrainConfig, pretrain

    parquet, split_path, out = sys.argv[1:4]
    seen = {}
    original = dataset.StepBatches.__getitem__

    def recording(self, step):
        batch = original(self, step)
        seen[step] = batch.rows.tolist()
        return batch

    dataset.StepBatches.__getitem__ = recording
    data = dataset.load_training_clips(parquet, json.load(open(split_path))["train"])
    config = TrainConfig(
        method="slim", steps=%(steps)d, batch_size=%(batch)d, lr=3e-2, checkpoint_every=2, threads=1,
        model={"encoder": {"dim": 32, "depth": 1, "heads": 2}, "num_prototypes": 64,
               "head_hidden_dim": 64, "head_bottleneck_dim": 32},
        views={"local_frames": [32, 16, 8]},
    )
    metrics = pretrain(config, data, out, progress=False)
    with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump({"metrics": metrics, "rows": seen, "num_clips": len(data.clips)}, f)
    """
) % {"steps": STEPS, "batch": BATCH}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(ucla_subset, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    (root / "driver.py").write_text(DRIVER)
    out = root / "out"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), str(root / "driver.py"),
        str(ucla_subset["data"]), str(ucla_subset["split"]), str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_two_ranks_complete_and_agree_on_weights(ddp_run):
    ranks = [json.loads((ddp_run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["metrics"]["world_size"] == 2 and r["metrics"]["steps"] == STEPS for r in ranks)
    assert ranks[0]["metrics"]["weights_sha256"] == ranks[1]["metrics"]["weights_sha256"]
    assert ranks[0]["metrics"]["final_loss"] == ranks[1]["metrics"]["final_loss"]  # reduced over ranks
    written = json.loads((ddp_run / "metrics.json").read_text())
    assert written["weights_sha256"] == ranks[0]["metrics"]["weights_sha256"]
    assert (ddp_run / "encoder.pt").is_file()


def test_each_global_batch_is_split_between_the_ranks(ddp_run):
    ranks = [json.loads((ddp_run / f"rank{r}.json").read_text()) for r in (0, 1)]
    plan = BatchPlan(ranks[0]["num_clips"], BATCH, world_size=2, seed=0)
    for step in range(STEPS):
        shards = [r["rows"][str(step)] for r in ranks]
        assert [len(s) for s in shards] == [BATCH // 2] * 2
        assert shards[0] + shards[1] == plan.global_rows(step).tolist()
