"""The bench's ``--device`` (issue 11, "Devices"): parsing, the one-line error without a GPU,
one tiny case through the device plumbing on the CPU, the CUDA measurement calls (with
``torch.cuda`` stubbed) and ``benchmarks/bench_device.py`` without a GPU."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from entk_core import bench
from entk_core.bench import measure as M
from entk_core.bench import toy

ROOT = Path(__file__).resolve().parents[2]


def test_parser_device_choices():
    ap = bench.build_parser()
    assert ap.parse_args([]).device == "cpu"  # today's behaviour by default
    for d in ("cpu", "cuda", "mps", "auto"):
        assert ap.parse_args(["--device", d]).device == d
    with pytest.raises(SystemExit) as e:
        ap.parse_args(["--device", "tpu"])
    assert e.value.code == 2


def test_device_cuda_without_gpu_is_one_line_error(capsys, monkeypatch):
    # on a machine with a GPU, hide it (in this process and the child) rather than skip
    monkeypatch.delenv("ENTK_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--device", "cuda", "--cases", "d"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "CUDA" in err[0], err
    # through the real entry point too: exit 2, one line, no traceback, no case started
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run([sys.executable, "-m", "entk_core", "bench", "--device", "cuda", "--cases", "d"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in p.stderr, p.stderr


def test_tiny_case_runs_on_cpu_through_the_device_plumbing(monkeypatch):
    small = toy._transformer
    monkeypatch.setattr(toy, "_transformer", lambda: small(p=5))  # 25 inputs instead of 841
    res = bench._child("d", "float32", True, "cpu")
    assert res["device"] == "cpu" and res["case"] == "d"
    assert res["shape"] == [25, 25]
    assert res["max_rel_error"] <= 1e-5
    assert res["time_fast"] > 0 and res["time_ref"] > 0
    assert res["peak_rss_mb"] > 0 and "ref_peak_rss_mb" in res
    assert "peak_gpu_mb" not in res  # GPU memory only on CUDA
    assert bench._check(res)["max_rel_error"]


def test_measure_cuda_calls(monkeypatch):
    """On CUDA: sync around the timer, peak stats reset before the run, max_memory_allocated after it."""
    calls = []
    mb = 2 ** 20
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: 10 * mb)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: calls.append("peak") or 42 * mb)
    m = M.measure(lambda: calls.append("fn") or 7, repeats=2, device=torch.device("cuda"))
    assert m.out == 7 and m.seconds >= 0
    assert (m.peak_gpu_mb, m.base_gpu_mb) == (42.0, 10.0)
    assert calls == ["sync", "reset", "sync", "fn", "sync", "peak", "sync", "fn", "sync"]
    f = M.memory_fields(m, m)
    assert f["peak_gpu_mb"] == 42.0 and f["peak_gpu_delta_mb"] == 32.0 and f["ref_peak_gpu_mb"] == 42.0
    calls.clear()
    cpu = M.measure(lambda: 1, device="cpu")
    assert calls == [] and cpu.peak_gpu_mb is None and "peak_gpu_mb" not in M.memory_fields(cpu)


def test_machine_info_and_table_name_the_device():
    assert bench.machine_info("cpu")["device"] == "cpu"
    machine = {**bench.machine_info("cpu"), "device": "cuda", "gpu_name": "NVIDIA H200", "gpu_memory_mb": 143771.0,
               "cuda": "12.4", "loadavg_end": [0.0, 0.0, 0.0]}
    case = {"time_ref": 2.0, "time_fast": 0.1, "speedup": 20.0, "max_rel_error": 1e-7, "peak_rss_mb": 900.0,
            "peak_gpu_mb": 1234.0, "met": {"speedup": True}, "description": "x"}
    table = bench.format_table({"machine": machine, "dtype": "float32", "quick": False, "cases": {"d": case}})
    assert "device cuda (NVIDIA H200" in table and "GPU MB" in table and "1234" in table
    # host-memory targets are CPU targets: not checked off the CPU
    met = bench._check({"case": "a", "device": "cuda", "dtype": "float32", "speedup": 40.0, "fast_over_floor": 2.0,
                        "peak_rss_mb": 5000.0, "max_rel_error": 1e-7})
    assert "peak_rss_mb" not in met and met["speedup"]


def _bench_device():
    spec = importlib.util.spec_from_file_location("bench_device", ROOT / "benchmarks" / "bench_device.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_device_script_without_gpu(monkeypatch, capsys, tmp_path):
    mod = _bench_device()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert mod.main([]) == 0
    out = capsys.readouterr()
    assert len((out.out + out.err).strip().splitlines()) == 1 and "no CUDA GPU" in out.out
    assert mod.main(["--require-gpu"]) == 1
    assert mod.sanitise("NVIDIA H200 NVL (141GB)") == "nvidia-h200-nvl-141gb"
    p = mod.result_path("NVIDIA H200", "2025-01-02", folder=str(tmp_path))
    assert p == str(tmp_path / "device-nvidia-h200-2025-01-02.json")
    Path(p).write_text("{}")
    assert mod.result_path("NVIDIA H200", "2025-01-02", folder=str(tmp_path)).endswith("-2025-01-02-2.json")
