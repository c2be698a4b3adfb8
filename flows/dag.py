"""DVC is the one definition of the DAG; the flows read it from here and never restate it.

- `load_dag` reads every stage of dvc.yaml (resolved `foreach`/`matrix`, commands, upstream stages)
  from DVC itself and orders them by the DAG (dvc.yaml order breaks ties); `plan` sorts them into the
  phases of a retraining run by their group names (`ingest@...` -> group `ingest`).
- `status`, `commit`, `repro`: the `dvc` command line, one call at a time per process (`dvc`
  holds a repo-wide lock; a second call while one runs would fail).
- `run_command` runs a stage's own resolved command (what `dvc repro` would run) so that independent
  evaluation stages run side by side; `dvc commit` then records them in dvc.lock exactly as
  `dvc repro` would have, and the next `dvc repro` is a no-op.

No Prefect here: the tasks in flows/stages.py wrap these functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import psutil
from pydantic import BaseModel

# Groups (the part of a stage name before `@`) by phase. Evaluation stages are whatever starts with one
# of these prefixes (`anchor_features@raw` is an evaluation stage too); nothing else is hard-coded.
PRETRAIN_PREFIXES = ("pretrain",)
EVALUATION_PREFIXES = ("features", "anchor", "evaluate", "finetune", "supervised")
REGISTER_GROUP = "register"

# Serialises this process's DVC calls (the flows' tasks run in threads).
DVC_LOCK = threading.RLock()
OUTPUT_TAIL = 40  # lines of a failed command's output kept in the error

# Failures worth a retry: a process killed by a signal (OOM killer, a killed worker), DVC's repo lock
# held by another process, an MLflow server or SQLite store that is busy or unreachable.
TRANSIENT_PATTERNS = re.compile(
    r"Unable to acquire lock|database is locked|Connection refused|Connection reset|Max retries exceeded"
    r"|Read timed out|RemoteDisconnected|TEMPORARILY_UNAVAILABLE|RESOURCE_EXHAUSTED"
    r"|status code (429|502|503|504)|\b(429|502|503|504) Server Error",
    re.IGNORECASE,
)


class StageFailed(RuntimeError):
    """A command exited non-zero; `transient` says whether a retry may help."""

    def __init__(self, what: str, returncode: int | None, output: list[str], transient: bool | None = None):
        self.what, self.returncode, self.output = what, returncode, output
        if transient is None:
            transient = (returncode is not None and (returncode < 0 or returncode in (137, 143))) or bool(
                TRANSIENT_PATTERNS.search("\n".join(output))
            )
        self.transient = transient
        how = (
            f"killed by signal {-returncode}"
            if returncode is not None and returncode < 0
            else f"exit code {returncode}"
        )
        kind = "transient, will be retried" if transient else "not transient"
        tail = "\n".join(output[-OUTPUT_TAIL:])
        super().__init__(f"{what} failed ({how}; {kind}). Last output:\n{tail}")


class StageTimeout(StageFailed):
    """A command ran past its time limit and was killed (with its child processes)."""

    def __init__(self, what: str, timeout_s: float, output: list[str]):
        super().__init__(what, None, output, transient=False)
        self.args = (f"{what} timed out after {timeout_s:.0f} s and was killed. Last output:\n"
                     + "\n".join(output[-OUTPUT_TAIL:]),)  # fmt: skip


class Stage(BaseModel):
    """One resolved stage of dvc.yaml."""

    name: str  # e.g. evaluate@linear-slim
    group: str  # e.g. evaluate
    cmd: list[str]  # the resolved command(s), as DVC runs them
    upstream: list[str]  # stages whose outputs it reads (direct)
    deps: list[str]  # dependency paths as written in dvc.yaml
    outs: list[str]  # output paths (metrics and plots included)
    cached_outs: list[str]  # outputs DVC caches and removes before a run (not `persist`)
    out_dir: str | None = None  # the `--out` folder of the command, if any


class Plan(BaseModel):
    """The DAG in retraining phases; each list in DAG order."""

    data: list[Stage]  # everything upstream of (or beside) pretraining: ingest, split, ...
    pretrain: list[Stage]
    evaluations: list[Stage]
    publish: list[Stage]  # register and anything else downstream of pretraining

    def groups(self, phase: str) -> list[tuple[str, list[str]]]:
        """(group, stage names) of a phase, groups in order of first appearance."""
        out: dict[str, list[str]] = {}
        for stage in getattr(self, phase):
            out.setdefault(stage.group, []).append(stage.name)
        return list(out.items())

    @property
    def register(self) -> Stage | None:
        return next((s for s in self.publish if s.group == REGISTER_GROUP), None)


def group_of(name: str) -> str:
    return name.split("@", 1)[0]


def option(cmd: list[str], name: str) -> str | None:
    """The value of option `name` (e.g. `--out`) in a stage's command, if any."""
    for line in cmd:
        words = shlex.split(line)
        if name in words[:-1]:
            return words[words.index(name) + 1]
    return None


