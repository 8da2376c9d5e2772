"""Hugging Face Hub ids for checkpoints (docs/hub.md): `hf-hub:ORG/NAME[@REVISION]` wherever a
checkpoint directory is taken, resolved to a local snapshot by `resolve_hub_checkpoint`, and
`push_checkpoint` (`evilm push`) to publish one. The network is used only when such an id is
given (or on push); a snapshot in the local cache loads offline (HF_HUB_OFFLINE=1).
huggingface_hub is imported only here, and only when an id is resolved or a push is made."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from evilm_core.errors import EvilmError

log = logging.getLogger("evilm.checkpoints")
HUB_PREFIX = "hf-hub:"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# what a pushed model repo holds: the Hub layout, plus config.yaml for an export written before it
UPLOAD_PATTERNS = ["model.safetensors", "config.json", "config.yaml", "vocab.txt", "README.md", "answers.txt",
                   "labels.txt"]


def is_hub_id(spec: object) -> bool:
    return isinstance(spec, (str, Path)) and str(spec).startswith(HUB_PREFIX)


def parse_hub_id(spec: str) -> tuple[str, str | None]:
    """'hf-hub:ORG/NAME[@REVISION]' (the prefix optional) -> (ORG/NAME, REVISION or None)."""
    text = str(spec)
    body = text[len(HUB_PREFIX):] if text.startswith(HUB_PREFIX) else text
    repo, at, revision = body.partition("@")
    if not _REPO_ID.match(repo) or "--" in repo or ".." in repo or (at and not revision):
        raise EvilmError(f"{text!r} is not a Hub model id: expected {HUB_PREFIX}ORG/NAME or "
                         f"{HUB_PREFIX}ORG/NAME@REVISION (a branch, tag or commit)")
    return repo, revision or None


def resolve_hub_checkpoint(spec: str) -> Path:
    """The local snapshot directory of `hf-hub:ORG/NAME[@REV]`: from the Hub (downloaded into the
    Hugging Face cache, HF_HOME), or from that cache when offline or the Hub cannot be reached."""
    import huggingface_hub as hf
    from huggingface_hub import constants, errors

    from evilm_core import __version__

    repo, revision = parse_hub_id(spec)
    try:
        path = hf.snapshot_download(repo, revision=revision, library_name="evilm", library_version=__version__,
                                    ignore_patterns=["trainer_state.pt"])
    except errors.LocalEntryNotFoundError:
        where = "HF_HUB_OFFLINE is set" if _offline() else "the Hub could not be reached"
        raise EvilmError(f"{spec}: {where} and {repo}{'@' + revision if revision else ''} is not in the local "
                         f"Hugging Face cache ({constants.HF_HUB_CACHE}); download it where there is a network "
                         f"(`hf download {repo}` with the same HF_HOME), or pass the checkpoint directory "
                         "instead") from None
    except (errors.RepositoryNotFoundError, errors.GatedRepoError) as err:
        raise EvilmError(f"{spec}: no model repository {repo} on the Hub that this login may read "
                         f"({_first_line(err)}); check the id, or `hf auth login` for a private one") from None
    except errors.RevisionNotFoundError:
        raise EvilmError(f"{spec}: {repo} has no revision {revision!r} (a branch, tag or commit)") from None
    except (errors.HfHubHTTPError, OSError) as err:
        raise EvilmError(f"{spec}: downloading from the Hub failed ({_first_line(err)})") from None
    log.info("%s -> %s", spec, path)
    return Path(path)


def _offline() -> bool:
    import huggingface_hub as hf
    from huggingface_hub import constants

    check = getattr(hf, "is_offline_mode", None)  # huggingface_hub >= 1.0; before: the constant
    return bool(check() if check is not None else constants.HF_HUB_OFFLINE)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
