"""Where a model comes from: the bundled default, a local Hugging Face directory, or a hub repo id.

Only safetensors are read. A directory that holds only pickled weights (``pytorch_model.bin``, ``.pt``,
``.ckpt``, ...) is refused: unpickling can run arbitrary code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import CheckpointError
from .safetensors_reader import SafetensorsFile

PACKAGE_MODELS = Path(__file__).resolve().parent / "models"
BUNDLED = {"organism": PACKAGE_MODELS / "organism"}  # names accepted by load(); None means "organism"
DEFAULT_MODEL = "organism"
HUB_FILES = [
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"


def pickle_refusal(what: str) -> CheckpointError:
    return CheckpointError(
        f"{what} holds only pickled weights. refimpl never unpickles a checkpoint, because loading a pickle "
        "can execute arbitrary code. Convert it once, in an environment you trust, to safetensors, e.g. "
        "python -c \"from transformers import GPTNeoForCausalLM as M; "
        "M.from_pretrained('IN_DIR').save_pretrained('OUT_DIR', safe_serialization=True)\" "
        "and load OUT_DIR."
    )


def resolve_source(source: str | os.PathLike | None, revision: str | None = None) -> Path:
    """Return a local directory holding ``config.json`` and safetensors weights for ``source``."""
    if source is None:
        source = DEFAULT_MODEL
    if isinstance(source, str) and source in BUNDLED:
        path = BUNDLED[source]
        if not (path / "config.json").exists():
            raise CheckpointError(f"the bundled model {source!r} is missing from the package ({path})")
        return path
    path = Path(source)
    if path.exists():
        if path.is_file():
            if path.suffix in PICKLE_SUFFIXES:
                raise pickle_refusal(str(path))
            raise CheckpointError(f"{path} is a file; pass the Hugging Face model directory that contains it")
        return path
    text = str(source)
    looks_like_path = text.startswith((".", "/", "~")) or os.sep in text.replace("/", "") or text.count("/") > 1
    if looks_like_path or not text:
        raise CheckpointError(f"no such model directory: {text!r}")
    return _snapshot_from_hub(text, revision)


def _snapshot_from_hub(repo_id: str, revision: str | None) -> Path:
    """Download (or find in the HF cache) the config, safetensors and tokenizer files of ``repo_id``."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a runtime dependency
        raise CheckpointError(f"loading {repo_id!r} from the hub needs huggingface_hub: {exc}") from None
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES)
    except LocalEntryNotFoundError:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        raise CheckpointError(
            f"{repo_id!r} (revision {revision or 'main'}) is not in the Hugging Face cache and {why}; "
            "download it once with network access, or pass a local directory"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{repo_id!r} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"no hub repository {repo_id!r} (or it is private)") from None
    except Exception as exc:  # network failures and the like, with their own message
        raise CheckpointError(f"could not fetch {repo_id!r} from the hub: {exc}") from None
    return Path(folder)


def open_safetensors(folder: Path) -> dict[str, SafetensorsFile]:
    """Map every tensor key of the checkpoint in ``folder`` to the file holding it (single or sharded)."""
    index_path = folder / SHARD_INDEX
    if index_path.exists():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{index_path} is not a valid safetensors index: {exc}") from None
        names = sorted(set(weight_map.values()))
    elif (folder / SINGLE_FILE).exists():
        names = [SINGLE_FILE]
    else:
        names = sorted(p.name for p in folder.glob("*.safetensors"))
        if not names:
            if any(p.suffix in PICKLE_SUFFIXES for p in folder.iterdir()):
                raise pickle_refusal(str(folder))
            raise CheckpointError(f"{folder} holds no model.safetensors (nor a sharded index)")
    where: dict[str, SafetensorsFile] = {}
    for name in names:
        path = folder / name
        if not path.exists():
            raise CheckpointError(f"shard {name} listed in {SHARD_INDEX} is missing from {folder}")
        shard = SafetensorsFile(path)
        for key in shard.keys():
            if key in where:
                raise CheckpointError(f"tensor {key!r} appears in both {where[key].path.name} and {name}")
            where[key] = shard
    if index_path.exists():
        for key, name in weight_map.items():
            if key not in where or where[key].path.name != name:
                raise CheckpointError(f"{SHARD_INDEX} places {key!r} in {name}, but that shard does not hold it")
    return where
