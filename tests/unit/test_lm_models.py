"""Finding and loading local causal LMs; every bad input is a one-line error."""
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import _lm_models as M
from entk_core.families.base import get_family
from entk_core.families.causal_lm import list_models, load_lm, resolve_model
from entk_core.families.causal_lm.files import inspect_model, read_gguf_metadata


@pytest.fixture(scope="module")
def tok():
    return M.build_tokenizer()


@pytest.fixture(scope="module")
def good(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("models")
    for kind in ("gpt2", "llama", "gemma3"):
        M.save_model_folder(root / f"tiny-{kind}", kind, layers=2, tokenizer=tok)
    return root


def _copy(good, tmp_path, name="tiny-gpt2"):
    dst = tmp_path / "m"
    shutil.copytree(good / name, dst)
    return dst


def _one_line(e):
    assert "\n" not in str(e.value)
    return str(e.value)


def test_family_registers_as_models_not_runs():
    fam = get_family("causal-lm")
    assert fam.offers("train") is False and fam.offers("grokking") is False
    assert fam.offers("models") and fam.offers("lm-align") and fam.offers("probes")
    assert fam.eigenvector_view(None) == "contexts"


@pytest.mark.parametrize("kind,default", [("gpt2", "mlp.c_proj"), ("llama", "mlp.down_proj"), ("gemma3", "mlp.down_proj")])
def test_load_each_architecture_safely(good, kind, default):
    lm = load_lm(good / f"tiny-{kind}")
    assert lm.model.dtype == torch.float32 and not lm.model.training
    assert lm.model.config._attn_implementation == "eager"
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert lm.n_layers == 2 and lm.d_model == 32
    mod, names = lm.resolve_params(1)
    assert mod == default and names[0] == f"{default}.weight"
    assert lm.resolve_params(0, f"{default}.weight") == (default, [f"{default}.weight"])
    with pytest.raises(ValueError, match="out of range: .* has 2 blocks"):
        lm.block(2)
    with pytest.raises(ValueError, match="matches nothing in block 0") as e:
        lm.resolve_params(0, "mlp.nope")
    _one_line(e)


def test_models_folder_listing_and_names(good, monkeypatch, tmp_path):
    monkeypatch.setenv("ENTK_MODELS_DIR", str(good))
    names = [n for n, r in list_models()]
    assert names == ["tiny-gemma3", "tiny-gpt2", "tiny-llama"]
    assert resolve_model("tiny-llama").model_type == "llama"
    with pytest.raises(FileNotFoundError, match="no model 'nope'.*tiny-gpt2"):
        resolve_model("nope")
    with pytest.raises(ValueError, match="not a model name"):
        resolve_model("../x", confine=True)
    (good / "junk").mkdir(exist_ok=True)
    rows = dict(list_models())
    assert isinstance(rows["junk"], ValueError) and "no config.json" in str(rows["junk"])
    shutil.rmtree(good / "junk")


def test_not_a_model_pickle_and_corrupt_weights(good, tmp_path):
    with pytest.raises(ValueError, match="not a model folder: no config.json"):
        inspect_model(tmp_path)
    m = _copy(good, tmp_path)
    os.rename(m / "model.safetensors", m / "pytorch_model.bin")
    with pytest.raises(ValueError, match="only pickle weights .*refusing to unpickle") as e:
        load_lm(m)
    _one_line(e)
    os.rename(m / "pytorch_model.bin", m / "model.safetensors")
    data = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt safetensors file model.safetensors: truncated"):
        load_lm(m)
    (m / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{notjson")
    with pytest.raises(ValueError, match="corrupt safetensors"):
        load_lm(m)
    with pytest.raises(ValueError, match="pickle file"):
        (tmp_path / "w.pt").write_bytes(b"x")
        inspect_model(tmp_path / "w.pt")


def test_missing_tensors_nan_weights_and_unsupported_architectures(good, tmp_path):
    m = _copy(good, tmp_path)
    sd = load_file(str(m / "model.safetensors"))
    key = next(k for k in sd if "mlp.c_proj.weight" in k)
    save_file({k: v for k, v in sd.items() if k != key}, str(m / "model.safetensors"))
    with pytest.raises(ValueError, match="lack 1 tensors .*would be random"):
        load_lm(m)
    sd[key] = sd[key].clone()
    sd[key][0, 0] = float("nan")
    save_file(sd, str(m / "model.safetensors"))
    with pytest.raises(ValueError, match="contains NaN or inf"):
        load_lm(m)
    cfg = json.loads((m / "config.json").read_text())
    cfg["model_type"] = "t5"
    (m / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported architecture 't5' .*no causal-LM class") as e:
        inspect_model(m)
    _one_line(e)
    cfg["model_type"], cfg["auto_map"] = "my_remote_lm", {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (m / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported architecture 'my_remote_lm'"):  # remote code is never run
        load_lm(m)
    (m / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        inspect_model(m)


def _gguf_header(arch: str, kv: dict) -> bytes:
    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack("<Q", len(b)) + b
    body = b""
    items = {"general.architecture": arch, **kv}
    for k, v in items.items():
        body += s(k) + (struct.pack("<I", 8) + s(v) if isinstance(v, str) else struct.pack("<II", 4, v))
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(items)) + body


def _gguf_with_tensor(path, arch="gemma3"):
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_block_count(2)
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.arange(8 * 64, dtype=np.float32).reshape(64, 8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_metadata_through_the_gguf_reader_and_corrupt_ggufs(tmp_path, monkeypatch):
    f = tmp_path / "ok.gguf"
    f.write_bytes(_gguf_header("gemma3", {"gemma3.block_count": 18, "gemma3.embedding_length": 640}))
    meta = read_gguf_metadata(f)
    assert meta["general.architecture"] == "gemma3" and meta["gemma3.block_count"] == 18
    ref = inspect_model(f)
    assert (ref.format, ref.model_type, ref.n_layers) == ("gguf", "gemma3_text", 18)
    (tmp_path / "bad.gguf").write_bytes(b"NOPE" + os.urandom(64))
    with pytest.raises(ValueError, match="corrupt GGUF file bad.gguf: no GGUF magic"):
        inspect_model(tmp_path / "bad.gguf")
    (tmp_path / "cut.gguf").write_bytes(f.read_bytes()[:30])
    with pytest.raises(ValueError, match="corrupt GGUF file cut.gguf") as e:
        inspect_model(tmp_path / "cut.gguf")
    _one_line(e)
    (tmp_path / "bert.gguf").write_bytes(_gguf_header("bert", {}))
    with pytest.raises(ValueError, match="unsupported GGUF architecture 'bert'"):
        inspect_model(tmp_path / "bert.gguf")
    # a complete header whose tensor data is cut short: not a usable model (issue 21.7)
    whole = _gguf_with_tensor(tmp_path / "whole.gguf")
    assert inspect_model(whole).n_layers == 2
    data = whole.read_bytes()
    (tmp_path / "truncated.gguf").write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="corrupt GGUF file truncated.gguf: truncated") as e:
        inspect_model(tmp_path / "truncated.gguf")
    _one_line(e)
    monkeypatch.setenv("ENTK_MODELS_DIR", str(tmp_path))
    rows = dict(list_models())
    assert not isinstance(rows["whole.gguf"], Exception)
    assert isinstance(rows["truncated.gguf"], ValueError) and "truncated" in str(rows["truncated.gguf"])


def _resave_tokenizer_json(folder, edit):
    obj = json.loads((folder / "tokenizer.json").read_text())
    (folder / "tokenizer.json").write_text(json.dumps(edit(obj)))


@pytest.mark.parametrize("edit,what", [
    (lambda o: {k: v for k, v in o.items() if k != "added_tokens"}, "malformed: .added_tokens. is missing"),
    (lambda o: {**o, "added_tokens": "x"}, "malformed: .added_tokens. is missing or not a list"),
    (lambda o: {**o, "model": "BPE"}, "malformed: no tokenizer model"),
])
def test_malformed_tokenizer_json_is_one_line(good, tmp_path, edit, what):
    m = _copy(good, tmp_path)
    _resave_tokenizer_json(m, edit)
    with pytest.raises(ValueError, match=f"m/tokenizer.json is {what}") as e:
        load_lm(m)
    _one_line(e)
    (m / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json is malformed"):
        load_lm(m)


def test_the_saved_tokenizer_is_the_one_used(tmp_path):
    """transformers 5.23 loads a saved word-level fast tokenizer of a Qwen2 as Qwen2Tokenizer
    (BPE), which splits words into letters; that is refused. The same model with a byte-level
    BPE tokenizer loads, and its tokens are the saved tokenizer.json's."""
    from tokenizers import Tokenizer

    from entk_core.families.causal_lm.models import TOKENIZER_SAMPLE

    word = M.save_model_folder(tmp_path / "qwen2-word", "qwen2", layers=1, d=16, tokenizer=M.build_tokenizer("word"))
    with pytest.raises(ValueError, match="loads its tokenizer as Qwen2Tokenizer, which does not reproduce the "
                                         "folder's tokenizer.json") as e:
        load_lm(word)
    _one_line(e)
    bpe = M.save_model_folder(tmp_path / "qwen2-bpe", "qwen2", layers=1, d=16)
    lm = load_lm(bpe)
    saved = Tokenizer.from_file(str(bpe / "tokenizer.json"))
    assert lm.tokenizer(TOKENIZER_SAMPLE, add_special_tokens=False)["input_ids"] == \
        saved.encode(TOKENIZER_SAMPLE, add_special_tokens=False).ids
    os.remove(bpe / "tokenizer.json")
    with pytest.raises(ValueError, match="has no tokenizer files"):
        load_lm(bpe)


def _save(model, tok, path):
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_architectures_that_cannot_be_handled_name_the_missing_piece(tmp_path):
    """A mixture-of-experts MLP, a state-space block without an MLP (Mamba) and a
    bidirectional encoder (BERT without is_decoder): one line each, naming what is missing."""
    import transformers as tr

    tok = M.build_tokenizer()
    V = len(tok)
    cases = [
        (tr.MixtralConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, num_local_experts=2, num_experts_per_tok=1),
         "mixture-of-experts blocks .*no single MLP output projection"),
        (tr.MambaConfig(vocab_size=V, hidden_size=16, state_size=4, num_hidden_layers=1, expand=2),
         "cannot find the MLP output projection: no Linear with output size 16 outside the attention"),
        (tr.BertConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2), "not a causal decoder"),
    ]
    for cfg, msg in cases:
        torch.manual_seed(0)
        model = tr.AutoModelForCausalLM.from_config(cfg)
        path = _save(model, tok, tmp_path / f"m-{cfg.model_type}")
        with pytest.raises(ValueError, match=msg) as e:
            load_lm(path)
        _one_line(e)


def test_one_gguf_reader_parses_a_file_once_inside_the_block(tmp_path, monkeypatch):
    import gguf
    from gguf.gguf_reader import GGUFReader as Real

    from entk_core.families.causal_lm.files import one_gguf_reader

    parsed = []
    real_init = Real.__init__
    monkeypatch.setattr(Real, "__init__", lambda self, path, *a, **kw: (parsed.append(Path(path).name),
                                                                          real_init(self, path, *a, **kw))[1])
    f, other = _gguf_with_tensor(tmp_path / "a.gguf"), _gguf_with_tensor(tmp_path / "b.gguf")
    with one_gguf_reader(f):
        from gguf import GGUFReader  # as transformers' loaders import it: at call time
        r1, r2 = GGUFReader(f), gguf.GGUFReader(str(f))
        assert r1 is r2 and isinstance(r1, Real)
        assert read_gguf_metadata(f)["GGUF.tensor_count"] == 1  # the metadata reader shares it
        assert gguf.GGUFReader(other) is not r1                 # another file is read as usual
        with one_gguf_reader(f):                                # nested (a command's block, then the load's)
            assert gguf.GGUFReader(f) is r1
    assert parsed == ["a.gguf", "b.gguf"]
    assert gguf.GGUFReader is Real and Real(f) is not r1        # restored: the reader is not kept


def test_the_plain_view_reader_reads_what_the_gguf_reader_reads(tmp_path):
    """The reader :func:`one_gguf_reader` shares cuts a plain view of the memory map (8 s faster
    on Gemma's vocabulary); every field part, field value and tensor equals the gguf package's."""
    from gguf import GGUFWriter, GGUFReader

    from entk_core.families.causal_lm.files import _plain_reader

    rng = np.random.default_rng(0)
    f = tmp_path / "vocab.gguf"
    w = GGUFWriter(str(f), "gemma3")
    w.add_block_count(2)
    w.add_token_list([f"tok{i}" + "é" * (i % 3) for i in range(300)])   # a string array, as a vocabulary
    w.add_token_scores(rng.normal(size=300).astype(np.float32).tolist())
    w.add_token_types([int(i % 5) for i in range(300)])
    w.add_string("general.name", "tiny")
    w.add_float32("gemma3.rope.freq_base", 10000.0)
    w.add_tensor("token_embd.weight", rng.normal(size=(300, 8)).astype(np.float32))
    w.add_tensor("blk.0.ffn_down.weight", rng.normal(size=(8, 16)).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ref, fast = GGUFReader(f), _plain_reader(GGUFReader)(f)
    assert isinstance(fast, GGUFReader) and list(ref.fields) == list(fast.fields) and len(ref.fields) >= 8
    for name, a in ref.fields.items():
        b = fast.fields[name]
        assert (a.offset, a.types, a.data, len(a.parts)) == (b.offset, b.types, b.data, len(b.parts)), name
        assert all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a.parts, b.parts)), name
        assert str(a.contents()) == str(b.contents()), name
    assert len(ref.fields["tokenizer.ggml.tokens"].data) == 300
    assert [(t.name, t.tensor_type, t.shape.tolist(), t.data_offset) for t in ref.tensors] == \
        [(t.name, t.tensor_type, t.shape.tolist(), t.data_offset) for t in fast.tensors]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(ref.tensors, fast.tensors))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(f.read_bytes()[:-64])
    for reader in (GGUFReader, _plain_reader(GGUFReader)):  # a file cut short fails in both
        with pytest.raises(ValueError):
            reader(cut)


def test_parsed_once_applies_to_gguf_files_only(tmp_path, monkeypatch):
    import contextlib

    from entk_core.families.causal_lm.files import parsed_once

    f = _gguf_with_tensor(tmp_path / "m.gguf")
    monkeypatch.setenv("ENTK_MODELS_DIR", str(tmp_path))
    assert not isinstance(parsed_once(f), contextlib.nullcontext)
    assert not isinstance(parsed_once("m.gguf"), contextlib.nullcontext)   # a name in the models folder
    for spec in (tmp_path, "missing.gguf", None, tmp_path / "x.safetensors"):
        assert isinstance(parsed_once(spec), contextlib.nullcontext), spec
