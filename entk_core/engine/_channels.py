"""Output-axis algebra of a kernel request (a private module of :mod:`entk_core.engine`).

A model output ``(N, *S)`` has ``C = prod(S)`` channels. A request contracts them either by
a ``reduction`` shorthand (the output seen as ``(N, C)``) or by neural-tangents'
``trace_axes`` / ``diagonal_axes`` (see :mod:`entk_core.engine.kernels`). :class:`Channels`
turns that into independent diagonal groups, each a pair of :class:`Side` objects (the channels
one side of a kernel tile uses: kept channels major, traced channels minor), knows the
returned kernel's shape and gives the view of the output each group writes to.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Channels", "Side"]


@dataclass(frozen=True)
class Side:
    """The output channels one side of a kernel group uses: ``channels`` (flat channel
    indices, kept-channel-major and traced-channel-minor: ``kp · traced`` of them), or
    ``None`` for the single summed channel ``Σ_c w_c f_c / C`` ("mean")."""

    channels: tuple[int, ...] | None
    kp: int = 1
    tr: int = 1

    def width(self) -> int:
        return 1 if self.channels is None else len(self.channels)


class Channels:
    """Output channels of a request and how they are contracted.

    ``S``: the per-example output shape, ``C = prod(S)``. Either a ``reduction``
    shorthand (the output seen as ``(N, C)``) or neural-tangents' ``trace_axes`` /
    ``diagonal_axes`` over the output axes (axis 0 is the batch axis). ``groups``: one
    ``(left, right)`` :class:`Side` pair per index of the diagonal axes.
    """

    def __init__(self, S: tuple[int, ...], reduction: str | None, trace_axes, diagonal_axes, block, N1: int, N2: int,
                 rectangular: bool):
        self.S = tuple(int(s) for s in S)
        self.C = int(math.prod(self.S)) if self.S else 1
        self.N1, self.N2 = N1, N2
        C = self.C
        self.reduction = reduction
        self.batch = "pair"
        self.kp_shape: tuple[int, ...] = ()
        self.d_shape: tuple[int, ...] = ()
        self.tr = 1
        if reduction is not None:
            self.axes = False
            if reduction == "block":
                if block is None or len(tuple(block)) != 2:
                    raise ValueError("reduction='block' needs block=(c, d)")
                c, d = (int(b) for b in block)
                if not (0 <= c < C and 0 <= d < C):
                    raise ValueError(f"block {tuple(block)} out of range for C={C} output channels")
                self.groups = [(Side((c,)), Side((d,)))]
            elif reduction == "mean":
                self.groups = [(Side(None), Side(None))]
            elif reduction == "trace":
                self.tr = C
                s = Side(tuple(range(C)), 1, C)
                self.groups = [(s, s)]
            else:
                self.kp_shape = (C,)
                s = Side(tuple(range(C)), C, 1)
                self.groups = [(s, s)]
            self.roles = None
            return
        self.axes = True
        nd = 1 + len(self.S)

        def canon(axes, what):
            axes = () if axes is None else ((axes,) if isinstance(axes, int) else tuple(axes))
            out = []
            for a in axes:
                if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
                    raise ValueError(f"{what} must be integers, got {a!r}")
                a = int(a)
                if not -nd <= a < nd:
                    raise ValueError(f"{what} axis {a} is out of range for an output of shape (N, {', '.join(map(str, self.S))}"
                                     f"{')' if self.S else ')'} ({nd} axes)")
                a %= nd
                if a in out:
                    raise ValueError(f"{what} repeats axis {a}")
                out.append(a)
            return sorted(out)

        tr_axes, dg_axes = canon(trace_axes, "trace_axes"), canon(diagonal_axes, "diagonal_axes")
        both = set(tr_axes) & set(dg_axes)
        if both:
            raise ValueError(f"axis {sorted(both)[0]} is in both trace_axes and diagonal_axes")
        roles = ["keep"] * nd
        for a in tr_axes:
            roles[a] = "trace"
        for a in dg_axes:
            roles[a] = "diag"
        self.roles = roles
        if roles[0] != "keep":
            if N1 != N2 or rectangular:
                raise ValueError(f"axis 0 (the batch axis) in {'trace' if roles[0] == 'trace' else 'diagonal'}_axes "
                                 f"needs x2 = None (the kernel of x1 with itself), got N1={N1}, N2={N2}")
            self.batch = "diag" if roles[0] == "diag" else "trace"
        ch_roles = roles[1:]
        dg = [i for i, r in enumerate(ch_roles) if r == "diag"]
        kp = [i for i, r in enumerate(ch_roles) if r == "keep"]
        tr = [i for i, r in enumerate(ch_roles) if r == "trace"]
        self.d_shape = tuple(self.S[i] for i in dg)
        self.kp_shape = tuple(self.S[i] for i in kp)
        self.tr = int(math.prod(self.S[i] for i in tr)) if tr else 1
        nD = int(math.prod(self.d_shape)) if dg else 1
        nK = int(math.prod(self.kp_shape)) if kp else 1
        idx = np.arange(C).reshape(self.S) if self.S else np.arange(1)
        idx = idx.transpose(dg + kp + tr).reshape(nD, nK * self.tr) if self.S else idx.reshape(1, 1)
        self.groups = []
        for d in range(nD):
            s = Side(tuple(int(c) for c in idx[d]), nK, self.tr)
            self.groups.append((s, s))

    # ------------------------------------------------------------------ shapes
    @property
    def kp(self) -> int:
        return int(math.prod(self.kp_shape)) if self.kp_shape else 1

    def out_shape(self) -> tuple[int, ...]:
        """The returned kernel's shape."""
        N1, N2 = self.N1, self.N2
        r = self.reduction
        if not self.axes:
            C = self.C
            if r == "full":
                return (N1, N2, C, C)
            if r == "flat":
                return (C * N1, C * N2)
            return (N1, N2)
        shape = []
        for i, role in enumerate(self.roles):
            a, b = (N1, N2) if i == 0 else (self.S[i - 1], self.S[i - 1])
            if role == "keep":
                shape += [a, b]
            elif role == "diag":
                shape.append(a)
        return tuple(shape)

    def work_shape(self) -> tuple[int, ...]:
        """The shape of the array the work is written to (the output, except that a
        batch axis in ``trace_axes`` is kept until the final mean)."""
        if self.batch != "trace":
            return self.out_shape()
        shape = [self.N1]
        for i, role in enumerate(self.roles[1:]):
            s = self.S[i]
            shape += [s, s] if role == "keep" else ([s] if role == "diag" else [])
        return tuple(shape)

    def group_view(self, out: torch.Tensor, d: int) -> torch.Tensor:
        """View of ``out`` (work shape) for diagonal group ``d``: ``(*kp, N1, *kp, N2)``
        (``batch == "pair"``) or ``(*kp, *kp, N)`` (batch diagonal)."""
        if not self.axes:
            r = self.reduction
            if r == "flat":
                return out.view(self.C, self.N1, self.C, self.N2)
            if r == "full":
                return out.permute(2, 0, 3, 1)
            return out
        # label the work dims, then permute into (diag..., kp1..., n1, kp2..., n2)
        labels = []
        roles = list(self.roles)
        if self.batch == "trace":
            roles[0] = "diag"
        for i, role in enumerate(roles):
            if role == "keep":
                labels += [(i, 1), (i, 2)]
            elif role == "diag":
                labels.append((i, 0))
        dg = [i for i in range(1, len(roles)) if roles[i] == "diag"]
        kp = [i for i in range(1, len(roles)) if roles[i] == "keep"]
        want = [(i, 0) for i in dg] + [(i, 1) for i in kp]
        if self.batch == "pair":
            want += [(0, 1)] + [(i, 2) for i in kp] + [(0, 2)]
        else:
            want += [(i, 2) for i in kp] + [(0, 0)]
        v = out.permute([labels.index(w) for w in want])
        if dg:
            v = v[tuple(int(i) for i in np.unravel_index(d, self.d_shape))]
        return v
