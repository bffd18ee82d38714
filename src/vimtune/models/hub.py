"""Weights specs: a local file, or ``hf-hub:<owner>/<repo>[@<revision>]/<file>`` fetched through ``huggingface_hub``.

A Hub file is downloaded once into the Hugging Face cache (``HF_HUB_CACHE``) and read from there
afterwards; with ``HF_HUB_OFFLINE=1`` only the cache is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HUB_PREFIX = "hf-hub:"


@dataclass(frozen=True)
class ResolvedWeights:
    """A weights spec made local: the file to read and the source string to record for it."""

    path: Path
    source: str


def parse_hub_spec(spec: str) -> tuple[str, str | None, str]:
    """``hf-hub:owner/repo[@revision]/path/in/repo`` -> (repo id, revision or None, file path in the repo)."""
    parts = spec.removeprefix(HUB_PREFIX).split("/")
    if len(parts) < 3 or not all(parts):
        raise ValueError(
            f"weights spec {spec!r}: expected {HUB_PREFIX}<owner>/<repo>[@<revision>]/<file>, e.g. "
            f"{HUB_PREFIX}hustvl/Vim-small-midclstok/vim_s_midclstok_80p5acc.pth"
        )
    repo, _, revision = parts[1].partition("@")
    return f"{parts[0]}/{repo}", revision or None, "/".join(parts[2:])


def resolve_weights(spec: str | os.PathLike) -> ResolvedWeights:
    """Resolve a weights spec to a local file and the source string a run records.

    Args:
        spec: a local path, or ``hf-hub:<owner>/<repo>[@<revision>]/<file>`` (downloaded once with
            ``huggingface_hub.hf_hub_download``, then read from its cache).

    Returns:
        The local file and the source string: the spec for a Hub file, the path for a local one.

    Raises:
        FileNotFoundError: a local file that does not exist, or a Hub file that is neither in the
            cache nor downloadable (offline, unknown repository or file).
    """
    text = os.fspath(spec)
    if not text.startswith(HUB_PREFIX):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: '{path}'")
        return ResolvedWeights(path, text)
    repo_id, revision, filename = parse_hub_spec(text)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    try:
        local = hf_hub_download(repo_id, filename, revision=revision)
    except (EntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise hub_file_unavailable(repo_id, filename, revision, err) from err
    return ResolvedWeights(Path(local), text)


def hub_file_unavailable(repo_id: str, filename: str, revision: str | None, err: BaseException) -> FileNotFoundError:
    """The one-line error for a Hub file that is neither in the cache nor downloadable.

    It names the repository, the file, the cache folder looked in and how to get the file there.
    """
    from huggingface_hub import constants

    spec = f"{HUB_PREFIX}{repo_id}{f'@{revision}' if revision else ''}/{filename}"
    if constants.is_offline_mode():
        why = "HF_HUB_OFFLINE is set, so only the cache is read"
    else:
        detail = str(err).splitlines()[0] if str(err) else ""
        why = f"downloading it failed ({type(err).__name__}: {detail})"
    return FileNotFoundError(
        f"cannot get {spec} (repository {repo_id}, file {filename}): it is not in the Hugging Face cache folder "
        f"'{constants.HF_HUB_CACHE}' and {why}; download it once with network access (without HF_HUB_OFFLINE, "
        f"e.g. `hf download {repo_id} {filename}`), or set HF_HUB_CACHE to the cache folder that holds it"
    )


def cached_hub_spec(path: str | os.PathLike) -> str | None:
    """``hf-hub:<owner>/<repo>/<file>`` of a file in a Hugging Face cache snapshot, else None.

    The cache stores ``<owner>/<repo>``'s files as ``models--<owner>--<repo>/snapshots/<revision>/<file>``.
    """
    parts = Path(path).parts
    for i, part in enumerate(parts[:-3]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            owner, _, repo = part.removeprefix("models--").partition("--")
            return f"{HUB_PREFIX}{owner}/{repo}/{'/'.join(parts[i + 3:])}"
    return None


def describe_source(name: str) -> str:
    """How an error names the weights file ``name``: its Hub spec too when it lies in the Hugging Face cache."""
    spec = cached_hub_spec(name)
    return f"{spec} (cached as '{name}')" if spec else name
