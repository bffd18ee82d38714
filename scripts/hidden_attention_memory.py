"""Peak memory of a channel-averaged hidden-attention map of a long sequence (``vimtune.viz.hidden_attention``).

Measures the growth of the process's peak resident memory (``ru_maxrss``) while one (T, T) map is built from
random scan inputs of Vim-S's width, and compares it with the (T, T) float32 result itself:

    python scripts/hidden_attention_memory.py [--length 6085] [--channels 384] [--state 16] [--block 128]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from vimtune.viz.hidden_attention import hidden_attention


def rss_mib() -> float:
    """The current resident memory of this process in MiB (``/proc/self/statm``)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=6085, help="T, tokens (6085: Vim-S at 1248 px)")
    parser.add_argument("--channels", type=int, default=384, help="E, scan channels (384: Vim-S's d_inner)")
    parser.add_argument("--state", type=int, default=16, help="N, state size")
    parser.add_argument("--block", type=int, default=128, help="query rows per block")
    args = parser.parse_args()
    torch.manual_seed(0)
    length, channels, state = args.length, args.channels, args.state
    u = torch.randn(1, channels, length)
    delta = torch.randn(1, channels, length) * 0.5
    A = -torch.exp(torch.randn(channels, state) * 0.5)
    B, C = torch.randn(1, state, length), torch.randn(1, state, length)
    bias = torch.randn(channels) * 0.1
    before = rss_mib()
    start = time.perf_counter()
    alpha = hidden_attention(u, delta, A, B, C, bias, True, channel_mean=True, block=args.block)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result = alpha.numel() * alpha.element_size() / 2**20
    print(f"T={length} E={channels} N={state} block={args.block}: peak resident memory grew {peak - before:.0f} MiB "
          f"while building the map ({result:.0f} MiB of it the (T, T) float32 result; {seconds:.0f} s, "
          f"{torch.get_num_threads()} threads); finite: {bool(torch.isfinite(alpha).all())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
