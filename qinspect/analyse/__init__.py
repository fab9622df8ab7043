"""Analyses: Checkpoint -> report objects (summary, diff, verify, check)."""