def load_dag(root: Path) -> list[Stage]:
    """Every stage of the repo's dvc.yaml, in DAG order (dvc.yaml order among independent stages)."""
    import networkx as nx
    from dvc.repo import Repo

    root = Path(root).resolve()
    with DVC_LOCK, Repo(str(root)) as repo:
        index = repo.index
        position = {stage: i for i, stage in enumerate(index.stages)}
        # DVC's graph points from a stage to the stages it depends on.
        graph = index.graph.reverse(copy=True)
        stages = []

        def address(stage) -> str:
            """`name` for a stage of the root dvc.yaml, `path/dvc.yaml:name` for others (as `dvc repro`
            takes them from the root; DVC's own `addressing` is relative to the current folder)."""
            rel = os.path.relpath(stage.dvcfile.path, root)
            return stage.name if rel == "dvc.yaml" else f"{rel}:{stage.name}"

        for stage in nx.lexicographical_topological_sort(graph, key=lambda s: position.get(s, 0)):
            if not getattr(stage, "cmd", None):
                continue  # a .dvc file (data tracked by DVC), not a stage
            cmd = [stage.cmd] if isinstance(stage.cmd, str) else list(stage.cmd)
            stages.append(
                Stage(
                    name=address(stage),
                    group=group_of(stage.name),
                    cmd=cmd,
                    upstream=[address(up) for up in graph.predecessors(stage) if getattr(up, "cmd", None)],
                    deps=[str(d.def_path) for d in stage.deps],
                    outs=[str(o.def_path) for o in stage.outs],
                    cached_outs=[str(o.def_path) for o in stage.outs if o.use_cache and not o.persist],
                    out_dir=option(cmd, "--out"),
                )
            )
    return stages


def plan(stages: list[Stage]) -> Plan:
    """Split the DAG into the phases of a retraining run (by group name; see the module docstring)."""
    pretrain = [s for s in stages if s.group.startswith(PRETRAIN_PREFIXES)]
    evaluations = [s for s in stages if s.group.startswith(EVALUATION_PREFIXES)]
    placed = {s.name for s in pretrain + evaluations}

    downstream_of_pretrain: set[str] = set()
    pretrain_names = {s.name for s in pretrain}
    for stage in stages:  # DAG order: upstream stages are seen first
        if any(up in downstream_of_pretrain or up in pretrain_names for up in stage.upstream):
            downstream_of_pretrain.add(stage.name)
    rest = [s for s in stages if s.name not in placed]
    return Plan(
        data=[s for s in rest if s.name not in downstream_of_pretrain and s.group != REGISTER_GROUP],
        pretrain=pretrain,
        evaluations=evaluations,
        publish=[s for s in rest if s.name in downstream_of_pretrain or s.group == REGISTER_GROUP],
    )


# ----------------------------------------------------------------------------- processes


