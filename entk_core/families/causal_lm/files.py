"""Causal LMs on disk: finding, validating and fingerprinting them without loading weights.

A model is either

* an **HF folder**: ``config.json`` + ``*.safetensors`` weights + tokenizer files
  (``tokenizer.json``, or ``tokenizer.model``/``vocab.json`` + ``merges.txt``), as written
  by ``save_pretrained``; or
* a **GGUF file** (``*.gguf``, e.g. the Gemma-3-270M Q4_K_M package), read with the
  ``gguf`` package's reader (header, metadata and the extent of every tensor: a truncated
  file is not a usable model) and dequantised to float32 on load.

Models are found in the models folder, ``$ENTK_MODELS_DIR`` (default ``./models``): each
sub-folder with a ``config.json`` and each ``*.gguf`` file directly inside it is one
model, named by its folder or file name. A model may also be given by its path. Every
problem is a one-line ``ValueError`` naming the file.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LMRef",
    "models_root",
    "list_models",
    "resolve_model",
    "inspect_model",
    "model_fingerprint",
    "read_gguf_metadata",
    "causal_lm_types",
    "MODELS_DIR_ENV",
    "PICKLE_SUFFIXES",
    "TOKENIZER_FILES",
]

MODELS_DIR_ENV = "ENTK_MODELS_DIR"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
GGUF_MODEL_TYPE = {"gemma3": "gemma3_text"}
"""GGUF architecture names whose transformers model type differs (the rest are equal)."""


def models_root() -> Path:
    """The models folder: ``$ENTK_MODELS_DIR`` or ``./models``."""
    return Path(os.environ.get(MODELS_DIR_ENV, "models")).expanduser()


@dataclass(frozen=True)
class LMRef:
    """A model on disk, validated without loading its weights.

    Attributes:
      name: the display name (folder or file name).
      path: the HF folder, or the ``.gguf`` file.
      format: ``"hf"`` or ``"gguf"``.
      model_type: ``config.model_type`` (``gemma3_text``, ``llama``, ``gpt2``...).
      info: a few facts read from the config/header: ``n_layers``, ``d_model``,
        ``vocab_size`` (when known), ``title``.
    """

    name: str
    path: Path
    format: str
    model_type: str
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def n_layers(self) -> int | None:
        return self.info.get("n_layers")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "format": self.format, "model_type": self.model_type,
                **self.info}


def causal_lm_types() -> dict[str, str]:
    """``{model_type: class name}`` of every causal-LM class ``transformers`` has."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return dict(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _check_model_type(name: str, mt: Any) -> str:
    if not isinstance(mt, str) or not mt:
        raise ValueError(f"{name}/config.json has no model_type: not a transformers model folder")
    if mt not in causal_lm_types():
        raise ValueError(f"unsupported architecture '{mt}' ({name}): transformers has no causal-LM class for it")
    return mt


# ------------------------------------------------------------------ GGUF
_GGUF_MEMO: dict[tuple, dict[str, Any]] = {}
_GGUF_LOCK = threading.Lock()


_ONE_READER_LOCK = threading.RLock()  # re-entrant: a CLI command's block may hold a load's block


@functools.lru_cache(maxsize=4)
def _plain_reader(base: type) -> type:
    """``base`` (``gguf.GGUFReader``) slicing a plain ``ndarray`` view of its memory map instead
    of the ``np.memmap`` itself. The reader cuts every element of the metadata arrays out one at
    a time (the Gemma vocabulary: 786,000 cuts), and each ``np.memmap`` cut runs Python code
    (``__getitem__``, ``__array_finalize__``): parsing the Gemma GGUF takes 3 s instead of 11 s.
    The fields and tensors are the same values (``tests/unit/test_lm_models.py``); the tensors'
    data are ``ndarray`` views of the same mapped file."""

    class _PlainReader(base):
        def _get(self, offset, dtype, count=1, override_order=None):
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self._plain = self.data.view(np.ndarray)
            count = int(count)
            arr = plain[offset:offset + np.dtype(dtype).itemsize * count].view(dtype=dtype)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    _PlainReader.__name__ = _PlainReader.__qualname__ = base.__name__
    return _PlainReader


