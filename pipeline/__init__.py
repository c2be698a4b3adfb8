"""DVC stage entry points and the project's only MLflow code."""
