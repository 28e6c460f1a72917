"""Metric plugins and the harness networks they use (per-modality classifiers)."""
