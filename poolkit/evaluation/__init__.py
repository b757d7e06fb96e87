"""Scoring and comparing: metrics, the paired bootstrap, the protocols, and the verdict
across tasks."""
