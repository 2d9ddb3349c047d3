"""Hugging Face Hub access as the ecosystem does it (transformers, TRL, datasets): a model or dataset named by its
hub id downloads on demand into the standard Hugging Face cache (HF_HOME, HF_HUB_CACHE, HF_DATASETS_CACHE) and is
read from that cache alone when HF_HUB_OFFLINE=1 (or `grads --offline`).

grads talks no HTTP itself: huggingface_hub, transformers, peft and datasets do, and they read HF_ENDPOINT and
HF_TOKEN (gated and private repos) themselves; grads never reads, logs or writes the token.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def offline() -> bool:
    """Whether the hub is off limits (HF_HUB_OFFLINE=1, or TRANSFORMERS_OFFLINE=1, as huggingface_hub reads them)."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


def datasets_offline() -> bool:
    """The same for datasets, which also honours HF_DATASETS_OFFLINE (it wins over HF_HUB_OFFLINE when set)."""
    import datasets

    return bool(datasets.config.HF_HUB_OFFLINE)


def go_offline() -> None:
    """Keep every load of this process (and of its children) to the local cache, as HF_HUB_OFFLINE=1 does: the
    variables are set, and the libraries that already read them at import are told too."""
    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        sys.modules["datasets"].config.HF_HUB_OFFLINE = sys.modules["datasets"].config.HF_DATASETS_OFFLINE = True


def fetch_hint(repo_id: str, repo_type: str = "model") -> str:
    """How to get a repo into the cache when the hub is off limits."""
    flag, variables = ("", "HF_HUB_OFFLINE") if repo_type == "model" else \
        (f" --repo-type {repo_type}", "HF_HUB_OFFLINE and HF_DATASETS_OFFLINE")
    return (f"fetch it once where the hub is reachable (`hf download {repo_id}{flag}`), or unset {variables} so "
            "that it downloads on demand")


def cached_revision(repo_id: str, filenames: tuple[str, ...], repo_type: str = "model") -> str | None:
    """The commit (40 hex digits) whose files the hub cache serves for `main`: the revision a load without
    `revision=` reads, online (a download moves `main` to the hub's newest commit first) or offline. None when
    none of `filenames` is cached. Reads the cache only: no request is made."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        path = try_to_load_from_cache(repo_id, filename, repo_type=repo_type)
        if isinstance(path, str):  # a path inside snapshots/COMMIT/ (not the "known to be missing" marker)
            return Path(path).parent.name
    return None
