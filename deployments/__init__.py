"""Prefect deployments of every dataset: registered on a work pool (`register`) or served from one process (`serve.py`)."""