def command_env(root: Path) -> dict[str, str]:
    """The environment of every command: ours (MLflow parent run, tracking URI...) with this Python's
    scripts first on PATH, so `slim` and `dvc` are the project's, and `root` first on PYTHONPATH, so
    that the commands run the code of the project they run in (`slim` is a console script: the
    current folder is not on its path)."""
    bindir = str(Path(sys.executable).parent)
    pythonpath = os.pathsep.join(filter(None, [str(Path(root).resolve()), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": pythonpath,
        "DVC_NO_ANALYTICS": "1",
    }


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        parent = psutil.Process(proc.pid)
        family = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)


def run_command(
    cmd: str,
    root: Path,
    *,
    what: str,
    timeout_s: float | None = None,
    on_line: Callable[[str], None] | None = None,
) -> list[str]:
    """Run `cmd` through the shell in `root` (as DVC runs a stage), streaming its output lines to
    `on_line`; return them. Raises StageFailed, or StageTimeout after killing the process tree.

    The command stays in this process's group, so cancelling a flow run (the worker kills the group)
    stops it too."""
    proc = subprocess.Popen(
        cmd, shell=True, cwd=root, env=command_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace", bufsize=1,
    )  # fmt: skip
    timed_out = threading.Event()

    def _expire() -> None:
        timed_out.set()
        _kill_tree(proc)

    timer = threading.Timer(timeout_s, _expire) if timeout_s else None
    lines: list[str] = []
    try:
        if timer:
            timer.daemon = True
            timer.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            del lines[:-1000]
            if on_line:
                on_line(line)
        returncode = proc.wait()
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is None:  # interrupted (cancellation, a Prefect timeout): leave no orphan behind
            _kill_tree(proc)
    if timed_out.is_set():
        raise StageTimeout(what, timeout_s or 0, lines)
    if returncode != 0:
        raise StageFailed(what, returncode, lines)
    return lines


def dvc(
    root: Path, *args: str, timeout_s: float | None = None, on_line: Callable[[str], None] | None = None
) -> str:
    """Run `dvc ARGS` in `root` (one at a time in this process); return its output."""
    cmd = shlex.join([sys.executable, "-m", "dvc", *args])
    with DVC_LOCK:
        return "\n".join(
            run_command(cmd, root, what=f"dvc {' '.join(args)}", timeout_s=timeout_s, on_line=on_line)
        )


def status(root: Path, targets: list[str] | tuple[str, ...] = ()) -> dict[str, list]:
    """{stage: [what changed]} for the stages (default: all) that `dvc repro` would run."""
    cmd = shlex.join([sys.executable, "-m", "dvc", "status", "--json", *targets])
    with DVC_LOCK:
        proc = subprocess.run(
            cmd, shell=True, cwd=root, env=command_env(root), capture_output=True, text=True, timeout=600
        )
    if proc.returncode != 0:
        raise StageFailed(
            f"dvc status {' '.join(targets)}".strip(),
            proc.returncode,
            (proc.stdout + proc.stderr).splitlines(),
        )
    text = proc.stdout.strip()
    start = text.find("{")
    return json.loads(text[start:]) if start >= 0 else {}


def changed(root: Path, name: str) -> list:
    """What changed for one stage since dvc.lock recorded it ([] = up to date)."""
    return status(root, [name]).get(name, [])


def commit(root: Path, names: list[str]) -> None:
    """Record the stages' current dependencies and outputs in dvc.lock (and outputs in the cache)."""
    dvc(root, "commit", "--force", *names)


def repro(root: Path, names: list[str], *, force: bool = False, on_line: Callable[[str], None] | None = None,
          timeout_s: float | None = None) -> str:  # fmt: skip
    """`dvc repro NAMES`: runs what changed in them and upstream; with `force`, these stages only.
    Returns its output."""
    extra = ["--force", "--single-item"] if force else []
    return dvc(root, "repro", *extra, *names, on_line=on_line, timeout_s=timeout_s)


def fingerprint(root: Path, name: str) -> str:
    """A hash of what a stage's run depends on (command, dependency hashes, params), computed by DVC as
    it would write it to dvc.lock: equal fingerprints mean the same run."""
    from dvc.repo import Repo
    from dvc.stage.serialize import to_single_stage_lockfile

    root = Path(root).resolve()
    target = f"{root}/{name}" if ":" in name else f"{root}/dvc.yaml:{name}"
    with DVC_LOCK, Repo(str(root)) as repo:
        stage = repo.stage.collect(target)[0]
        with repo.lock:
            stage.save_deps()
        entry = to_single_stage_lockfile(stage)
    doc = {key: entry.get(key) for key in ("cmd", "deps", "params")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def remove_cached_outs(root: Path, stage: Stage) -> None:
    """What `dvc repro` does before running a stage: cached outputs go (they may be links into the
    cache, which a command writing in place would corrupt). Uncached ones (metrics, plots) stay."""
    for out in stage.cached_outs:
        path = root / out
        if path.is_file() or path.is_symlink():
            path.unlink()
