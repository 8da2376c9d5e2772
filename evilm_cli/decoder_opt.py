"""The `--decoder` option of the commands that decode videos without a recipe (label, retrieve
index, data check, data shards); recipe commands take `--set data.decoder=...`."""

from __future__ import annotations

import typer

DECODER = typer.Option("auto", "--decoder", help="Video decoder: auto (the fastest that works here), decord, pyav "
                       "or torchcodec (docs/data.md, \"Decoders\").")
