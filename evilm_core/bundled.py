"""The recipes that ship inside the package (docs/design.md, "Recipes"): the repository's
`recipes/` folder, installed as the package `evilm_core.bundled_recipes` (setup.py maps the name
onto the folder, so an editable install reads the repository's files and a wheel carries copies).

A bundled recipe is named by its path under `recipes/` without `.yaml`: `webvid`,
`synthetic/pretrain`. Every command that takes a recipe accepts such a name where a path is
expected (`resolve_recipe`, called by `recipes.load_recipe`); a path that exists wins. Relative
paths inside a recipe are resolved against the working directory, never against the recipe's
own location, so a bundled recipe means the same files as a copy of it in the cwd would.
"""

from __future__ import annotations

import difflib
import logging
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from evilm_core.errors import RecipeError

log = logging.getLogger("evilm.bundled")

PACKAGE = "evilm_core.bundled_recipes"
SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class BundledRecipe:
    name: str  # "webvid", "synthetic/pretrain"
    path: Path  # the file (in the repository for an editable install, in site-packages for a wheel)
    kind: str | None  # the recipe's top-level `kind`
    task: str | None  # a finetune recipe's `task`
    launch: str | None  # the command the recipe's header opens with (`evilm pretrain webvid`)

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "task": self.task, "launch": self.launch, "path": str(self.path)}


def bundled_root() -> Path:
    """The folder holding the bundled recipes (a plain directory: evilm is never imported from a zip)."""
    try:
        return Path(str(resources.files(PACKAGE)))
    except ModuleNotFoundError:  # an editable install made before setup.py mapped the package
        raise RecipeError(f"the bundled recipes ({PACKAGE}) are not installed; reinstall evilm "
                          "(`pip install -e .` in a checkout)") from None


def bundled_names() -> list[str]:
    """Every bundled recipe's name: the paper recipes first, then the sub-folders' (`synthetic/...`)."""
    root = bundled_root()
    files = [p for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file()]
    names = [p.relative_to(root).with_suffix("").as_posix() for p in files]
    return sorted(names, key=lambda n: (n.count("/"), n))


def bundled_name(text: str | Path) -> str:
    """A recipe argument as a bundled name: `webvid.yaml`, `recipes/webvid.yaml` -> `webvid`."""
    name = Path(text).as_posix()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.removeprefix("./").removeprefix("recipes/")


def bundled_path(name: str | Path) -> Path | None:
    """The file of the bundled recipe `name` (with or without `.yaml`), or None if there is none."""
    name = bundled_name(name)
    if name not in bundled_names():
        return None
    root = bundled_root()
    return next(root / f"{name}{s}" for s in SUFFIXES if (root / f"{name}{s}").is_file())


def unknown_recipe_error(text: str | Path) -> RecipeError:
    """A recipe argument that is neither a file nor a bundled name: say so, with the closest names."""
    names = bundled_names()
    close = difflib.get_close_matches(bundled_name(text), names, n=3, cutoff=0.4)
    hint = f" Closest bundled recipes: {', '.join(close)}." if close else ""
    return RecipeError(f"recipe file not found: {text} (not a file, nor the name of a bundled recipe).{hint} "
                       "`evilm recipes ls` lists the bundled recipes.")


def resolve_recipe(text: str | Path) -> Path:
    """The file a recipe argument means: the path itself when it exists, else the bundled recipe
    of that name (`webvid`, `synthetic/pretrain.yaml`, `recipes/webvid.yaml` from another cwd)."""
    path = Path(text)
    if path.exists():
        return path
    found = bundled_path(text)
    if found is None:
        raise unknown_recipe_error(text)
    log.debug("recipe %s: the bundled %s", text, found)
    return found


def read_header(path: Path) -> tuple[str | None, dict]:
    """(launch line, raw mapping) of a recipe: the launch line is its first comment line, a command
    (`evilm ...` or `torchrun ... evilm ...`)."""
    text = path.read_text(encoding="utf-8")
    first = next((line for line in text.splitlines() if line.strip()), "")
    launch = first.lstrip("#").strip() if first.startswith("#") else None
    if launch is not None and not (launch.startswith("evilm ") or launch.startswith("torchrun ")):
        launch = None
    raw = yaml.safe_load(text)
    return launch, raw if isinstance(raw, dict) else {}


def list_bundled() -> list[BundledRecipe]:
    """The bundled recipes with their kind, task and launch line (`evilm recipes ls`)."""
    out = []
    for name in bundled_names():
        path = bundled_path(name)
        launch, raw = read_header(path)
        task = raw.get("task")
        out.append(BundledRecipe(name, path, raw.get("kind"), task if isinstance(task, str) else None, launch))
    return out


def copy_bundled(name: str, dest: str | Path, force: bool = False) -> Path:
    """Copy the bundled recipe `name` to `dest` (a file, or a directory to put `<base name>.yaml`
    in) for editing; refuses to replace a file unless `force`. Returns the file written."""
    source = bundled_path(name)
    if source is None:
        raise unknown_recipe_error(name)
    dest = Path(dest)
    target = dest / source.name if dest.is_dir() else dest
    if target.exists() and not force:
        raise RecipeError(f"{target} exists; pass --force to replace it")
    if not target.parent.is_dir():
        raise RecipeError(f"cannot copy recipe {name} to {target}: the directory {target.parent} does not exist")
    shutil.copyfile(source, target)
    log.info("copied recipe %s to %s", name, target)
    return target
