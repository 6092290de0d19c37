"""Loading pretrained causal LMs (validated first, see :mod:`.files`) and their tokenizers.

Loading is always offline and safe: ``local_files_only=True``, ``trust_remote_code=False``,
``use_safetensors=True`` (pickle ``.bin``/``.pt`` weights are refused, never opened),
``dtype=float32``, ``attn_implementation="eager"`` (PyTorch's CPU SDPA kernel has no
forward-mode AD). One-line ``ValueError``\\ s: missing tensors (which transformers would
silently initialise at random), non-finite weights, a malformed ``tokenizer.json``, a
tokenizer that transformers loads as another class than the one saved (checked on a sample
text against the folder's ``tokenizer.json``), and a decoder whose structure
:func:`.arch.discover` cannot find (naming the missing piece).
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .arch import Arch, discover
from .files import (MODELS_DIR_ENV, LMRef, inspect_model, list_models, model_fingerprint, models_root,
                    one_gguf_reader, parsed_once, read_gguf_metadata, resolve_model, weight_files)

__all__ = [
    "LMRef",
    "LoadedLM",
    "models_root",
    "list_models",
    "resolve_model",
    "inspect_model",
    "load_lm",
    "resolve_device",
    "model_fingerprint",
    "tokenizer_fingerprint",
    "read_gguf_metadata",
    "convert_to_folder",
    "check_tokenizer",
    "MODELS_DIR_ENV",
    "TOKENIZER_SAMPLE",
]

TOKENIZER_SAMPLE = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the sun! "
                    "\"Mom,\" she asked, \"can we go to the park?\" They walked 3 blocks and saw 12 ducks.")
"""The text whose tokens must be the same through the loaded tokenizer and the saved ``tokenizer.json``."""


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
        """The width of ``r`` (the last hidden state): the residual width, unless a
        projection follows the final norm (OPT-350m's ``project_out``)."""
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


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _saved_tokenizer(ref: LMRef):
    """The folder's ``tokenizer.json`` as the ``tokenizers`` library reads it (``None`` when
    there is none), or a one-line error when it is malformed."""
    f = ref.path / "tokenizer.json"
    if ref.format != "hf" or not f.is_file():
        return None
    import json

    from tokenizers import Tokenizer

    try:
        obj = json.loads(f.read_text(encoding="utf-8"))
        if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
            raise ValueError("no tokenizer model in it")
        for key in ("pre_tokenizer", "decoder", "normalizer", "post_processor"):
            if key in obj and obj[key] is not None and not isinstance(obj[key], (dict, list)):
                raise ValueError(f"'{key}' has the wrong type")
        if not isinstance(obj.get("added_tokens"), list):
            raise ValueError("'added_tokens' is missing or not a list")
        return Tokenizer.from_str(json.dumps(obj))
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise ValueError(f"{ref.name}/tokenizer.json is malformed: {_first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exception on bad JSON
        raise ValueError(f"{ref.name}/tokenizer.json is malformed: {_first_line(e)}") from None


def check_tokenizer(ref: LMRef, tok: Any, saved: Any, sample: str = TOKENIZER_SAMPLE) -> None:
    """``ValueError`` unless ``sample`` has the same tokens through the loaded tokenizer
    ``tok`` as through the folder's saved ``tokenizer.json`` (``saved``; skipped when ``None``)."""
    if saved is None:
        return
    want = saved.encode(sample, add_special_tokens=False).ids
    got = list(tok(sample, add_special_tokens=False)["input_ids"])
    if got != want:
        i = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        raise ValueError(f"{ref.name}: transformers loads its tokenizer as {type(tok).__name__}, which does not "
                         f"reproduce the folder's tokenizer.json on a sample text ({len(got)} vs {len(want)} tokens, "
                         f"first difference at token {i}); the probe contexts would not be the model's tokens. Save "
                         f"the tokenizer as the class transformers uses for '{ref.model_type}' or fix tokenizer_config.json")


def _tokenizer_from(ref: LMRef):
    from transformers import AutoTokenizer

    saved = _saved_tokenizer(ref)
    try:
        if ref.format == "gguf":
            tok = AutoTokenizer.from_pretrained(str(ref.path.parent), gguf_file=ref.path.name, local_files_only=True,
                                                trust_remote_code=False)
        else:
            tok = AutoTokenizer.from_pretrained(str(ref.path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{ref.name}: cannot load its tokenizer: {_first_line(e)}") from None
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{ref.name}: the tokenizer is not a fast tokenizer (offsets are needed to build probes)")
    check_tokenizer(ref, tok, saved)
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
        raise ValueError(f"cannot load {ref.name}: {_first_line(e)}") from None
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
    model.eval()
    for n, p in model.named_parameters():
        p.requires_grad_(False)
        if not torch.isfinite(p).all():
            raise ValueError(f"{ref.name}: weight '{n}' contains NaN or inf")
    tok = _tokenizer_from(ref)  # a bad tokenizer fails before the structure probe
    if device != "cpu":
        model.to(device)
    try:
        arch = discover(model)
    except ValueError as e:
        raise ValueError(f"{ref.name}: {e}") from None
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
        with parsed_once(ref):  # a GGUF is parsed once for the checks and the load
            return load_lm(resolve_model(ref), device, progress)
    device = resolve_device(device)
    files = weight_files(ref)
    key = (str(ref.path), device, tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    with _LOAD_LOCK:
        if key in _LOADED:
            if progress:
                progress(1, 1, f"loaded {ref.name} (already in memory)")
            return _LOADED[key]
        if progress:
            progress(0, 1, f"loading {ref.name}" + (" (dequantising GGUF)" if ref.format == "gguf" else ""))
        if ref.format == "gguf":
            with one_gguf_reader(ref.path):  # the config, tokenizer and weights share one parse
                lm = _load_uncached(ref, device)
        else:
            lm = _load_uncached(ref, device)
        _LOADED.clear() if len(_LOADED) >= _MAX_LOADED else None
        _LOADED[key] = lm
        if progress:
            progress(1, 1, f"loaded {ref.name} in {lm.load_s:.0f} s")
        return lm


def convert_to_folder(ref: LMRef | str | Path, out: Path | str, progress: Callable | None = None) -> LMRef:
    """Write a loaded model (e.g. a dequantised GGUF) as an HF folder: float32
    ``model.safetensors`` + ``config.json`` + tokenizer files, atomically (a temporary
    sibling folder renamed into place). ``out`` must not exist. ``progress(done, total,
    message)`` hears each phase (load, weights, config and tokenizer, check)."""
    import shutil
    import tempfile

    from safetensors.torch import save_file

    out = Path(out).expanduser()
    if out.exists():
        raise ValueError(f"{out} already exists; choose a new folder")
    def say(i: int, msg: str) -> None:
        if progress:
            progress(i, 4, msg)

    lm = load_lm(ref, progress=(lambda d, n, m: say(0, m)) if progress else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        say(1, f"writing {len(lm.model.state_dict())} tensors (float32) to model.safetensors")
        sd = lm.model.state_dict()
        tied = {"lm_head.weight"} if getattr(lm.model.config, "tie_word_embeddings", False) else set()
        save_file({k: v.detach().cpu().contiguous() for k, v in sd.items() if k not in tied},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        say(2, "writing config.json and the tokenizer")
        cfg = lm.model.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        cfg.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(3, f"checking {out.name}")
    ref_out = inspect_model(out)
    say(4, f"wrote {out}")
    return ref_out
