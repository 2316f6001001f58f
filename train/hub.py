"""The Hugging Face hub at the edge: tell a local path from a hub id, and find out with one quick
request whether the hub answers, so an offline machine gets one line instead of a minute of
retries inside transformers/datasets and a long traceback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from medvit_edge.errors import UserError, printable

Kind = Literal["model", "dataset"]

# Long enough for a slow link to answer, short enough that a black-holed network fails fast.
HUB_TIMEOUT_S = 5.0
OFFLINE_HINT = (
    "use --model tiny|small (random init, the from-scratch recipe by default) and a local --data "
    "folder or split CSV to train offline"
)
_TRUE = {"1", "on", "yes", "true"}  # huggingface_hub's own reading of its boolean variables


def looks_like_local_path(value: str) -> bool:
    """True when ``value`` can only be meant as a file or folder: a hub id is ``name`` or
    ``owner/name`` (letters, digits, ``-_.``), so a leading ``.``/``~``/``/``, a ``.csv`` ending,
    a backslash, a second ``/`` or any other character says "path"."""
    if value.startswith((".", "~", "/")) or value.lower().endswith(".csv") or "\\" in value:
        return True
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return True
    return False


def check_model_source(name: str) -> None:
    """Before ``from_pretrained``: a local folder must hold a model, a path must exist, and a hub
    id must be reachable (or cached, when offline)."""
    folder = Path(name)
    if folder.exists():
        if not (folder / "config.json").is_file():
            raise UserError(
                f"{printable(name)}: not a model folder (no config.json); "
                "expected a save_pretrained folder, a hub id, or tiny|small"
            )
        return
    ensure_hub_reachable(name, "model")


def ensure_hub_reachable(repo_id: str, kind: Kind) -> None:
    """Return when ``repo_id`` is a local path or the hub can serve it; otherwise raise one
    ``UserError`` line saying why and how to work offline. Makes at most one request, no retries."""
    if Path(repo_id).exists():
        return
    if looks_like_local_path(repo_id):
        raise UserError(f"{printable(repo_id)}: no such file or folder")
    if is_offline(kind):
        if is_cached(repo_id, kind):
            return
        raise UserError(
            f"offline mode (HF_HUB_OFFLINE) is on and {kind} '{printable(repo_id)}' is not in the "
            f"local Hugging Face cache: {OFFLINE_HINT}"
        )
    _ask_hub_once(repo_id, kind)


def is_offline(kind: Kind) -> bool:
    """The offline switches, read now (huggingface_hub reads them once, at import)."""
    from huggingface_hub import constants

    names = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE" if kind == "model" else "HF_DATASETS_OFFLINE"]
    return constants.HF_HUB_OFFLINE or any(
        os.environ.get(name, "").strip().lower() in _TRUE for name in names
    )


def is_cached(repo_id: str, kind: Kind) -> bool:
    """Whether transformers/datasets can load ``repo_id`` without the network."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    if kind == "model":
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    try:
        snapshot_download(repo_id, repo_type="dataset", local_files_only=True)
        return True
    except (OSError, ValueError):  # LocalEntryNotFoundError is both
        return _in_datasets_cache(repo_id)


def _in_datasets_cache(repo_id: str) -> bool:
    """datasets keeps prepared copies as ``<cache>/<owner>___<snake_name>/<config>/<version>/<hash>``."""
    try:
        from datasets import config
        from datasets.naming import camelcase_to_snakecase
    except ImportError:
        return False
    parts = repo_id.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = Path(config.HF_DATASETS_CACHE).expanduser() / "___".join(parts)
    return any(p.is_dir() for p in root.glob("*/*/*"))


def _ask_hub_once(repo_id: str, kind: Kind) -> None:
    """One metadata request (``HfApi.model_info``/``dataset_info`` never retry), mapped to one line."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    shown = printable(repo_id)
    api = HfApi()
    ask = api.model_info if kind == "model" else api.dataset_info
    try:
        ask(repo_id, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        raise UserError(
            f"{kind} '{shown}' is gated on the Hugging Face hub: accept its terms on huggingface.co "
            "and log in with `hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"'{shown}': no such local file or folder, and no {kind} of that name on the Hugging Face hub "
            "(a private one needs `hf auth login`)"
        ) from None
    except HfHubHTTPError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the Hugging Face hub refused {kind} '{shown}': {printable(first_line)}") from None
    except _network_errors():
        raise UserError(_unreachable_message(repo_id, kind)) from None


def _unreachable_message(repo_id: str, kind: Kind) -> str:
    message = f"cannot reach the Hugging Face hub for '{printable(repo_id)}' (offline?): "
    if is_cached(repo_id, kind):
        # transformers/datasets would fall back on the cache only after ~25 s of retries.
        return message + f"it is in the local cache, set HF_HUB_OFFLINE=1 to use that copy; or {OFFLINE_HINT}"
    return message + OFFLINE_HINT


def _network_errors() -> tuple[type[BaseException], ...]:
    """requests' errors (and huggingface_hub's OfflineModeIsEnabled) are OSErrors; newer
    huggingface_hub releases speak httpx, whose transport errors are not."""
    errors: tuple[type[BaseException], ...] = (OSError,)
    try:
        import httpx

        errors += (httpx.TransportError,)
    except ImportError:
        pass
    return errors
