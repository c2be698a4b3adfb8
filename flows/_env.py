"""Project-local environment for Prefect, DVC and MLflow; imported before `prefect` by every flow module.

Prefect reads its settings when it is first imported: `PREFECT_HOME` must be set before that, or an
ephemeral run writes `~/.prefect/prefect.db`. Values already in the environment win (the Makefile,
a worker's job variables, the tests).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DEFAULTS = {
    "PREFECT_HOME": str(ROOT / ".prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The ephemeral API migrates a fresh database first: on a busy small machine that took > 20 s.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
}

_home_was_unset = "PREFECT_HOME" not in os.environ
for _key, _value in DEFAULTS.items():
    os.environ.setdefault(_key, _value)

if _home_was_unset and "prefect" in sys.modules:
    # Too late to take effect; say so rather than silently writing to the home folder.
    print("warning: prefect was imported before flows._env; PREFECT_HOME may not apply", file=sys.stderr)
