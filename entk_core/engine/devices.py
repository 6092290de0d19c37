"""Where eNTK work runs: ``device=`` of the library calls and ``--device`` of the CLI.

``resolve_device(device, default)``:

* ``None`` -- ``$ENTK_DEVICE`` when set, else ``default`` (the inputs' device), else CPU;
* ``"auto"`` -- CUDA when available, else Apple MPS when available, else CPU;
* ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a :class:`torch.device` -- that device
  (a one-line ``ValueError`` when it is not available here).

Kernel work on a device is chunked like on the CPU (the memory planner uses the device's
free memory); TF32 matmuls stay off during kernel work. MPS has no float64.
"""
from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["DEVICE_CHOICES", "resolve_device", "device_summary"]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
ENV = "ENTK_DEVICE"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: Any = None, default: Any = None) -> torch.device:
    """The :class:`torch.device` to compute on (see the module docstring)."""
    src = "device"
    if device is None:
        env = os.environ.get(ENV, "").strip()
        if env:
            device, src = env, f"${ENV}"
        elif default is not None:
            return torch.device(default)
        else:
            return torch.device("cpu")
    if isinstance(device, torch.device):
        dev = device
    else:
        name = str(device).strip().lower()
        if name == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda")
            if _mps_available():
                return torch.device("mps")
            return torch.device("cpu")
        try:
            dev = torch.device(name)
        except (RuntimeError, ValueError):
            raise ValueError(f"{src}={device!r} is not a device; choose one of {', '.join(DEVICE_CHOICES)} "
                             f"(or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{src}={device!r} but CUDA is not available on this machine; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{src}={device!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not _mps_available():
            raise ValueError(f"{src}={device!r} but MPS is not available on this machine; use --device cpu or auto")
    elif dev.type != "cpu":
        raise ValueError(f"{src}={device!r}: unsupported device type {dev.type!r}; choose one of "
                         f"{', '.join(DEVICE_CHOICES)}")
    return dev


def device_summary(device: Any) -> str:
    """A short human description: ``cpu (2 threads)``, ``cuda:0 (NVIDIA H200)``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    if dev.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(dev)
