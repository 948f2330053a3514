"""Where a model comes from: the bundled default, a local Hugging Face directory, or a hub repo id.

Only safetensors are read. A directory that holds only pickled weights (``pytorch_model.bin``, ``.pt``,
``.ckpt``, ...) is refused: unpickling can run arbitrary code.
"""

from __future__ import annotations

import os
from pathlib import Path

from refimpl.errors import CheckpointError, InputError
from refimpl.sources.safetensors_reader import SafetensorsFile, read_regular, short, strict_json

PACKAGE_MODELS = Path(__file__).resolve().parents[1] / "models"
# names accepted by load(); None means "organism". The two organisms: the same world, GPT-Neo and GPT-2.
BUNDLED = {"organism": PACKAGE_MODELS / "organism", "organism-gpt2": PACKAGE_MODELS / "organism-gpt2"}
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
    "refimpl_tokenizer.json",  # tokenizer_files.DECLARATION
]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
MAX_INDEX_BYTES = 64 * 1024 * 1024  # the 2.7B model's index is 30 kB


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
    if revision is not None and not isinstance(revision, str):
        raise InputError(f"revision must be a string or None, got {type(revision).__name__}")
    if source is None:
        source = DEFAULT_MODEL
    if not isinstance(source, (str, os.PathLike)) or isinstance(source, bytes):
        raise InputError(f"source must be a bundled name, a directory or a hub id (str or os.PathLike), "
                         f"got {type(source).__name__}")
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
        if not isinstance(source, str):
            raise InputError(f"source must be a str path, got a {type(source).__name__} path")
    if not source.strip():
        raise InputError("source is an empty string; pass None for the default model or a directory")
    if "\0" in source:
        raise InputError(f"source {short(source)} contains a NUL character")
    if source in BUNDLED:
        path = BUNDLED[source]
        if not (path / "config.json").exists():
            raise CheckpointError(f"the bundled model {source!r} is missing from the package ({path})")
        return path
    path = Path(source)
    try:
        exists, is_dir, is_file = path.exists(), path.is_dir(), path.is_file()
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot use {short(source)} as a model directory: {exc}") from None
    if exists:
        if is_dir:
            return path
        if is_file and path.suffix in PICKLE_SUFFIXES:
            raise pickle_refusal(str(path))
        kind = "a file" if is_file else "not a directory (a FIFO, device or socket)"
        raise CheckpointError(f"{path} is {kind}; pass the Hugging Face model directory that contains it")
    text = source
    looks_like_path = text.startswith((".", "/", "~")) or os.sep in text.replace("/", "") or text.count("/") > 1
    if looks_like_path:
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


def shard_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a shard file name inside the model folder (None when it can)."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a file name"
    if not name or name in (".", ".."):
        return "is not a file name"
    if "\0" in name:
        return "contains a NUL character"
    if os.path.isabs(name) or name.startswith(("/", "\\", "~")):
        return "is an absolute path"
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        return "contains a path separator (shards must sit in the model folder itself)"
    if ".." in name:
        return "contains '..'"
    return None


def read_index(folder: Path) -> dict[str, str]:
    """The ``weight_map`` of ``model.safetensors.index.json``: tensor key -> shard file name in ``folder``."""
    index_path = folder / SHARD_INDEX
    index = strict_json(read_regular(index_path, folder, MAX_INDEX_BYTES), f"{index_path} (safetensors index)")
    if not isinstance(index, dict):
        raise CheckpointError(f"{index_path} is not a valid safetensors index: not a JSON object")
    if "weight_map" not in index:
        raise CheckpointError(f"{index_path} is not a valid safetensors index: it has no 'weight_map'")
    weight_map = index["weight_map"]
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: 'weight_map' must be an object of tensor name -> shard file name, "
                              f"got {type(weight_map).__name__}")
    for key, name in weight_map.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{index_path}: weight_map maps {short(key, 80)} to a {type(name).__name__}, "
                                  "not a shard file name")
        problem = shard_name_problem(name)
        if problem:
            raise CheckpointError(f"{index_path}: shard {short(name, 120)} (for {short(key, 80)}) {problem}; refused")
    return weight_map


def open_safetensors(folder: Path, mmap: bool = True) -> dict[str, SafetensorsFile]:
    """Map every tensor key of the checkpoint in ``folder`` to the file holding it (single or sharded).

    Only regular files inside ``folder`` are opened (a Hugging Face cache snapshot may link into its blobs).
    """
    index_path = folder / SHARD_INDEX
    indexed = os.path.lexists(index_path)
    weight_map: dict[str, str] = {}
    if indexed:
        weight_map = read_index(folder)
        names = sorted(set(weight_map.values()))
    elif os.path.lexists(folder / SINGLE_FILE):
        names = [SINGLE_FILE]
    else:
        try:
            names = sorted(p.name for p in folder.glob("*.safetensors"))
            pickled = not names and any(p.suffix in PICKLE_SUFFIXES for p in folder.iterdir())
        except OSError as exc:
            raise CheckpointError(f"cannot list {folder}: {exc.strerror or exc}") from None
        if pickled:
            raise pickle_refusal(str(folder))
        if not names:
            raise CheckpointError(f"{folder} holds no model.safetensors (nor a sharded index)")
    where: dict[str, SafetensorsFile] = {}
    for name in names:
        path = folder / name
        if indexed and not os.path.lexists(path):
            raise CheckpointError(f"shard {name} listed in {SHARD_INDEX} is missing from {folder}")
        shard = SafetensorsFile(path, folder=folder, mmap=mmap)
        for key in shard.keys():
            if key in where:
                raise CheckpointError(f"tensor {key!r} appears in both {where[key].path.name} and {name}")
            where[key] = shard
    for key, name in weight_map.items():
        if key not in where or where[key].path.name != name:
            raise CheckpointError(f"{SHARD_INDEX} places {short(key, 80)} in {name}, but that shard does not hold it")
    return where
