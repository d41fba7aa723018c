"""Evaluation: reference solutions and metrics."""
