"""Prefect flows and deployments (scheduled retraining, evaluations, promotion)."""
