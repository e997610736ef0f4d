"""Metrics, task x language tables and plots."""
