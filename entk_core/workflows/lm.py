"""The language-model experiment (spec §6): per-layer eNTK units, the SAE baseline,
caching, layer sweeps and the report (eNTK against PCA, ICA, SAE and random directions,
:mod:`.lm_report`).

The heavy part is one **unit** per layer, :func:`run_unit`, a pure function
``(model path, probes path, layer, options) -> (arrays, meta)``: it loads what it needs,
caches the activations of one forward pass, runs Lanczos on K̃ and returns numpy arrays
(eigenvalues, Ritz residuals, per-example eNTK scores, PCA scores...) and JSON facts.
Units are independent, so a layer sweep can be spread over workers (Ray) as is.
:func:`layer_entry` wraps a unit in the :class:`~entk_core.store.cache.ArrayCache`
(keyed by the model and probe-set fingerprints, layer, parameters, k, steps and seed),
so a sweep that is interrupted resumes at the first layer not yet stored.

The SAE baseline of the detailed layer is cached on its own (:func:`sae_entry`): it is
trained on the layer's activations at every token of the probe windows, taken from the
eNTK unit's capture pass when that runs in this process (no extra forward pass), else by
a forward pass through blocks ``0..L``.

The evaluation (:func:`evaluate_layer`: ICA, random directions, every table) is cheap and
recomputed from the cached arrays and the probe set's labels every time.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..engine._lanczos import lanczos_topk
from ..families.causal_lm import evaluation as ev
from ..families.causal_lm.models import LMRef, LoadedLM, load_lm
from ..families.causal_lm.operator import KTildeOperator, LMTail
from ..families.causal_lm.probes import AUTHOR_TAGGER, ProbeSet, load_probe_set
from ..families.causal_lm.readouts import logit_effects
from ..families.causal_lm.sae import SAEOptions, sae_scores, train_sae
from ..store.cache import ArrayCache, CacheEntry, default_cache, make_key
from . import lm_report as rep
from .executors import Executor, Unit, UnitResult, make_executor
from .lm_report import format_seconds

__all__ = [
    "LMAlignOptions",
    "run_unit",
    "layer_entry",
    "evaluate_layer",
    "lm_align",
    "parse_layers",
    "estimate_unit_seconds",
    "lm_gflops",
    "cached_layers",
    "peek_layer",
    "layer_unit",
    "lm_align_job",
    "sae_entry",
    "peek_sae",
    "token_activations",
    "format_seconds",
    "method_table",
    "METHODS",
    "METHOD_TITLES",
]

method_table = rep.method_table
METHODS = rep.METHODS
METHOD_TITLES = rep.METHOD_TITLES

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class LMAlignOptions:
    """Options of one LM eNTK unit and its evaluation.

    Attributes:
      top: eigenpairs kept (paper 25); also the PCA budget.
      steps: Lanczos steps = operator products (paper 50).
      seed: the Lanczos start vector's seed.
      params: parameters relative to the block (default: the MLP output projection).
      chunk: contexts per chunk (default: sized for ~1.5 GB of activations).
      device: ``auto``, ``cpu`` or ``cuda``.
      min_count: minimum support of a morphology label (paper 30).
      split_seed: seed of the stratified 50/50 split.
      sae: the SAE baseline of the detailed layer: ``"train"`` (train it when it is not
        cached), ``"cached"`` (only when cached) or ``"off"``.
      sae_latents, sae_k, sae_epochs: the SAE's dictionary size, active latents per token
        and maximum epochs (:class:`~entk_core.families.causal_lm.sae.SAEOptions`).
      baselines: whether ICA and random directions are evaluated (cheap, every layer).
    """

    top: int = 25
    steps: int = 50
    seed: int = 0
    params: str | None = None
    chunk: int | None = None
    device: str = "cpu"
    min_count: int = 30
    split_seed: int = 0
    sae: str = "train"
    sae_latents: int = 4096
    sae_k: int = 32
    sae_epochs: int = 20
    baselines: bool = True

    def sae_options(self) -> SAEOptions:
        return SAEOptions(latents=self.sae_latents, k=self.sae_k, epochs=self.sae_epochs, seed=self.seed)

    def check(self, n: int | None = None) -> None:
        if self.top < 1 or self.steps < 1:
            raise ValueError("--top and --steps must be >= 1")
        if self.top > self.steps:
            raise ValueError(f"--top {self.top} needs at least as many Lanczos --steps (got {self.steps})")
        if n is not None and self.steps > n:
            raise ValueError(f"--steps {self.steps} exceeds the operator size N·d = {n}")
        if self.chunk is not None and self.chunk < 1:
            raise ValueError("--chunk must be >= 1")
        if self.min_count < 1:
            raise ValueError("--min-count must be >= 1")
        if self.sae not in ("train", "cached", "off"):
            raise ValueError(f"--sae must be train, cached or off, got '{self.sae}'")
        if self.sae != "off":
            self.sae_options().check()


def parse_layers(spec: str | Sequence[int] | None, n_layers: int) -> list[int]:
    """``"all"`` / ``"0,4,16"`` / ``"8-17"`` / a list -> sorted layer indices, each checked
    against ``n_layers`` before any range is expanded (``0-999999999`` is refused at once)."""
    if spec is None:
        return []

    def check(x: int) -> int:
        if not 0 <= x < n_layers:
            raise ValueError(f"layer {x} out of range: the model has {n_layers} blocks (0..{n_layers - 1})")
        return x

    out: set[int] = set()
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "all":
            return list(range(n_layers))
        if len(s) > 1000:
            raise ValueError("--layers is too long")
        for part in s.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "-" in part[1:]:
                    a, b = part.split("-", 1) if not part.startswith("-") else (part, "")
                    lo, hi = int(a), int(b)
                    if lo > hi:
                        raise ValueError(f"--layers: the range '{part}' is empty")
                    out.update(range(check(lo), check(hi) + 1))
                else:
                    out.add(check(int(part)))
            except ValueError as e:
                if "out of range" in str(e) or "is empty" in str(e):
                    raise
                raise ValueError(f"--layers: '{part}' is not a layer, a range a-b or 'all'") from None
    else:
        out = {check(int(x)) for x in spec}
    return sorted(out)


# ------------------------------------------------------------------ the unit
def _open(model: str | Path | LMRef | LoadedLM, probes: str | Path | ProbeSet, device: str) -> tuple[LoadedLM, ProbeSet]:
    ps = probes if isinstance(probes, ProbeSet) else load_probe_set(probes)
    lm = model if isinstance(model, LoadedLM) else load_lm(model, device)  # resolves a path: a GGUF is parsed once
    ps.check_model(lm)
    return lm, ps


def run_unit(model: str | Path | LMRef | LoadedLM, probes: str | Path | ProbeSet, layer: int,
             options: LMAlignOptions = LMAlignOptions(), *, progress: Progress | None = None,
             cancel: Callable[[], bool] | None = None,
             keep_tokens: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One layer's eNTK and PCA directions (the unit a layer sweep distributes).

    Returns ``(arrays, meta)``:

    * ``eigenvalues`` ``(k,)`` of K̃, descending; ``residuals`` ``(k,)`` Ritz residual norms;
    * ``entk_scores`` ``(k, N)`` signed per-example scores (σ·u of each eigenvector's
      rank-1 SVD), ``entk_share`` ``(k,)`` σ²/‖E‖², ``entk_direction`` ``(k, d)`` the right
      singular vectors;
    * ``pca_scores`` ``(k, N)``, ``pca_explained`` ``(k,)`` of the layer's last-token
      hidden states ``hidden_last`` ``(N, d)`` (float32); ``hidden_norm`` ``(N,)`` their norms;
    * ``promoted_ids``/``promoted_effect`` and ``suppressed_ids``/``suppressed_effect``
      ``(k, 20)``: each direction's largest and most negative entries of ``U A⁻¹ v``
      (:func:`~entk_core.families.causal_lm.readouts.logit_effects`);
    * with ``keep_tokens``, ``token_acts`` ``(N, T, d)``: block ``L``'s output at every
      position (for the SAE; never cached).

    ``meta``: layer, parameters (block-relative names, count, tail mode), the Lanczos
    facts and timings (``load_s``, ``capture_s``, ``gram_s``, ``lanczos_s``,
    ``product_s`` = mean seconds per K̃ product, ``total_s``).
    """
    t0 = time.perf_counter()
    lm, ps = _open(model, probes, options.device)
    t_load = time.perf_counter() - t0
    lm.block(layer)  # range check before any work
    options.check(ps.N * lm.d_model)
    need = unit_memory_bytes(lm, ps.N, ps.T, layer, options)
    avail = _available_bytes()
    if avail is not None and need > avail:
        raise MemoryError(f"layer {layer} on {ps.N} contexts x {ps.T} tokens needs about {need / 2**30:.1f} GiB, "
                          f"{avail / 2**30:.1f} GiB is available; use a smaller probe set or fewer --steps")
    t = time.perf_counter()
    tail = LMTail(lm, ps.input_ids, layer, options.params, chunk=options.chunk, keep_tokens=keep_tokens,
                  progress=(lambda d, n, m: progress(0, options.steps, m)) if progress else None)
    t_cap = time.perf_counter() - t
    t = time.perf_counter()
    op = KTildeOperator(tail)
    t_gram = time.perf_counter() - t
    t = time.perf_counter()
    res = lanczos_topk(op, op.n, k=options.top, steps=options.steps, seed=options.seed, device=tail.device,
                       progress=_eta(progress) if progress else None, cancel=cancel)
    t_lz = time.perf_counter() - t
    V = res.eigenvectors.cpu().numpy()
    sc = ev.example_scores(V, tail.N, tail.d)
    H = tail.hidden_last.double().cpu().numpy()
    pc = ev.pca_scores(H, options.top)
    eff = logit_effects(lm.arch.unembedding(lm.model).detach(), op.A, sc["direction"])
    arrays = {
        "eigenvalues": res.eigenvalues.cpu().numpy(), "residuals": res.residuals.cpu().numpy(),
        "entk_scores": sc["scores"], "entk_share": sc["share"], "entk_sigma": sc["sigma"],
        "entk_direction": sc["direction"].astype(np.float32),
        "pca_scores": pc["scores"], "pca_explained": pc["explained"], "hidden_norm": np.linalg.norm(H, axis=1),
        "hidden_last": H.astype(np.float32), **eff,
    }
    meta = {
        "layer": int(layer), "module": tail.module_path, "params": tail.param_names, "n_params": int(tail.n_params),
        "tail_mode": tail.mode, "chunk": tail.chunk, "N": tail.N, "T": tail.T, "d_model": tail.d,
        "operator_size": op.n, "lanczos_steps": res.steps, "top": len(res.eigenvalues), "seed": options.seed,
        "device": str(tail.device), "dtype": str(tail.r0.dtype).replace("torch.", ""),
        "timing": {"load_s": t_load, "capture_s": t_cap, "gram_s": t_gram, "lanczos_s": t_lz,
                   "product_s": res.matvec_seconds / max(1, res.steps), "total_s": time.perf_counter() - t0},
        "torch_threads": torch.get_num_threads(), "layout": lm.arch.describe(),
    }
    if keep_tokens:
        arrays["token_acts"] = tail.token_acts.numpy()
    tail.release()
    return arrays, meta


