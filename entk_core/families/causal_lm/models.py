"""Pretrained causal LMs on disk: finding, validating, fingerprinting and loading them.

The "runs" of the causal-LM family are *models*, not training runs. A model is either

* an **HF folder**: ``config.json`` + ``*.safetensors`` weights + tokenizer files
  (``tokenizer.json``, or ``tokenizer.model``/``vocab.json`` + ``merges.txt``), as written
  by ``save_pretrained``; or
* a **GGUF file** (``*.gguf``, e.g. the Gemma-3-270M Q4_K_M package), dequantised to
  float32 on load (tens of seconds for 270M parameters; ``python -m entk_core models
  convert`` writes an HF folder once, which then loads in seconds).

Models are found in the models folder, ``$ENTK_MODELS_DIR`` (default ``./models``): each
sub-folder with a ``config.json`` and each ``*.gguf`` file directly inside it is one
model, named by its folder or file name. A model may also be given by its path.

Loading is always offline and safe: ``local_files_only=True``, ``trust_remote_code=False``,
``use_safetensors=True`` (pickle ``.bin``/``.pt`` weights are refused, never opened),
``dtype=float32``, ``attn_implementation="eager"`` (PyTorch's CPU SDPA kernel has no
forward-mode AD). Missing tensors (which transformers would silently initialise at
random), non-finite weights and unsupported architectures are one-line ``ValueError``\\ s.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .arch import Arch, get_arch

__all__ = [
    "LMRef",
    "LoadedLM",
    "models_root",
    "list_models",
    "resolve_model",
    "load_lm",
    "model_fingerprint",
    "tokenizer_fingerprint",
    "read_gguf_metadata",
    "convert_to_folder",
    "MODELS_DIR_ENV",
]

MODELS_DIR_ENV = "ENTK_MODELS_DIR"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
GGUF_ARCH_TO_MODEL_TYPE = {"gemma3": "gemma3_text", "llama": "llama", "mistral": "mistral", "qwen2": "qwen2",
                           "qwen3": "qwen3", "gpt2": "gpt2"}


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
        ``vocab_size`` (when known), ``name``.
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


# ------------------------------------------------------------------ GGUF header
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf_metadata(path: Path | str) -> dict[str, Any]:
    """The scalar key/values of a GGUF file's header (arrays are skipped, their length kept
    under ``key + "#len"``); reads only the header, in well under a second.

    Raises ``ValueError`` naming the file for anything that is not a well-formed GGUF header.
    """
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            def read(n: int) -> bytes:
                b = fh.read(n)
                if len(b) != n:
                    raise EOFError
                return b

            def scalar(t: int):
                fmt = _GGUF_SCALARS[t]
                return struct.unpack(fmt, read(struct.calcsize(fmt)))[0]

            def string() -> str:
                n = struct.unpack("<Q", read(8))[0]
                if n > size:
                    raise ValueError("string length beyond the file")
                return read(n).decode("utf-8", errors="replace")

            def skip(t: int) -> None:
                if t == 8:
                    n = struct.unpack("<Q", read(8))[0]
                    if n > size:
                        raise ValueError("string length beyond the file")
                    fh.seek(n, 1)
                elif t in _GGUF_SCALARS:
                    fh.seek(struct.calcsize(_GGUF_SCALARS[t]), 1)
                else:
                    raise ValueError(f"unknown value type {t}")

            if read(4) != b"GGUF":
                raise ValueError("no GGUF magic number")
            version = struct.unpack("<I", read(4))[0]
            n_tensors, n_kv = struct.unpack("<QQ", read(16))
            if n_kv > 1_000_000 or n_tensors > 10_000_000:
                raise ValueError("implausible header counts")
            meta: dict[str, Any] = {"GGUF.version": version, "GGUF.tensor_count": n_tensors}
            for _ in range(n_kv):
                key = string()
                t = struct.unpack("<I", read(4))[0]
                if t == 8:
                    meta[key] = string()
                elif t == 9:
                    et, n = struct.unpack("<IQ", read(12))
                    if n > size:
                        raise ValueError("array length beyond the file")
                    if et in _GGUF_SCALARS and et != 8:
                        fh.seek(n * struct.calcsize(_GGUF_SCALARS[et]), 1)
                    else:
                        for _ in range(n):
                            skip(et)
                    meta[key + "#len"] = n
                elif t in _GGUF_SCALARS:
                    meta[key] = scalar(t)
                else:
                    raise ValueError(f"unknown value type {t}")
                if fh.tell() > size:
                    raise EOFError
    except EOFError:
        raise ValueError(f"corrupt GGUF file {path.name}: truncated header") from None
    except (ValueError, struct.error, KeyError) as e:
        raise ValueError(f"corrupt GGUF file {path.name}: {e}") from None
    return meta


# ------------------------------------------------------------------ validation
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
    mt = cfg["model_type"]
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    info = {
        "n_layers": text.get("num_hidden_layers", text.get("n_layer")),
        "d_model": text.get("hidden_size", text.get("n_embd")),
        "vocab_size": text.get("vocab_size"),
    }
    get_arch(mt)  # unsupported architecture -> ValueError
    return LMRef(path.name, path.resolve(), "hf", mt, info)


def _inspect_gguf(path: Path) -> LMRef:
    meta = read_gguf_metadata(path)
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCH_TO_MODEL_TYPE:
        raise ValueError(f"{path.name}: unsupported GGUF architecture '{arch}'; supported: "
                         f"{', '.join(GGUF_ARCH_TO_MODEL_TYPE)}")
    info = {
        "n_layers": meta.get(f"{arch}.block_count"),
        "d_model": meta.get(f"{arch}.embedding_length"),
        "vocab_size": meta.get("tokenizer.ggml.tokens#len"),
        "title": meta.get("general.name"),
    }
    return LMRef(path.name, path.resolve(), "gguf", GGUF_ARCH_TO_MODEL_TYPE[arch], info)


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


def _weight_files(ref: LMRef) -> list[Path]:
    if ref.format == "gguf":
        return [ref.path]
    return sorted(ref.path.glob("*.safetensors")) + [ref.path / "config.json"]


def model_fingerprint(ref: LMRef) -> str:
    """sha256 (hex, 16 chars) of the model's weight files and config, memoised per
    (path, size, mtime) in this process."""
    files = _weight_files(ref)
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


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 (hex, 16 chars) of a tokenizer's vocabulary (token -> id, sorted) and class."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    for tok, i in vocab:
        h.update(f"{i}\t{tok}\n".encode("utf-8", errors="surrogatepass"))
    return h.hexdigest()[:16]


# ------------------------------------------------------------------ loading
@dataclass
class LoadedLM:
    """A loaded model and its tokenizer.

    Attributes:
      ref: the :class:`LMRef` it came from.
      model: the ``*ForCausalLM`` module, float32, eval mode, ``requires_grad`` off.
      tokenizer: its (fast) tokenizer.
      arch: the :class:`~.arch.Arch` adapter.
      fingerprint: :func:`model_fingerprint` of the files.
      tokenizer_fingerprint: :func:`tokenizer_fingerprint`.
      load_s: seconds spent loading.
    """

    ref: LMRef
    model: nn.Module
    tokenizer: Any
    arch: Arch
    fingerprint: str
    tokenizer_fingerprint: str
    load_s: float = 0.0

    @property
    def n_layers(self) -> int:
        return len(self.arch.blocks(self.model))

    @property
    def d_model(self) -> int:
        return int(self.arch.unembedding(self.model).shape[1])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def block(self, layer: int) -> nn.Module:
        n = self.n_layers
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n:
            raise ValueError(f"layer {layer} out of range: {self.ref.name} has {n} blocks (0..{n - 1})")
        return self.arch.blocks(self.model)[layer]

    def resolve_params(self, layer: int, params: str | None = None) -> tuple[str, list[str]]:
        """The module path (relative to the block) and the block-relative names of the
        parameters whose eNTK is taken: by default the block's MLP output projection
        (``mlp.down_proj`` / ``mlp.c_proj``); ``params`` is a module path (all its
        parameters) or a parameter path (that one) relative to the block."""
        block = self.block(layer)
        rel = (params or self.arch.mlp_out).strip().strip(".")
        named = dict(block.named_parameters())
        if rel in named:  # a single parameter
            return rel.rsplit(".", 1)[0] if "." in rel else "", [rel]
        try:
            mod = block.get_submodule(rel) if rel else block
        except AttributeError:
            mods = sorted({n.rsplit(".", 1)[0] for n in named if "." in n})
            raise ValueError(f"parameter path '{rel}' matches nothing in block {layer} of {self.ref.name} "
                             f"(its modules: {', '.join(mods)})") from None
        names = [f"{rel}.{n}" if rel else n for n, _ in mod.named_parameters()]
        if not names:
            raise ValueError(f"module '{rel}' in block {layer} has no parameters")
        return rel, names


def _tokenizer_from(ref: LMRef):
    from transformers import AutoTokenizer

    if ref.format == "gguf":
        tok = AutoTokenizer.from_pretrained(str(ref.path.parent), gguf_file=ref.path.name, local_files_only=True,
                                            trust_remote_code=False)
    else:
        tok = AutoTokenizer.from_pretrained(str(ref.path), local_files_only=True, trust_remote_code=False)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{ref.name}: the tokenizer is not a fast tokenizer (offsets are needed to build probes)")
    return tok


def _load_uncached(ref: LMRef, device: str) -> LoadedLM:
    import time

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    t0 = time.perf_counter()
    kw: dict[str, Any] = dict(local_files_only=True, trust_remote_code=False, dtype=torch.float32,
                              attn_implementation="eager", output_loading_info=True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized" is checked below, not logged
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        if ref.format == "gguf":
            model, info = AutoModelForCausalLM.from_pretrained(str(ref.path.parent), gguf_file=ref.path.name, **kw)
        else:
            model, info = AutoModelForCausalLM.from_pretrained(str(ref.path), use_safetensors=True, **kw)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise ValueError(f"cannot load {ref.name}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    missing = [k for k in info.get("missing_keys", []) if k not in getattr(model, "_tied_weights_keys", {})]
    tied = set()
    if getattr(model.config, "tie_word_embeddings", False):
        tied = {"lm_head.weight"}
    missing = [k for k in missing if k not in tied]
    if missing:
        raise ValueError(f"{ref.name}: the weights lack {len(missing)} tensors the config needs (e.g. {missing[0]}); "
                         f"they would be random")
    arch = get_arch(model.config.model_type)
    model.eval()
    for n, p in model.named_parameters():
        p.requires_grad_(False)
        if not torch.isfinite(p).all():
            raise ValueError(f"{ref.name}: weight '{n}' contains NaN or inf")
    if device != "cpu":
        model.to(device)
    tok = _tokenizer_from(ref)
    return LoadedLM(ref, model, tok, arch, model_fingerprint(ref), tokenizer_fingerprint(tok),
                    time.perf_counter() - t0)


_LOAD_LOCK = threading.Lock()
_LOADED: dict[tuple, LoadedLM] = {}
_MAX_LOADED = 1


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; anything else is checked."""
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' requested but CUDA is not available here")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got '{device}'")
    return device


