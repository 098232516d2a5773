"""Model loading (Hub id, local folder, GGUF from a package, tiny configs, the ViT base) and `arch`."""

from sparsetune.models.arch import Arch, get_arch
from sparsetune.models.loading import load_model

__all__ = ["Arch", "get_arch", "load_model"]
