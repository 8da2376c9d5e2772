"""Makes recipes/ the package `evilm_core.bundled_recipes` when evilm is installed (setup.py), so
`evilm recipes ls` and a recipe given by name (`evilm pretrain webvid`) find these files.
No code: the recipes are the yaml files here."""
