"""EViT (arXiv 2202.07800): token reorganisation for stock Hugging Face ViT and DeiT classifiers."""
