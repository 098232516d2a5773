"""GS-LoRA / GS-LoRA++ continual forgetting (arXiv 2501.09705) and its baselines: see
docs/methods/gslora.md. `runner.run_forget` is the `sparsetune forget` job flow."""