@contextlib.contextmanager
def one_gguf_reader(path: Path | str):
    """Within the block, every ``gguf.GGUFReader(path)`` of this file (ours, and the config,
    tokenizer and weight loaders of ``transformers``, which import it at call time) returns
    one reader, parsed once (through :func:`_plain_reader`). Parsing the Gemma GGUF's
    262,144-token vocabulary takes about 3 s (11 s with the package's reader as it is), and a
    load used to parse it four times. Other files read as usual; the
    reader is dropped when the block ends."""
    import gguf

    target = Path(path).resolve()
    orig = gguf.GGUFReader
    made: list = []

    class _OneReader(orig):  # a subclass, so isinstance checks against gguf.GGUFReader still hold
        def __new__(cls, p, *args, **kwargs):
            # an instance of orig, not of this class: Python does not run __init__ again
            if args or kwargs or Path(p).resolve() != target:
                return orig(p, *args, **kwargs)
            if not made:
                made.append(_plain_reader(orig)(p))
            return made[0]

    with _ONE_READER_LOCK:
        gguf.GGUFReader = _OneReader
        try:
            yield
        finally:
            gguf.GGUFReader = orig
            made.clear()


def parsed_once(spec: Path | str | None):
    """:func:`one_gguf_reader` for ``spec`` when it names a GGUF file (a path, or a name in
    :func:`models_root`), else a no-op: a command that resolves a model and then loads it
    parses the file once."""
    if spec:
        for p in (Path(str(spec)).expanduser(), models_root() / str(spec)):
            with contextlib.suppress(OSError, ValueError):
                if p.suffix.lower() == ".gguf" and p.is_file():
                    return one_gguf_reader(p)
    return contextlib.nullcontext()


