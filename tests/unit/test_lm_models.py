"""Finding and loading local causal LMs; every bad input is a one-line error."""
import json
import os
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

import _lm_models as M
from entk_core.families.base import get_family
from entk_core.families.causal_lm import list_models, load_lm, resolve_model
from entk_core.families.causal_lm.models import inspect_model, read_gguf_metadata


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
    cfg["model_type"] = "bert"
    (m / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported architecture 'bert'"):
        inspect_model(m)
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


def test_gguf_header_reading_and_corrupt_gguf(tmp_path):
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
    with pytest.raises(ValueError, match="corrupt GGUF file cut.gguf: truncated"):
        inspect_model(tmp_path / "cut.gguf")
    (tmp_path / "bert.gguf").write_bytes(_gguf_header("bert", {}))
    with pytest.raises(ValueError, match="unsupported GGUF architecture 'bert'"):
        inspect_model(tmp_path / "bert.gguf")
