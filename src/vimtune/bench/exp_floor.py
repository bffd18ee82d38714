"""The exp floors: ``torch.exp`` and ``torch.exp2`` over as many float32 values as a selective scan makes state
updates.

A selective scan computes one exp per state update (its decay exp(dt A)), so the time of that many exps
on the same threads is a yardstick for its kernels (not a hard lower bound: a kernel with a cheaper exp
than torch's can beat it). ``vimtune bench scan`` gives every kernel as a multiple of each floor.

Two floors, because torch computes the two functions by different code. ``torch.exp`` of a contiguous
float32 tensor calls MKL's vector math library (VML) in the x86 wheels, and MKL chooses its code path at run
time: on an AMD EPYC (family 26 model 2, AVX-512) ``perf`` showed the time in ``mkl_vml_kernel_sExp_EXHAynn``,
not in the ``L9`` / ``Z0`` variants (MKL's names for its AVX2 / AVX-512 code), at 1.6 G exps per second and
core, where ``torch.exp2`` (the SLEEF code ATen bundles, no MKL) did 7.0 G; on an Intel Xeon ``torch.exp`` did
6.7 G. So on the AMD CPUs measured ``torch.exp`` alone makes the kernels look several times nearer their floor
than they are. ``torch.exp2`` is also what vimtune's kernels compute (exp(x) = 2^(x log2 e), the factor
folded into A).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

EXP_BUFFER = 1 << 16  # float32 values per call of a floor: 2 x 256 KiB, in L2 on current CPUs


class ExpFloor:
    """The exp floor of one shape: ``function`` (``torch.exp`` or ``torch.exp2``) over B*E*L*N float32 values, as
    ``calls = ceil(B*E*L*N / EXP_BUFFER)`` calls on one buffer of at most ``EXP_BUFFER`` step-size-like values (in
    [-8, 0]) written to a second buffer, so both stay in cache, on the current torch threads.

    Calling it runs one pass of all the calls (the floor is the best pass, timed like a backend's call) and
    also times each call: :attr:`best_call_seconds` is ``calls`` times the fastest single call, what the
    pass would take if no other process ever took a core from it (on a loaded machine a pass of many short
    parallel calls loses a time slice far more often than one long kernel call does)."""

    def __init__(self, shape: tuple[int, int, int, int], function: Callable[..., Tensor]) -> None:
        self.function = function
        updates = shape[0] * shape[1] * shape[2] * shape[3]
        size = min(updates, EXP_BUFFER)
        self.x = torch.rand(size, generator=torch.Generator().manual_seed(2)) * -8.0
        self.out = torch.empty_like(self.x)
        self.calls = -(-updates // size)
        self.best_call = float("inf")

    def __call__(self) -> None:
        for _ in range(self.calls):
            start = time.perf_counter()
            self.function(self.x, out=self.out)
            self.best_call = min(self.best_call, time.perf_counter() - start)

    @property
    def best_call_seconds(self) -> float:
        return self.calls * self.best_call