def layer_unit(model: str, probes: str, layer: int, options: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_unit` as an executor unit: plain arguments (the model's and the probe
    set's paths, which a worker on another machine must see at the same path), and a plain
    result ``{"arrays": {...}, "meta": {...}}`` that the driver caches under :func:`layer_key`."""
    arrays, meta = run_unit(model, probes, int(layer), LMAlignOptions(**options))
    return {"arrays": arrays, "meta": meta}


def lm_align_job(model: str, probes: str, layer: int, layers: list[int] | None = None,
                 options: dict[str, Any] | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """:func:`lm_align` in a dashboard worker (:class:`~entk_core.workflows.jobs.Job`): plain
    arguments (the model's and the probe set's paths, ``options`` as
    :class:`LMAlignOptions` fields); the worker loads both (the load is reported as its
    first progress message), computes into the shared cache and returns the report."""
    if progress:
        progress(0, 0, "loading the model and the probe set")
    lm, ps = _open(model, probes, (options or {}).get("device", "cpu"))
    return lm_align(lm, ps, layer=int(layer), layers=layers, options=LMAlignOptions(**(options or {})),
                    progress=progress)


def _inline_unit(lm: LoadedLM, ps: ProbeSet, layer: int, options: LMAlignOptions, progress: Progress | None,
                 cancel: Callable[[], bool] | None, keep_tokens: bool = False) -> dict[str, Any]:
    """The in-process unit: reuses the loaded model and reports every Lanczos step."""
    arrays, meta = run_unit(lm, ps, layer, options, progress=progress, cancel=cancel, keep_tokens=keep_tokens)
    return {"arrays": arrays, "meta": meta}


def _unit_gpus(options: LMAlignOptions) -> float:
    """A unit asks Ray for a whole GPU when it runs on CUDA: one GPU holds one unit (each
    unit checks its memory need against the device before starting, see :func:`run_unit`)."""
    return 1.0 if str(options.device).startswith("cuda") else 0.0


def _eta(progress: Progress) -> Progress:
    start = time.perf_counter()

    def cb(done: int, total: int, message: str) -> None:
        el = time.perf_counter() - start
        left = el / max(done, 1) * (total - done)
        progress(done, total, f"{message}, ~{format_seconds(left)} left")
    return cb


def layer_key(lm: LoadedLM, ps: ProbeSet, layer: int, options: LMAlignOptions) -> str:
    _, names = lm.resolve_params(layer, options.params)
    return make_key("lm-layer-v2", model=lm.fingerprint, probes=ps.fingerprint, layer=int(layer), params=names,
                    top=options.top, steps=options.steps, seed=options.seed, dtype="float32")


def layer_entry(lm: LoadedLM, ps: ProbeSet, layer: int, options: LMAlignOptions, cache: ArrayCache | None = None,
                progress: Progress | None = None, cancel: Callable[[], bool] | None = None) -> CacheEntry:
    """The cached unit of one layer (computed once; ``entry.meta["cache"]`` is hit/miss)."""
    cache = cache or default_cache()
    return cache.get_or_compute(layer_key(lm, ps, layer, options),
                                lambda: run_unit(lm, ps, layer, options, progress=progress, cancel=cancel))


def peek_layer(lm: LoadedLM, ps: ProbeSet, layer: int, options: LMAlignOptions,
               cache: ArrayCache | None = None) -> CacheEntry | None:
    """The cached unit of ``layer``, or ``None`` (never computes)."""
    return (cache or default_cache()).get(layer_key(lm, ps, layer, options))


def cached_layers(lm: LoadedLM, ps: ProbeSet, options: LMAlignOptions, cache: ArrayCache | None = None) -> list[int]:
    """Layers whose unit is already in the cache."""
    cache = cache or default_cache()
    return [L for L in range(lm.n_layers) if layer_key(lm, ps, L, options) in cache]


# ------------------------------------------------------------------ SAE
def sae_key(lm: LoadedLM, ps: ProbeSet, layer: int, options: LMAlignOptions) -> str:
    return make_key("lm-sae", model=lm.fingerprint, probes=ps.fingerprint, layer=int(layer),
                    data="probe-window-tokens", sae=options.sae_options().to_json())


def peek_sae(lm: LoadedLM, ps: ProbeSet, layer: int, options: LMAlignOptions,
             cache: ArrayCache | None = None) -> CacheEntry | None:
    """The cached SAE of ``layer``, or ``None`` (never trains)."""
    return (cache or default_cache()).get(sae_key(lm, ps, layer, options))


class _Stop(Exception):
    pass


def token_activations(lm: LoadedLM, ps: ProbeSet, layer: int, chunk: int = 64,
                      progress: Progress | None = None) -> np.ndarray:
    """Block ``layer``'s output at every position of every probe window, ``(N, T, d)``
    float32 (a forward pass through blocks ``0..layer`` only)."""
    block = lm.block(layer)
    got: list[torch.Tensor] = []

    def hook(m, args, out):
        got.append((out[0] if isinstance(out, (tuple, list)) else out).detach().float().cpu())
        raise _Stop

    h = block.register_forward_hook(hook)
    base = lm.arch.base(lm.model)
    try:
        for i in range(0, ps.N, chunk):
            try:
                with torch.no_grad():
                    base(input_ids=ps.input_ids[i:i + chunk].to(lm.device), use_cache=False)
            except _Stop:
                pass
            if progress:
                progress(min(i + chunk, ps.N), ps.N, f"activations of block {layer} for the SAE")
    finally:
        h.remove()
    return torch.cat(got).numpy()


def sae_entry(lm: LoadedLM, ps: ProbeSet, layer: int, options: LMAlignOptions, cache: ArrayCache | None = None,
              acts: np.ndarray | None = None, progress: Progress | None = None,
              cancel: Callable[[], bool] | None = None) -> CacheEntry:
    """The SAE baseline of ``layer`` (trained once and cached): ``sae_scores``
    ``(latents, N)`` (encoder pre-activations of the probes' last-position activations),
    ``sae_energy`` and ``sae_fired`` ``(latents,)``; ``meta`` has the held-out FVU,
    ``converged`` and the training facts (:func:`~entk_core.families.causal_lm.sae.train_sae`).
    ``acts``: the layer's token activations ``(N, T, d)`` when already at hand."""
    cache = cache or default_cache()

    def compute():
        A = acts if acts is not None else token_activations(lm, ps, layer, progress=progress)
        trained = train_sae(torch.from_numpy(np.ascontiguousarray(A[:, 1:])).reshape(-1, A.shape[-1]),
                            options.sae_options(), progress=progress, cancel=cancel, device=lm.device)
        arrays = {"sae_scores": sae_scores(trained, A[:, -1]).astype(np.float32), "sae_energy": trained["energy"],
                  "sae_fired": trained["fired"]}
        return arrays, rep.finite(trained["meta"])

    return cache.get_or_compute(sae_key(lm, ps, layer, options), compute)


# ------------------------------------------------------------------ evaluation
def evaluate_layer(entry: dict[str, np.ndarray], ps: ProbeSet, options: LMAlignOptions,
                   tasks: dict[str, Any] | None = None, sae: CacheEntry | None = None,
                   methods: Sequence[str] = rep.METHODS) -> dict[str, Any]:
    """Every method's POS and morphology tables of one layer (see :mod:`.lm_report`):
    ``{"pos": rows, "morph": rows, "macro": {...}, "methods": facts, "split": ...}``."""
    tasks = tasks or rep.layer_tasks(ps, options.min_count)
    if not options.baselines:
        methods = [m for m in methods if m not in ("ica", "random")]
    scores, facts = rep.layer_methods(entry, options.top, options.seed, sae, methods)
    res = rep.evaluate_layer(scores, ps, tasks, options.split_seed)
    res["methods"] = facts
    return res


def lm_align(model: str | Path | LMRef | LoadedLM, probes: str | Path | ProbeSet, layer: int | None = None,
             layers: str | Sequence[int] | None = None, options: LMAlignOptions = LMAlignOptions(),
             cache: ArrayCache | None = None, progress: Progress | None = None,
             cancel: Callable[[], bool] | None = None, *, ray: bool | str | None = None,
             workers: int | None = None, executor: Executor | None = None) -> dict[str, Any]:
    """The report (JSON-able) for ``layer`` and, with ``layers``, the sweep.

    The detailed layer is ``layer`` (default: the last of ``layers``): its eNTK, PCA, ICA,
    SAE (``options.sae``) and random-direction tables with a winner per row
    (:mod:`.lm_report`), and ``directions``: per eNTK direction its promoted and
    suppressed next tokens and its tag concentration. With ``layers`` the report adds
    ``sweep``: per layer the macro rows and per-label AUROC (eNTK, PCA, ICA, random), and
    ``table3``: per label the AUROC maximised over the swept layers for each method (the
    layer where it is reached), as in the paper's Table 3. Units already cached are
    reused, so an interrupted sweep resumes where it stopped.

    Where the layers run: by default in this process, one after the other, on the model
    already loaded (progress at every Lanczos step). With ``ray`` (``True``: a local Ray
    instance or ``$ENTK_RAY_ADDRESS``; or a cluster address), ``workers > 1`` (local worker
    processes) or an ``executor``, each missing layer is a :func:`layer_unit` that loads
    the model and probe set from their paths; results come back here and only this process
    writes the cache. A layer that fails twice is listed under ``failed`` (the others are
    kept and cached); a unit on CUDA asks Ray for one GPU."""
    t0 = time.perf_counter()
    device = options.device
    lm, ps = _open(model, probes, device)
    sweep = parse_layers(layers, lm.n_layers) if layers is not None else []
    if layer is None:
        if not sweep:
            raise ValueError("give --layer L or --layers")
        layer = sweep[-1]
    lm.block(layer)
    options.check(ps.N * lm.d_model)
    lm.resolve_params(layer, options.params)
    todo = sorted(set(sweep) | {layer})
    cache = cache or default_cache()
    results: dict[int, dict[str, Any]] = {}
    entries: dict[int, CacheEntry] = {}
    keys = {L: layer_key(lm, ps, L, options) for L in todo}
    for L in todo:  # finished layers (an interrupted sweep resumes after them)
        hit = cache.get(keys[L])
        if hit is not None:
            entries[L] = CacheEntry(hit, {**hit.meta, "cache": "hit"})
    hits = len(entries)
    sae = peek_sae(lm, ps, layer, options, cache) if options.sae != "off" else None
    want_tokens = options.sae == "train" and sae is None
    tokens: dict[int, np.ndarray] = {}
    missing = [L for L in todo if L not in entries]
    total = len(todo) * options.steps
    state = {"done": hits * options.steps}
    if progress and hits:
        progress(state["done"], total, f"{hits} layer(s) from the cache")
    failed: dict[int, str] = {}
    exec_desc: dict[str, Any] = {}
    if missing:
        use_workers = executor is not None or ray or (workers or 1) > 1
        if use_workers and ps.path is None:
            raise ValueError("a probe set held only in memory cannot be sent to workers; save it first")
        units = []
        for i, L in enumerate(missing):
            if use_workers:
                kw = {"model": str(lm.ref.path), "probes": str(ps.path), "layer": L, "options": asdict(options)}
                units.append(Unit(f"layer {L}", layer_unit, kw, gpus=_unit_gpus(options)))
            else:
                def prog(d: int, n: int, msg: str, i=i, L=L) -> None:
                    if progress:
                        progress(state["done"] + d, total, f"layer {L} ({hits + i + 1}/{len(todo)}): {msg}")
                units.append(Unit(f"layer {L}", _inline_unit, {"lm": lm, "ps": ps, "layer": L, "options": options,
                                                               "progress": prog, "cancel": cancel,
                                                               "keep_tokens": want_tokens and L == layer}))
        by_key = {u.key: L for u, L in zip(units, missing)}

        def on_result(r) -> None:
            L = by_key[r.key]
            if r.ok:
                arrays = dict(r.value["arrays"])
                if "token_acts" in arrays:
                    tokens[L] = arrays.pop("token_acts")
                cache.set(keys[L], arrays, r.value["meta"])
                entries[L] = CacheEntry(arrays, {**r.value["meta"], "cache": "miss"})
            else:
                failed[L] = r.error
            state["done"] += options.steps
            if progress:
                progress(state["done"], total, f"layer {L} {'done' if r.ok else 'FAILED'}")

        def on_progress(done: int, n: int, msg: str) -> None:
            if cancel is not None and cancel():
                raise KeyboardInterrupt("cancelled")

        if use_workers:
            ex = executor or make_executor(ray=ray, workers=workers, n_units=len(units))
            try:
                ex.run(units, on_result=on_result, progress=on_progress)
                exec_desc.update(ex.describe())
            finally:
                if ex is not executor:
                    ex.close()
        else:  # in this process: an error (a bad option, Stop) is raised as is, not retried
            for u in units:
                t = time.perf_counter()
                on_result(UnitResult(u.key, True, u.fn(**u.kwargs), seconds=time.perf_counter() - t))
            exec_desc["executor"] = "inline"
    if layer in failed:
        raise RuntimeError(f"layer {layer} failed twice: {failed[layer]}")
    t_sae = time.perf_counter()
    if want_tokens:
        sae_prog = None
        if progress:
            def sae_prog(d: int, n: int, msg: str) -> None:
                progress(d, n, f"layer {layer}: SAE baseline ({options.sae_latents} latents): {msg}")
            sae_prog(0, 1, "starting")
        sae = sae_entry(lm, ps, layer, options, cache, acts=tokens.pop(layer, None), progress=sae_prog, cancel=cancel)
        sae.meta["cache"] = "miss"
    elif sae is not None:
        sae.meta["cache"] = "hit"
    tokens.clear()
    t_sae = time.perf_counter() - t_sae
    if progress:
        progress(0, 1, f"evaluating {len(todo)} layer(s): ICA, random directions"
                       + (", the SAE's latents" if sae is not None else "") + ", every table")
    tasks = rep.layer_tasks(ps, options.min_count)
    for L in todo:
        if L in entries:
            results[L] = evaluate_layer(entries[L], ps, options, tasks, sae=sae if L == layer else None,
                                        methods=rep.METHODS if L == layer else rep.LAYER_METHODS)
    e = entries[layer]
    res = results[layer]
    report: dict[str, Any] = {
        "model": lm.ref.to_json() | {"fingerprint": lm.fingerprint, "layout": lm.arch.describe()},
        "probes": {"path": str(ps.path) if ps.path else None, "N": ps.N, "T": ps.T, "tags": ps.tags,
                   "fingerprint": ps.fingerprint, "agreement": ps.provenance.get("options", {}).get("agreement"),
                   "tagger": ps.provenance.get("tagger", {})},
        "tagger_note": AUTHOR_TAGGER,
        "layer": layer,
        "params": e.meta.get("params"), "n_params": e.meta.get("n_params"), "tail_mode": e.meta.get("tail_mode"),
        "options": asdict(options),
        "eigenvalues": [float(v) for v in e["eigenvalues"]],
        "residuals": [float(v) for v in e["residuals"]],
        "entk_share": [float(v) for v in e["entk_share"]],
        "pca_explained": [float(v) for v in e["pca_explained"]],
        "methods": res["methods"],
        "pos": res["pos"], "morph": res["morph"],
        "morph_dropped": tasks["morph"]["dropped"], "morph_duplicates": tasks["morph"]["duplicates"],
        "macro": res["macro"], "split": res["split"],
        "directions": rep.directions(e, ps, lm.tokenizer, rows=res),
        "timing": {**e.meta.get("timing", {}), "sae_s": t_sae, "lanczos_steps": e.meta.get("lanczos_steps")},
        "cache": e.meta.get("cache"),
    }
    if sae is not None:
        report["methods"].get("sae", {})["cache"] = sae.meta.get("cache")
    if sweep:
        done = [L for L in sweep if L in results]
        report["sweep"] = [{
            "layer": L, "cache": entries[L].meta.get("cache"),
            "macro": results[L]["macro"],
            "auroc": {kind: {r["label"]: {m: r[m]["auroc"] for m in rep.LAYER_METHODS if m in r}
                             for r in results[L][kind]} for kind in ("pos", "morph")},
            "seconds": entries[L].meta.get("timing", {}).get("total_s"),
        } for L in done]
        report["table3"] = rep.table3({L: results[L] for L in done},
                                      [m for m in rep.LAYER_METHODS if m in results[done[0]]["pos"][0]] if done else [])
        report["sweep_cache_hits"] = hits
    report["failed"] = [{"layer": L, "error": err} for L, err in sorted(failed.items())]
    if exec_desc:
        report["executor"] = exec_desc
    report["timing"]["report_s"] = time.perf_counter() - t0
    report["timing"]["sweep_s"] = report["timing"]["report_s"]
    report["resources"] = _resources()
    return rep.finite(report)


def _resources() -> dict[str, Any]:
    """CPU seconds and peak memory of this process so far, and the machine's load (the
    figures a timing on a shared machine needs beside it)."""
    import os
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    out: dict[str, Any] = {"cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024,
                           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        out["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    return out


# ------------------------------------------------------------------ estimates
def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def unit_memory_bytes(lm: LoadedLM, N: int, T: int, layer: int, options: LMAlignOptions) -> int:
    """Bytes a unit adds to the loaded model: cached activations (selected module's input
    and output and the residual, or the block input), attention masks of the later blocks,
    the float64 Krylov basis and one chunk's tail activations (about 1.5 GB)."""
    d = lm.d_model
    cfg = lm.model.config
    dff = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d
    per_pos = (dff + 2 * d) if options.params is None else 2 * d
    cached = N * T * per_pos * 4 + N * T * T * 4 * (lm.n_layers - layer)
    basis = (options.steps + 2) * N * d * 8
    return int(cached + basis + 1.5e9)


def lm_gflops(threads: int | None = None) -> float:
    """Effective GFLOP/s of the LM work on ``threads`` CPU threads (default: this process's
    torch threads): ``49.5 · threads^0.86``, fitted to Gemma-3-270M's layer-16 products at
    N = 1,024 on this project's 2-core machine (2026-12-05): 5.1 s a product on 2 threads
    (the CLI), 9.27 s on 1 (a dashboard job worker, :func:`~.jobs.worker_threads`)."""
    t = max(1, int(threads if threads is not None else torch.get_num_threads()))
    return 49.5 * t ** 0.86


def estimate_unit_seconds(lm: LoadedLM, N: int, T: int, layer: int, steps: int = 50,
                          gflops: float | None = None) -> float:
    """Rough wall time of one unit on this machine: FLOPs of ``steps`` K̃ products (tail
    VJP + JVP, about 4 forward passes of the network after ``layer``, plus the two
    selected-matrix products at every position) at ``gflops`` effective GFLOP/s (default
    :func:`lm_gflops` of this process's threads), plus one forward pass for the capture."""
    cfg = lm.model.config.get_text_config() if hasattr(lm.model.config, "get_text_config") else lm.model.config
    d, dff = lm.arch.d, lm.arch.d_ff
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1)
    hd = getattr(cfg, "head_dim", None) or d // heads
    kvh = getattr(cfg, "num_key_value_heads", None) or heads
    attn_proj = 2 * d * (heads * hd * 2 + kvh * hd * 2)
    per_tok = attn_proj + 2 * 3 * d * dff + 4 * heads * hd * T
    n_full = max(0, lm.n_layers - 2 - layer)
    prod = 4 * N * T * per_tok * n_full + 2 * 2 * N * T * d * dff
    if layer < lm.n_layers - 1:
        prod += 4 * N * (T * 2 * d * kvh * hd * 2 + per_tok)
    capture = N * T * per_tok * lm.n_layers  # per_tok already counts 2 FLOPs per multiply-add
    rate = (gflops or lm_gflops()) * 1e9
    return (steps * prod + capture) / rate
