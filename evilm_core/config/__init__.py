"""Typed recipes: YAML -> dataclasses with strict keys and types (the kinds: evilm_core/recipes.py)."""
