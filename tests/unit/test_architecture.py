"""The library stays pure: no MLOps framework or pipeline code is imported anywhere in slim/; and
outside it only pipeline/tracking.py and pipeline/registry.py talk to MLflow."""

import ast
from pathlib import Path

FORBIDDEN = {"dvc", "mlflow", "prefect", "pipeline", "flows"}
ROOT = Path(__file__).resolve().parents[2]
SLIM = ROOT / "slim"
MLFLOW_MODULES = {"pipeline/tracking.py", "pipeline/registry.py"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_library_imports_no_mlops_framework():
    files = sorted(SLIM.rglob("*.py"))
    assert len(files) > 3
    offenders = {str(f.relative_to(SLIM)): sorted(_imported_roots(f) & FORBIDDEN) for f in files}
    assert {f: bad for f, bad in offenders.items() if bad} == {}


def test_only_tracking_and_registry_import_mlflow():
    files = sorted(p for folder in ("pipeline", "flows", "benchmarks") for p in (ROOT / folder).rglob("*.py"))
    importers = {str(f.relative_to(ROOT)) for f in files if "mlflow" in _imported_roots(f)}
    assert importers == MLFLOW_MODULES


def test_checker_sees_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom mlflow.tracking import MlflowClient\nimport prefect.flows as pf\n")
    assert _imported_roots(bad) >= {"mlflow", "prefect", "os"}
