"""Prefect flows and deployments (scheduled retraining, evaluations, promotion).

Importing the package sets the project-local environment (PREFECT_HOME, analytics off) before any
flow module imports prefect; see flows/_env.py."""

from flows import _env  # noqa: F401  (side effect: environment defaults, before prefect is imported)
