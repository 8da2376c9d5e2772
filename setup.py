"""The package list, which pyproject.toml cannot express: setuptools' `packages.find` only finds
folders under the packages, and the recipes stay at the top of the repository (recipes/). They
ship as the package `evilm_core.bundled_recipes` mapped onto that folder, so an editable install
reads the repository's files and a wheel carries them (the yaml files: pyproject.toml,
`package-data`). Everything else about the project is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

BUNDLED = ["evilm_core.bundled_recipes", "evilm_core.bundled_recipes.synthetic"]

setup(packages=find_namespace_packages(include=["evilm_cli*", "evilm_core*"]) + BUNDLED,
      package_dir={"evilm_core.bundled_recipes": "recipes"})
