"""Causal language models (paper spec §6: Gemma-3-270M on TinyStories), for any local
decoder-only causal LM of ``transformers`` whose blocks have an MLP output projection
(Gemma 2/3, Llama, Mistral, Qwen2/3, Phi, Phi-3, GPT-NeoX/Pythia, OPT, GPT-2, GPT-J,
Falcon, OLMo, StableLM, ...: the structure is found from the loaded model, :mod:`.arch`),
on a CPU or a GPU.

Unlike the toy families, nothing is trained here: the family's "runs" are pretrained
**models** found in the models folder (``$ENTK_MODELS_DIR``, default ``./models``) or
given by path -- an HF folder (``config.json`` + ``*.safetensors`` + tokenizer files) or
a ``.gguf`` file (:mod:`.models`). The experiment is

1. a **probe set** of stratified story context windows with UPOS/morphology labels
   (:mod:`.probes`);
2. the **LM eNTK** of one block's parameters (default its MLP output projection) on
   those contexts: ``K̃ = (I⊗A) J Jᵀ (I⊗A)``, the full flattened logit eNTK compressed
   to ``d_model`` per context, through matrix-free products with a tail-only recompute
   (:mod:`.operator`), and its top eigenpairs by Lanczos
   (:mod:`entk_core.engine._lanczos`);
3. per-example **signed scores** of each eigenvector, a same-budget **PCA baseline** and
   the **evaluation** (train-selected direction and sign, test AP/AUROC/precision at
   quota/enrichment; :mod:`.evaluation`).

The orchestration (caching, layer sweeps) is :mod:`entk_core.workflows.lm`; the CLI is
``python -m entk_core models|probes|lm-align``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base import FamilyPage, ModelFamily
from .arch import Arch, discover
from .files import LMRef, inspect_model, list_models, models_root, parsed_once, resolve_model
from .models import LoadedLM, convert_to_folder, load_lm, resolve_device
from .probes import DEFAULT_TAGS, ProbeSet, build_probe_set, load_probe_set, read_stories

__all__ = [
    "CausalLMFamily",
    "CausalLMConfig",
    "LMRef",
    "LoadedLM",
    "ProbeSet",
    "Arch",
    "DEFAULT_TAGS",
    "build_probe_set",
    "convert_to_folder",
    "discover",
    "inspect_model",
    "list_models",
    "parsed_once",
    "load_lm",
    "load_probe_set",
    "models_root",
    "read_stories",
    "resolve_device",
    "resolve_model",
]


@dataclass
class CausalLMConfig:
    """Defaults of the LM experiment (spec §6): Lanczos steps and eigenpairs, probe sizes."""

    seed: int = 0
    top: int = 25
    steps: int = 50
    per_tag: int = 128
    context: int = 64


class CausalLMFamily(ModelFamily):
    """Pretrained causal LMs. ``offers("train")`` is ``False``: models come from disk.

    What it offers (:meth:`offers`): ``"models"`` (listing/opening models, not run
    folders), ``"probes"`` (probe-set building), ``"lm-align"`` (the eNTK-vs-PCA
    evaluation) and ``"pca"``; not ``"train"``, ``"accuracy"``, ``"grokking"``,
    ``"align"`` (the run-based command) or ``"beta"``.
    """

    name = "causal-lm"
    title = "Causal language model"
    Config = CausalLMConfig
    default_reduction = "flattened-logit"
    default_top = 25
    has_accuracy = False
    description = ("A pretrained decoder-only causal LM (Gemma, Llama, Mistral, Qwen, Phi, GPT-NeoX, OPT, GPT-2, Falcon, "
                   "OLMo...) read from a local folder or GGUF file. "
                   "Its eNTK is taken for one block's MLP output projection on story context windows; the top "
                   "eigendirections give per-context scores that are compared with part-of-speech and morphology "
                   "labels, against a same-budget PCA of the layer's activations.")

    CAPABILITIES = ModelFamily.CAPABILITIES + ("models", "probes", "lm-align")
    _OFFERS = {"train": False, "import": False, "accuracy": False, "grokking": False, "sweep": False, "align": False,
               "beta": False, "pca": True, "rotation": False, "models": True, "probes": True, "lm-align": True}
    pages = (FamilyPage("Language model", "language-model", "entk_core.families.causal_lm.page", ":material/notes:",
                        order=30),)

    def offers(self, what: str) -> bool:
        if what not in self._OFFERS:
            raise ValueError(f"unknown capability {what!r}; known: {', '.join(self.CAPABILITIES)}")
        return self._OFFERS[what]

    def eigenvector_view(self, cfg: Any) -> str:
        return "contexts"

    # models are this family's "runs"
    def list_models(self, root: Path | str | None = None) -> list[tuple[str, LMRef | Exception]]:
        """Models in the models folder (see :func:`.models.list_models`)."""
        return list_models(root)

    def open_model(self, spec: str | Path, root: Path | str | None = None, confine: bool = False) -> LMRef:
        """A model by path or name (see :func:`.models.resolve_model`)."""
        return resolve_model(spec, root, confine=confine)

    def load(self, ref: LMRef | str | Path, device: str = "cpu") -> LoadedLM:
        return load_lm(ref, device)
