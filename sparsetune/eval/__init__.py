"""Evaluation: the lm-eval bridge (lm: offline benchmark tasks, held-out splits, user task folders;
lm_tasks: task files for local examples), vision top-1 (vision), forgetting metrics (forgetting), a
method's eval points (points), which evaluator a config asks for (suite) and console tables (report).
Import the submodules directly; this package imports nothing heavy."""
