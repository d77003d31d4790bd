"""Metrics, evaluation and prediction of trained runs."""
