"""Evaluation: lm-eval bridge (lm, lm_tasks), vision accuracy (vision), measurement (efficiency)
and console tables (report). Import the submodules directly; this package imports nothing heavy."""
