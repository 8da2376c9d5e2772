"""Help text in the classic click style whatever typer renders by default.

Typer 0.29 (with its own copy of click) writes types as `<bool>` beside every flag, `<list[str]>`,
`<int range>`, and required arguments in braces (`{recipe}`) on the usage line; older typer (and
click) write `RECIPE`, `INTEGER`, `TEXT` and nothing beside a flag. evilm's help reads the same on
both: `adapt()` replaces the three display methods on typer >= 0.29 and does nothing where they do
not exist (docs/design.md, "CLI"). Help text is plain text (no rich markup), so `[default: ...]`
and `[CLS]` in a help string print as written.
"""

from __future__ import annotations

import typer.core

# typer's bare type names -> the classic click metavars
_CLASSIC = {"bool": None, "int": "INTEGER", "int range": "INTEGER", "float": "FLOAT", "float range": "FLOAT",
            "str": "TEXT", "path": "PATH", "file": "FILE", "directory": "DIRECTORY", "datetime": "DATETIME"}


def classic_type(label: str | None) -> str | None:
    """`<int range>` -> `INTEGER`, `<list[str]>` -> `TEXT`, `<a|b>` -> `[a|b]`, `<bool>` -> None."""
    if label is None:
        return None
    bare = label.strip("<>")
    if bare.startswith("list[") and bare.endswith("]"):
        bare = bare[5:-1]
    if bare in _CLASSIC:
        return _CLASSIC[bare]
    return f"[{bare}]" if "|" in bare else bare.upper()


def adapt() -> None:
    """Patch typer's option/argument display once (idempotent); a no-op on typer without them."""
    option, argument = typer.core.TyperOption, typer.core.TyperArgument
    if getattr(option, "_evilm_classic", False) or not hasattr(argument, "_usage_display_name"):
        return
    original = typer.core._TyperParameter.display_type

    def display_type_rich(self, ctx):
        if self.metavar is not None:
            return self.metavar
        if getattr(self, "is_flag", False):
            return None
        return classic_type(original(self, ctx))

    def usage_name(self):
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")

    option.display_type_rich = display_type_rich
    argument.display_type_rich = display_type_rich
    argument.display_name_raw = property(lambda self: self.metavar or self.name.upper())  # RECIPE
    argument._usage_display_name = usage_name
    option._evilm_classic = True
