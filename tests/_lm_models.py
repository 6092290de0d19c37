"""Tiny random causal LMs with a locally built tokenizer, for the LM tests.

The tokenizer is a ``tokenizers`` WordLevel model (whitespace + punctuation split) over
the most frequent words of the shared TinyStories sample, wrapped in
``PreTrainedTokenizerFast``; models are random Gemma3 / GPT-2 / Llama configs, saved
as HF folders (safetensors) with that tokenizer."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_STORIES = REPO.parent / "shared" / "data" / "tinystories" / "tinystories-v1-train-head.txt"
BUNDLED_STORIES = REPO / "tests" / "data" / "tinystories-v1-sample.txt"  # its first 600 stories (tests/data/README.md)
STORIES = SHARED_STORIES if SHARED_STORIES.is_file() else BUNDLED_STORIES


def stories(n: int | None = None) -> list[str]:
    text = STORIES.read_text(encoding="utf-8")
    out = [s.strip() for s in text.split("<|endoftext|>") if s.strip()]
    return out[:n] if n else out


def write_stories(path: Path, n: int) -> Path:
    path.write_text("\n<|endoftext|>\n".join(stories(n)) + "\n<|endoftext|>\n", encoding="utf-8")
    return path


def build_tokenizer(vocab_size: int = 400, n_stories: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    counts: Counter = Counter()
    for s in stories(n_stories):
        counts.update(w for w, _ in pre.pre_tokenize_str(s))
    words = ["[UNK]", "[EOS]"] + [w for w, _ in counts.most_common(vocab_size - 2)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="[EOS]")


def build_config(kind: str, vocab: int, layers: int = 3, d: int = 32):
    import transformers as tr

    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=1, pad_token_id=None)
    if kind == "gpt2":
        return tr.GPT2Config(n_embd=d, n_layer=layers, n_head=4, n_positions=128, **common)
    if kind == "llama":
        return tr.LlamaConfig(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=128, **common)
    if kind == "gemma3":
        return tr.Gemma3TextConfig(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                                   max_position_embeddings=128, sliding_window=8,
                                   layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"], **common)
    raise ValueError(kind)


def build_model(kind: str, vocab: int, layers: int = 3, d: int = 32, seed: int = 0, dtype=torch.float32):
    """A random model whose norms are perturbed away from their identity init."""
    import transformers as tr

    torch.manual_seed(seed)
    cfg = build_config(kind, vocab, layers, d)
    model = tr.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def save_model_folder(path: Path, kind: str, layers: int = 3, d: int = 32, seed: int = 0, tokenizer=None) -> Path:
    tok = tokenizer or build_tokenizer()
    model = build_model(kind, len(tok), layers, d, seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def in_memory(model, tokenizer=None, name: str = "tiny"):
    """A :class:`LoadedLM` around an in-memory model (no files; fingerprints are dummies)."""
    from entk_core.families.causal_lm.arch import get_arch
    from entk_core.families.causal_lm.models import LMRef, LoadedLM

    for p in model.parameters():
        p.requires_grad_(False)
    mt = model.config.model_type
    return LoadedLM(LMRef(name, Path("."), "hf", mt), model.eval(), tokenizer, get_arch(mt), "model-fp", "tok-fp")
