"""Config composition (Hydra) and validation against dataclass schemas."""

from sparsetune.config.compose import RECIPES_DIR, compose, list_recipes, to_yaml

__all__ = ["RECIPES_DIR", "compose", "list_recipes", "to_yaml"]
