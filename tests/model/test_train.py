"""The pretraining loop on real NW-UCLA clips: it learns, it is deterministic, it resumes exactly."""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from slim.checkpoint import checkpoint_name, load_checkpoint
from slim.data.dataset import BatchPlan, StepBatches, load_training_clips, step_loader
from slim.export import load_encoder
from slim.train import TrainConfig, config_from_dict, model_config, pretrain
from slim.views import ViewConfig

TINY_MODEL = {
    "slim": {
        "encoder": {"dim": 32, "depth": 1, "heads": 2},
        "num_prototypes": 64,
        "head_hidden_dim": 64,
        "head_bottleneck_dim": 32,
    },
    "mae": {"dim": 32, "depth": 1, "heads": 2, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
}
TINY_VIEWS = {"slim": {"local_frames": [32, 16, 8]}, "mae": {}}


def tiny_config(method: str, **changes) -> TrainConfig:
    # one torch thread: on a small shared machine two threads per process mostly wait for each other
    settings = {"steps": 6, "batch_size": 8, "lr": 3e-2, "checkpoint_every": 3, "threads": 1}
    settings |= {"model": TINY_MODEL[method], "views": TINY_VIEWS[method]}
    return TrainConfig(method=method, **(settings | changes))


@pytest.fixture(scope="module")
def data(ucla_subset):
    """The ucla-xview training clips of the real NW-UCLA subset."""
    train_ids = json.loads(ucla_subset["split"].read_text())["train"]
    return load_training_clips(ucla_subset["data"], train_ids)


def read_plots(out_dir) -> list[dict]:
    with (out_dir / "plots.csv").open() as handle:
        return list(csv.DictReader(handle))


def final_state(out_dir, steps: int) -> dict:
    return load_checkpoint(out_dir / "checkpoints" / checkpoint_name(steps))["model"]


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_training_clips_are_the_split(data):
    assert data.layout.name == "ucla20"
    assert len(data.clips) == len(data.sample_ids) > 60
    assert all(not sid.endswith("_v03") for sid in data.sample_ids)  # view 3 is the test view


@pytest.mark.parametrize("method", ["slim", "mae"])
def test_loss_is_finite_and_decreases(data, tmp_path, method):
    """Minimum functionality: 60 steps on 8 real clips (fresh crops, views and masks every step)."""
    steps, few = 60, replace(data, sample_ids=data.sample_ids[:8], clips=data.clips[:8])
    model = TINY_MODEL[method] | ({"dim": 64, "depth": 2, "decoder_dim": 64} if method == "mae" else {})
    config = tiny_config(method, steps=steps, checkpoint_every=steps, model=model)
    metrics = pretrain(config, few, tmp_path, progress=False)
    rows = read_plots(tmp_path)
    assert [int(r["step"]) for r in rows] == list(range(steps))
    losses = np.array([float(r["loss"]) for r in rows])
    assert np.isfinite(losses).all()
    assert losses[-10:].mean() < losses[:10].mean() - 0.03, losses.reshape(-1, 10).mean(1)
    assert float(rows[-1]["weight_decay"]) == pytest.approx(0.2)  # schedules run to their ends
    assert math.isclose(float(rows[-1]["lr"]), 1e-6)
    assert metrics["steps"] == steps and metrics["final_loss"] == pytest.approx(losses[-1])
    assert metrics["clips_per_s"] > 0 and metrics["params"] > metrics["encoder_params"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == [checkpoint_name(steps)]


def test_same_seed_same_weights_other_seed_differs(data, tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        runs[name] = pretrain(tiny_config("slim", seed=seed), data, tmp_path / name, progress=False)
    assert_bit_identical(final_state(tmp_path / "a", 6), final_state(tmp_path / "b", 6))
    assert runs["a"]["weights_sha256"] == runs["b"]["weights_sha256"] != runs["c"]["weights_sha256"]


@pytest.mark.parametrize("method", ["slim", "mae"])
def test_resume_from_a_checkpoint_is_bit_identical(data, tmp_path, method):
    config = tiny_config(method)
    pretrain(config, data, tmp_path / "full", progress=False)
    # a run that died after its step-3 checkpoint (and wrote plots rows past it)
    (tmp_path / "cut" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "full/checkpoints" / checkpoint_name(3), tmp_path / "cut/checkpoints")
    shutil.copy(tmp_path / "full/plots.csv", tmp_path / "cut/plots.csv")
    metrics = pretrain(config, data, tmp_path / "cut", resume=True, progress=False)
    assert metrics["resumed_from_step"] == 3
    assert_bit_identical(final_state(tmp_path / "full", 6), final_state(tmp_path / "cut", 6))
    assert [r["step"] for r in read_plots(tmp_path / "cut")] == [str(s) for s in range(6)]
    assert read_plots(tmp_path / "cut")[-1]["loss"] == read_plots(tmp_path / "full")[-1]["loss"]


def test_resume_refuses_changed_settings(data, tmp_path):
    pretrain(tiny_config("mae", steps=3), data, tmp_path, progress=False)
    with pytest.raises(ValueError, match="settings changed: lr"):
        pretrain(tiny_config("mae", steps=3, lr=1e-3), data, tmp_path, resume=True, progress=False)


def test_exported_encoder_matches_student(data, tmp_path, capsys):
    pretrain(tiny_config("slim", steps=3, precision="fp16"), data, tmp_path, progress=False)
    assert "uses fp32" in capsys.readouterr().err  # CPU: the precision flag is ignored, with a notice
    encoder = load_encoder(tmp_path / "encoder.pt")
    prefix = "student.encoder."
    student = {k.removeprefix(prefix): v for k, v in final_state(tmp_path, 3).items() if k.startswith(prefix)}
    assert_bit_identical(encoder.state_dict(), student)
    features = encoder(torch.zeros(2, 3, 64, 20))
    assert features.shape == (2, encoder.feature_dim) and torch.isfinite(features).all()


def test_batches_depend_on_step_not_on_workers(data):
    plan = BatchPlan(len(data.clips), global_batch=8, seed=3)
    dataset = StepBatches(data, "slim", plan, views=config_from_dict(ViewConfig, TINY_VIEWS["slim"], "views"))
    serial = list(step_loader(dataset, 2, 6, num_workers=0))
    parallel = list(step_loader(dataset, 2, 6, num_workers=2))
    assert [b.step for b in parallel] == [2, 3, 4, 5]
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a.rows, b.rows)
        assert torch.equal(a.inputs.global_views, b.inputs.global_views)
        assert torch.equal(a.inputs.global_masks, b.inputs.global_masks)
        assert all(torch.equal(a.inputs.local_views[f], b.inputs.local_views[f]) for f in a.inputs.local_views)
    assert torch.equal(dataset[4].inputs.global_views, serial[2].inputs.global_views)  # random access
    assert not torch.equal(serial[0].inputs.global_views, serial[1].inputs.global_views)


def test_epochs_cover_each_clip_once_and_ranks_split_the_batch(data):
    plan = BatchPlan(len(data.clips), global_batch=8, world_size=2, seed=0)
    epoch = np.concatenate([plan.global_rows(s) for s in range(plan.steps_per_epoch)])
    assert len(set(epoch.tolist())) == len(epoch) == plan.steps_per_epoch * 8
    assert not np.array_equal(plan.global_rows(0), plan.global_rows(plan.steps_per_epoch))  # reshuffled
    shards = [StepBatches(data, "mae", plan, rank=r)[5] for r in (0, 1)]
    assert [b.inputs.shape for b in shards] == [(4, 3, 120, 20)] * 2
    assert torch.cat([b.rows for b in shards]).tolist() == plan.global_rows(5).tolist()


@pytest.mark.parametrize(
    ("method", "model", "views", "message"),
    [
        ("slim", {"encoder": {"dimm": 64}}, {}, r"model.encoder: unknown key\(s\) \['dimm'\]"),
        ("slim", {"num_prototypes": "many"}, {}, "model.num_prototypes: expected int"),
        ("slim", {}, {"global_mask": {"ratio": 0.5}}, "views.global_mask: unknown key"),
        ("slim", {}, {"local_frames": [12]}, "multiple of the patch size"),
        ("mae", {"mask_ratio": 1.5}, {}, "mask_ratio must be in"),
        ("mae", {"num_joints": 25}, {}, "comes from the dataset's layout"),
    ],
)
def test_bad_model_settings_are_clear_errors(method, model, views, message):
    with pytest.raises(ValueError, match=message):
        model_config(method, model, num_joints=20)
        config_from_dict(ViewConfig, views, "views")

