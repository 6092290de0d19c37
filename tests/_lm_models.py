"""Tiny random causal LMs with locally built tokenizers, for the LM tests.

Tokenizers: a byte-level BPE (``build_tokenizer()``, the default: loads back exactly as
every architecture's own tokenizer class, Qwen2's included) or a WordLevel model
(``build_tokenizer("word")``: whitespace + punctuation split, the most frequent words of
the stories), trained on the TinyStories sample and wrapped in ``PreTrainedTokenizerFast``.
Models are random configs of every architecture in :data:`KINDS`, saved as HF folders
(safetensors) with their tokenizer and loaded back as a user would."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_STORIES = REPO.parent / "shared" / "data" / "tinystories" / "tinystories-v1-train-head.txt"
BUNDLED_STORIES = REPO / "tests" / "data" / "tinystories-v1-sample.txt"  # its first 600 stories (tests/data/README.md)
STORIES = SHARED_STORIES if SHARED_STORIES.is_file() else BUNDLED_STORIES

KINDS = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "phi", "gpt_neox", "opt",
         "falcon", "olmo", "olmo2", "stablelm", "gptj", "granite")
"""Every architecture the operator tests build (``transformers`` model types)."""
PARALLEL = ("phi", "gpt_neox", "falcon", "gptj")
"""Architectures whose blocks run attention and MLP in parallel."""


def stories(n: int | None = None) -> list[str]:
    text = STORIES.read_text(encoding="utf-8")
    out = [s.strip() for s in text.split("<|endoftext|>") if s.strip()]
    return out[:n] if n else out


def write_stories(path: Path, n: int) -> Path:
    path.write_text("\n<|endoftext|>\n".join(stories(n)) + "\n<|endoftext|>\n", encoding="utf-8")
    return path


_TOKENIZERS: dict = {}


def build_tokenizer(kind: str = "bpe", vocab_size: int = 400, n_stories: int = 300):
    """A fast tokenizer trained on the stories (memoised per process)."""
    key = (kind, vocab_size, n_stories)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = _bpe(vocab_size, n_stories) if kind == "bpe" else _word(vocab_size, n_stories)
    return _TOKENIZERS[key]


def _bpe(vocab_size: int, n_stories: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(stories(n_stories), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")


def _word(vocab_size: int, n_stories: int):
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
    """A tiny config of ``kind`` (4 heads; grouped/multi-query attention where the
    architecture has it; partial rotary, q/k norms, soft-capping, sliding windows at
    their defaults or switched on)."""
    import transformers as tr

    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0, pad_token_id=None)
    rope = dict(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128)
    if kind == "gpt2":
        return tr.GPT2Config(n_embd=d, n_layer=layers, n_head=4, n_positions=128, **common)
    if kind in ("llama", "mistral", "qwen2", "olmo", "olmo2", "granite"):
        extra = {"residual_multiplier": 0.5, "embedding_multiplier": 2.0} if kind == "granite" else {}
        cls = {"llama": tr.LlamaConfig, "mistral": tr.MistralConfig, "qwen2": tr.Qwen2Config, "olmo": tr.OlmoConfig,
               "olmo2": tr.Olmo2Config, "granite": tr.GraniteConfig}[kind]
        return cls(**rope, **extra, **common)
    if kind == "qwen3":
        return tr.Qwen3Config(**rope, head_dim=8, **common)
    if kind == "gemma2":
        return tr.Gemma2Config(**{**rope, "num_key_value_heads": 1}, head_dim=8, sliding_window=4,
                               query_pre_attn_scalar=8, **common)
    if kind == "gemma3":
        return tr.Gemma3TextConfig(**{**rope, "num_key_value_heads": 1}, head_dim=8, sliding_window=4,
                                   layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"], **common)
    if kind == "phi3":
        return tr.Phi3Config(**rope, **{**common, "pad_token_id": 0})
    if kind == "phi":
        return tr.PhiConfig(**{**rope, "num_key_value_heads": 4}, partial_rotary_factor=0.5, **common)
    if kind == "stablelm":
        return tr.StableLmConfig(**rope, partial_rotary_factor=0.5, qk_layernorm=True, **common)
    if kind == "gpt_neox":
        return tr.GPTNeoXConfig(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers, num_attention_heads=4,
                                rotary_pct=0.5, max_position_embeddings=128, **common)
    if kind == "opt":
        return tr.OPTConfig(hidden_size=d, ffn_dim=2 * d, num_hidden_layers=layers, num_attention_heads=4,
                            word_embed_proj_dim=d, max_position_embeddings=128, **common)
    if kind == "falcon":
        return tr.FalconConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=4, multi_query=True,
                               parallel_attn=True, **common)
    if kind == "gptj":
        return tr.GPTJConfig(n_embd=d, n_layer=layers, n_head=4, rotary_dim=4, n_positions=128, **common)
    raise ValueError(kind)


def build_model(kind: str, vocab: int, layers: int = 3, d: int = 32, seed: int = 0, dtype=torch.float32):
    """A random model whose norms and biases are perturbed away from their identity init."""
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
    from entk_core.families.causal_lm.arch import discover
    from entk_core.families.causal_lm.models import LMRef, LoadedLM

    for p in model.parameters():
        p.requires_grad_(False)
    mt = model.config.model_type
    return LoadedLM(LMRef(name, Path("."), "hf", mt), model.eval(), tokenizer, discover(model), "model-fp", "tok-fp")