def load_lm(ref: LMRef | str | Path, device: str = "cpu", progress: Callable | None = None) -> LoadedLM:
    """Load a model (validated first), keeping the last one loaded in this process so
    repeated calls (dashboard, layer sweeps) do not reload it."""
    if not isinstance(ref, LMRef):
        ref = resolve_model(ref)
    device = resolve_device(device)
    files = _weight_files(ref)
    key = (str(ref.path), device, tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    with _LOAD_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        if progress:
            progress(0, 1, f"loading {ref.name}" + (" (dequantising GGUF)" if ref.format == "gguf" else ""))
        lm = _load_uncached(ref, device)
        _LOADED.clear() if len(_LOADED) >= _MAX_LOADED else None
        _LOADED[key] = lm
        if progress:
            progress(1, 1, f"loaded {ref.name} in {lm.load_s:.0f} s")
        return lm


def convert_to_folder(ref: LMRef | str | Path, out: Path | str) -> LMRef:
    """Write a loaded model (e.g. a dequantised GGUF) as an HF folder: float32
    ``model.safetensors`` + ``config.json`` + tokenizer files, atomically (a temporary
    sibling folder renamed into place). ``out`` must not exist."""
    import shutil
    import tempfile

    from safetensors.torch import save_file

    out = Path(out).expanduser()
    if out.exists():
        raise ValueError(f"{out} already exists; choose a new folder")
    lm = load_lm(ref)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        sd = lm.model.state_dict()
        tied = {"lm_head.weight"} if getattr(lm.model.config, "tie_word_embeddings", False) else set()
        save_file({k: v.detach().cpu().contiguous() for k, v in sd.items() if k not in tied},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = lm.model.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        cfg.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return inspect_model(out)
