"""GS-LoRA / GS-LoRA++ continual forgetting (arXiv 2501.09705) and its baselines: see
docs/methods/gslora.md. The `sparsetune forget` job (sparsetune/jobs/forget.py) drives the tasks."""
