import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["ingest"],
        ["split"],
        ["pretrain"],
        ["features"],
        ["evaluate"],
        ["register"],
        ["promote"],
        ["embed"],
        ["runs"],
        ["runs", "compare"],
        ["doctor"],
        ["protocols"],
        ["layouts"],
        ["check-params"],
        ["flops"],
    ],
)
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_console_script_is_installed():
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "ingest" in proc.stdout


def test_ingest_missing_folder_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["ingest", "--format", "ntu", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_split_writes_ids(tmp_path, ucla_dir):
    from pipeline.ingest import run as ingest

    src = tmp_path / "raw"
    src.mkdir()
    for f in sorted(ucla_dir.glob("a01_s01_*.json")):
        (src / f.name).write_bytes(f.read_bytes())
    ingest("nw-ucla", src, tmp_path / "pq", 0.0, 1)
    result = runner.invoke(
        app, ["split", "ucla-xview", str(tmp_path / "pq/sequences.parquet"), str(tmp_path / "s.json")]
    )
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    n_test = sum(f.name.endswith("_v03.json") for f in src.iterdir())
    assert (counts["train"], counts["test"]) == (len(list(src.iterdir())) - n_test, n_test)
    assert n_test > 0


def test_flops_reports_measured_counts():
    import torch

    from slim.flops import count_flops
    from slim.models import build

    result = runner.invoke(app, ["flops", "--layout", "ucla20"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: float(line.split()[3]) for line in result.output.splitlines()}
    mae = build("mae", "ucla20").eval()
    assert rows["mae"] == round(count_flops(mae, torch.zeros(1, 3, 120, 20)) / 1e9, 2)
    assert rows["mae"] / rows["slim"] > 4
