"""`dvc exp run -S pretrain.<setting>=...` on the session's built project: the override reaches the
pretraining run, and DVC records it as an experiment."""

from __future__ import annotations

import csv
import io
import subprocess

import pytest

from tests.project import copy_project, project_env

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("built_project")]


def _lrs(root) -> list[float]:
    with (root / "models" / "slim" / "plots.csv").open() as handle:
        return [float(row["lr"]) for row in csv.DictReader(handle)]


def test_exp_run_set_param_overrides_the_profile(built_project, tmp_path):
    root = copy_project(built_project, tmp_path / "project")
    env = project_env(root)

    def run(*cmd: str) -> str:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    run("git", "add", "-A")
    run("git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", "baseline")
    before = _lrs(root)
    out = run("dvc", "exp", "run", "-S", "pretrain.lr=0.06", "-S", "pretrain.slim.steps=6", "pretrain@slim")
    assert "Running stage 'pretrain@slim'" in out

    after = _lrs(root)
    assert len(after) == 6  # the step override reached the run
    # the tiny profile's lr is 3e-2: every scheduled lr doubles, before the steps change the cosine
    assert after[1] == pytest.approx(2 * before[1]) and after[1] > 0
    table = list(csv.DictReader(io.StringIO(run("dvc", "exp", "show", "--csv"))))
    (experiment,) = [row for row in table if row["Experiment"]]
    assert (experiment["pretrain.lr"], experiment["pretrain.slim.steps"]) == ("0.06", "6")
