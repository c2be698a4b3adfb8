import random
from fractions import Fraction

import numpy as np
import pytest
import torch

from slim.checkpoint import (
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)


def test_round_trip_restores_every_generator(tmp_path):
    tg, ng = torch.Generator().manual_seed(1), np.random.default_rng(2)
    torch.manual_seed(3)
    random.seed(4)
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path / checkpoint_name(5), {"model": model.state_dict(), "step": 5,
                                                   "rng": rng_state({"views": tg, "data": ng})})
    expected = (torch.rand(3, generator=tg), ng.random(3), torch.rand(3), random.random())

    tg2, ng2 = torch.Generator().manual_seed(99), np.random.default_rng(99)
    torch.manual_seed(99)
    state = load_checkpoint(tmp_path / checkpoint_name(5))
    restore_rng_state(state["rng"], {"views": tg2, "data": ng2})
    assert torch.equal(torch.rand(3, generator=tg2), expected[0])
    assert np.array_equal(ng2.random(3), expected[1])
    assert torch.equal(torch.rand(3), expected[2])
    assert random.random() == expected[3]
    assert state["step"] == 5 and torch.equal(state["model"]["weight"], model.weight.detach())


def test_weights_only_load_refuses_arbitrary_objects(tmp_path):
    torch.save({"x": Fraction(1, 3)}, tmp_path / "evil.pt")  # any non-tensor class needs full unpickling
    with pytest.raises(ValueError, match="evil.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / checkpoint_name(1)
    save_checkpoint(path, {"step": 1})

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"step": 2, "bad": Unsaveable()})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_latest_and_prune(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (10, 2, 30):
        save_checkpoint(tmp_path / checkpoint_name(step), {"step": step})
    (tmp_path / "notes.txt").write_text("x")
    assert latest_checkpoint(tmp_path).name == checkpoint_name(30)
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == [checkpoint_name(10), checkpoint_name(30)]
