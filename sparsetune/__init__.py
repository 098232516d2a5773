"""sparsetune: structured-sparsity fine-tuning and compression of Transformers."""

__version__ = "0.1.0"
