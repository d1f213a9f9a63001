"""Prefect flows: nightly segmentation of new acquisitions (one subflow each)."""
