"""Publishing a dataset folder made by :func:`jsnsynth.synth.dataset.build_dataset` to the Hub.

The only code path in jsnsynth that touches the network. The folder is validated first (a
complete jsnsynth dataset with a card and ``pairs`` shards of the right schema); only the card and
the parquet shards are uploaded (the local run record stays local).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from jsnsynth.errors import InputError, OutputError
from jsnsynth.synth.dataset import CARD_NAME, LAYERS_DIR, PAIRS_DIR, check_dataset_folder

#: What is uploaded: the card and the shards of both configs.
UPLOAD_PATTERNS = [CARD_NAME, f"{PAIRS_DIR}/*.parquet", f"{LAYERS_DIR}/*.parquet"]
#: A Hub repository id, ``OWNER/NAME``.
REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def find_token() -> str | None:
    """The Hub token from ``HF_TOKEN``, else from a saved ``hf auth login``; None when neither."""
    token = os.environ.get("HF_TOKEN")
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def _hub_api(token: str):
    """The Hub client (a separate function so tests can replace it)."""
    from huggingface_hub import HfApi

    return HfApi(token=token)


def publish_dataset(folder: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Create (if needed) the dataset repository ``repo_id`` and upload ``folder`` to it.

    Args:
        folder: a complete dataset folder written by ``jsnsynth dataset``.
        repo_id: ``OWNER/NAME`` of the Hub dataset repository.
        private: create the repository as private (an existing one keeps its visibility).

    Returns:
        The dataset's URL on the Hub.

    Raises:
        InputError: the folder is not a complete jsnsynth dataset, a malformed repo id, or no
            token.
        OutputError: the Hub refused the upload or could not be reached.
    """
    folder = Path(folder)
    check_dataset_folder(folder)
    if not REPO_ID_PATTERN.match(repo_id):
        raise InputError(f"repo id must look like OWNER/NAME, got '{repo_id}'")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise OutputError("HF_HUB_OFFLINE is set: unset it to publish to the Hugging Face Hub")
    token = find_token()
    if not token:
        raise InputError("no Hugging Face token: set HF_TOKEN or log in with 'hf auth login'")
    api = _hub_api(token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="dataset",
            allow_patterns=UPLOAD_PATTERNS,
            commit_message=f"Upload jsnsynth dataset ({folder.name})",
        )
    except Exception as exc:  # the hub client raises many types (HTTP, connection, OS errors)
        raise OutputError(_hub_error_message(exc, repo_id)) from None
    return f"https://huggingface.co/datasets/{repo_id}"


def _hub_error_message(exc: Exception, repo_id: str) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    first_line = (str(exc).splitlines() or [""])[0][:200]
    if status in (401, 403):
        return f"the Hugging Face Hub refused the token for '{repo_id}' (HTTP {status}); check HF_TOKEN or log in again"
    if status is not None:
        return f"the Hugging Face Hub rejected the upload to '{repo_id}' (HTTP {status}: {first_line})"
    return f"could not reach the Hugging Face Hub ({exc.__class__.__name__}: {first_line}); check the network"
