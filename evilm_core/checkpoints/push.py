"""`evilm push`: a model export to the Hugging Face Hub (docs/hub.md): its model card written or
refreshed, then its Hub-layout files uploaded. Every failure, the network's included, is an
EvilmError naming the repository and the cause."""

from __future__ import annotations

from pathlib import Path

from evilm_core.checkpoints import files as ckpt
from evilm_core.checkpoints.card import refresh_card
from evilm_core.checkpoints.hub import UPLOAD_PATTERNS, _first_line, _offline, parse_hub_id
from evilm_core.checkpoints.resolve import resolve_checkpoint
from evilm_core.errors import EvilmError


def push_checkpoint(checkpoint: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
                    license: str | None = None, token: str | None = None) -> dict:
    """Upload a model export (a `final/` in the Hub layout) to the Hub as ORG/NAME (created if need
    be), its model card written or refreshed first. -> {repo, revision, url, commit, files}."""
    import huggingface_hub as hf

    repo, id_revision = parse_hub_id(repo_id)
    revision = revision or id_revision
    token = token or hf.get_token()
    if not token:
        raise EvilmError(f"pushing to {repo} needs a Hugging Face token with write access: set HF_TOKEN, or run "
                         "`hf auth login` (the token is stored under HF_HOME)")
    if _offline():
        raise EvilmError(f"pushing to {repo} needs the network, but HF_HUB_OFFLINE is set; unset it")
    directory = resolve_checkpoint(checkpoint)
    if not ckpt.is_hub_layout(directory):
        raise EvilmError(f"{directory} is not a model export ({ckpt.CONFIG_JSON} missing; a trainer step_* holds "
                         "training state): push the run's final/, written at the end of training")
    refresh_card(directory, repo, license=license)
    files = sorted(p.name for p in directory.iterdir() if p.name in UPLOAD_PATTERNS)
    info = _upload(hf.HfApi(token=token), repo, directory, private, revision)
    return {"repo": repo, "revision": revision or "main", "url": f"https://huggingface.co/{repo}",
            "commit": getattr(info, "oid", None), "checkpoint": str(directory), "files": files}


def _upload(api, repo: str, folder: Path, private: bool, revision: str | None):
    from huggingface_hub import errors

    try:
        api.create_repo(repo, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo, branch=revision, exist_ok=True)
        return api.upload_folder(repo_id=repo, folder_path=str(folder), revision=revision,
                                 allow_patterns=UPLOAD_PATTERNS, commit_message=f"evilm push {folder.name}")
    except (errors.HfHubHTTPError, OSError) as err:
        raise EvilmError(f"pushing to {repo} failed: {_first_line(err)}") from None
    except Exception as err:  # the HTTP client's own errors (no network, TLS, timeouts) share no base class
        if not _from_network_stack(err):
            raise
        raise EvilmError(f"pushing to {repo} failed, the Hub could not be reached ({type(err).__name__}: "
                         f"{_first_line(err)}); check the network and HF_ENDPOINT, then push again") from None


# the libraries an upload goes through: an error any of them raises is the network's, not a bug
# (prefixes: huggingface_hub ships its HTTP client under new names, e.g. httpx2)
NETWORK_PACKAGES = ("httpx", "httpcore", "h11", "h2", "requests", "urllib3", "huggingface_hub", "hf_xet", "ssl",
                    "socket", "anyio")


def _from_network_stack(err: BaseException) -> bool:
    return any(cls.__module__.split(".")[0].startswith(NETWORK_PACKAGES) for cls in type(err).__mro__)
