"""Typed recipes: YAML -> dataclasses with strict keys and types."""

from evilm_core.config.loader import dump_yaml, from_dict, load_recipe, register_recipe, save_yaml, to_dict

__all__ = ["dump_yaml", "from_dict", "load_recipe", "register_recipe", "save_yaml", "to_dict"]