def read_gguf_metadata(path: Path | str) -> dict[str, Any]:
    """The scalar key/values of a GGUF file's metadata (array values are replaced by their
    length under ``key + "#len"``), read with ``gguf.GGUFReader``, which also maps every
    tensor: a file cut short anywhere is refused. Memoised per (path, size, mtime).

    Raises ``ValueError`` naming the file for anything that is not a complete GGUF file."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _GGUF_LOCK:
        if key in _GGUF_MEMO:
            return dict(_GGUF_MEMO[key])
    try:
        from gguf import GGUFReader, GGUFValueType  # at call time: one_gguf_reader may stand in for it
    except ImportError:
        raise ValueError("the gguf package is not installed (pip install -r requirements.txt)") from None
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError(f"corrupt GGUF file {path.name}: no GGUF magic number")
    try:
        reader = _plain_reader(GGUFReader)(path)
        meta: dict[str, Any] = {}
        for name, f in reader.fields.items():
            if f.types and f.types[0] == GGUFValueType.ARRAY:
                meta[name + "#len"] = len(f.data)
            else:
                v = f.contents()
                meta[name] = v.item() if hasattr(v, "item") else v
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
        if end > st.st_size:
            raise ValueError(f"tensor data ends at byte {end}, beyond the file")
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error, UnicodeDecodeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "reshape" in msg or "beyond" in msg or isinstance(e, IndexError):
            msg = f"truncated ({st.st_size} bytes; {msg})"
        raise ValueError(f"corrupt GGUF file {path.name}: {msg}") from None
    meta["GGUF.tensor_count"] = len(reader.tensors)
    with _GGUF_LOCK:
        _GGUF_MEMO[key] = meta
    return dict(meta)


def _inspect_gguf(path: Path) -> LMRef:
    meta = read_gguf_metadata(path)
    arch = meta.get("general.architecture")
    try:
        from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    except ImportError:  # pragma: no cover - transformers is pinned
        GGUF_CONFIG_MAPPING = {}
    supported = sorted(k for k in GGUF_CONFIG_MAPPING if k not in ("general", "tokenizer"))
    if arch not in supported:
        raise ValueError(f"{path.name}: unsupported GGUF architecture '{arch}'; transformers reads "
                         f"{', '.join(supported)}")
    info = {
        "n_layers": meta.get(f"{arch}.block_count"),
        "d_model": meta.get(f"{arch}.embedding_length"),
        "vocab_size": meta.get("tokenizer.ggml.tokens#len"),
        "title": meta.get("general.name"),
    }
    return LMRef(path.name, path.resolve(), "gguf", GGUF_MODEL_TYPE.get(arch, arch), info)


# ------------------------------------------------------------------ HF folders
def _check_safetensors(f: Path) -> int:
    """Validate one safetensors file's header and sizes; return its tensor count."""
    size = f.stat().st_size
    try:
        with open(f, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise ValueError("shorter than a header")
            n = struct.unpack("<Q", head)[0]
            if n > min(size - 8, 100 * 2**20):
                raise ValueError("header length beyond the file")
            header = json.loads(fh.read(n))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt safetensors file {f.name}: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"corrupt safetensors file {f.name}: header is not a JSON object")
    end = 0
    for k, v in header.items():
        if k == "__metadata__":
            continue
        try:
            end = max(end, int(v["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise ValueError(f"corrupt safetensors file {f.name}: bad entry for tensor '{k}'") from None
    if 8 + n + end > size:
        raise ValueError(f"corrupt safetensors file {f.name}: truncated ({size} bytes, header promises {8 + n + end})")
    return sum(1 for k in header if k != "__metadata__")


def _inspect_folder(path: Path) -> LMRef:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{path} is not a model folder: no config.json")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path.name}/config.json is not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ValueError(f"{path.name}/config.json has no model_type: not a transformers model folder")
    weights = sorted(path.glob("*.safetensors"))
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not weights:
        if pickles:
            raise ValueError(f"{path.name} has only pickle weights ({', '.join(pickles[:3])}); refusing to unpickle "
                             f"them: save the model as safetensors (save_pretrained(..., safe_serialization=True))")
        raise ValueError(f"{path.name} has no *.safetensors weights")
    for w in weights:
        _check_safetensors(w)
    if not any((path / t).is_file() for t in TOKENIZER_FILES):
        raise ValueError(f"{path.name} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)})")
    mt = _check_model_type(path.name, cfg["model_type"])
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg

    def num(*keys):
        v = next((text[k] for k in keys if k in text), None)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    info = {"n_layers": num("num_hidden_layers", "n_layer", "num_layers"), "d_model": num("hidden_size", "n_embd"),
            "vocab_size": num("vocab_size")}
    return LMRef(path.name, path.resolve(), "hf", mt, info)


def inspect_model(path: Path | str) -> LMRef:
    """Validate a model folder or GGUF file without loading its weights."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}")
    if path.is_dir():
        return _inspect_folder(path)
    if path.suffix.lower() == ".gguf":
        return _inspect_gguf(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise ValueError(f"{path.name} is a pickle file; refusing to unpickle it (use safetensors or GGUF)")
    raise ValueError(f"{path} is neither a model folder nor a .gguf file")


def list_models(root: Path | str | None = None) -> list[tuple[str, LMRef | Exception]]:
    """Every candidate in the models folder, sorted by name: ``(name, LMRef)`` for a good
    model, ``(name, error)`` for a folder or ``.gguf`` file that is not a usable model."""
    root = Path(root) if root is not None else models_root()
    if not root.is_dir():
        return []
    out: list[tuple[str, LMRef | Exception]] = []
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or (p / "provenance.json").is_file() and not (p / "config.json").exists():
            continue  # hidden entries and probe sets kept beside the models
        if p.is_dir() or p.suffix.lower() == ".gguf":
            try:
                out.append((p.name, inspect_model(p)))
            except (ValueError, OSError) as e:
                out.append((p.name, e))
    return out


def resolve_model(spec: str | Path, root: Path | str | None = None, *, confine: bool = False) -> LMRef:
    """A model given by path, or by name in the models folder.

    With ``confine=True`` (dashboard URLs) only names of entries directly inside the
    models folder are accepted."""
    root = Path(root) if root is not None else models_root()
    spec_s = str(spec)
    if confine:
        if not spec_s or "/" in spec_s or "\\" in spec_s or spec_s in (".", "..") or "\0" in spec_s:
            raise ValueError(f"'{spec_s[:60]}' is not a model name in the models folder")
        return inspect_model(root / spec_s)
    p = Path(spec_s).expanduser()
    if p.exists():
        return inspect_model(p)
    if (root / spec_s).exists():
        return inspect_model(root / spec_s)
    names = [n for n, r in list_models(root) if isinstance(r, LMRef)]
    raise FileNotFoundError(f"no model '{spec_s}': not a path, and not in the models folder {root} "
                            f"({'models there: ' + ', '.join(names) if names else 'which has no models'})")


# ------------------------------------------------------------------ fingerprints
_FP_LOCK = threading.Lock()
_FP_MEMO: dict[tuple, str] = {}


def weight_files(ref: LMRef) -> list[Path]:
    if ref.format == "gguf":
        return [ref.path]
    return sorted(ref.path.glob("*.safetensors")) + [ref.path / "config.json"]


def model_fingerprint(ref: LMRef) -> str:
    """sha256 (hex, 16 chars) of the model's weight files and config, memoised per
    (path, size, mtime) in this process."""
    files = weight_files(ref)
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    with _FP_LOCK:
        if key in _FP_MEMO:
            return _FP_MEMO[key]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    digest = h.hexdigest()[:16]
    with _FP_LOCK:
        _FP_MEMO[key] = digest
    return digest
