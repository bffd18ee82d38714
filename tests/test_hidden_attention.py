"""``vimtune.viz.hidden_attention``: the implicit attention of a selective scan reproduces the scan exactly."""

from __future__ import annotations

import pytest
import torch

from vimtune.ops import selective_scan
from vimtune.viz.hidden_attention import hidden_attention, hidden_attention_row


def _scan_inputs(seed: int, batch: int, channels: int, state: int, length: int, delta_scale: float = 0.5):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    A = -(torch.rand(channels, state, generator=gen, dtype=torch.float64) * 4 + 0.05)
    return (rand(batch, channels, length), rand(batch, channels, length) * delta_scale, A,
            rand(batch, state, length), rand(batch, state, length), rand(channels))


@pytest.mark.parametrize(("seed", "batch", "channels", "state", "length", "block"),
                         [(0, 1, 1, 1, 1, 128), (1, 2, 3, 4, 17, 5), (2, 3, 6, 16, 40, 128), (3, 1, 4, 2, 33, 1)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_alpha_times_u_is_the_selective_scan(seed: int, batch: int, channels: int, state: int, length: int,
                                            block: int, with_bias: bool) -> None:
    u, delta, A, B, C, bias = _scan_inputs(seed, batch, channels, state, length)
    bias = bias if with_bias else None
    softplus = with_bias  # without softplus the steps must stay positive: take their absolute value
    delta = delta if softplus else delta.abs()
    alpha = hidden_attention(u, delta, A, B, C, delta_bias=bias, delta_softplus=softplus, block=block)
    assert alpha.shape == (batch, channels, length, length) and alpha.dtype == torch.float64
    expected = selective_scan(u, delta, A, B, C, delta_bias=bias, delta_softplus=softplus, backend="reference")
    torch.testing.assert_close(torch.einsum("bets,bes->bet", alpha, u), expected, rtol=0, atol=1e-10)
    assert torch.count_nonzero(alpha.triu(diagonal=1)) == 0  # causal: nothing from later tokens


def test_channel_mean_and_single_rows_agree_with_the_whole_matrix() -> None:
    u, delta, A, B, C, bias = _scan_inputs(4, 2, 5, 3, 29)
    alpha = hidden_attention(u, delta, A, B, C, bias, True)
    for block in (3, 128):
        mean = hidden_attention(u, delta, A, B, C, bias, True, channel_mean=True, block=block)
        torch.testing.assert_close(mean, alpha.mean(dim=1), rtol=0, atol=1e-12)
    for row in (0, 13, 28):
        torch.testing.assert_close(hidden_attention_row(u, delta, A, B, C, row, bias, True), alpha[:, :, row],
                                   rtol=0, atol=1e-12)


def test_long_decays_stay_finite_where_exp_of_the_cumulative_sum_would_overflow() -> None:
    """cs_t reaches about -4e4: exp(-cs_s) alone would be inf; the result still matches the sequential scan."""
    u, delta, A, B, C, _ = _scan_inputs(5, 1, 2, 4, 300)
    delta = delta.abs() + 30.0
    alpha = hidden_attention(u, delta, A, B, C, block=64)
    assert torch.isfinite(alpha).all()
    expected = selective_scan(u, delta, A, B, C, backend="reference")
    torch.testing.assert_close(torch.einsum("bets,bes->bet", alpha, u), expected, rtol=0, atol=1e-10)


def test_a_channel_averaged_map_of_6085_tokens_is_built_in_bounded_blocks() -> None:
    """The sequence length of Vim-S at 1248 px (stride 16: 78 x 78 patches + cls)."""
    length = 6085
    u, delta, A, B, C, bias = (t.float() for t in _scan_inputs(6, 1, 2, 2, length, delta_scale=0.1))
    mean = hidden_attention(u, delta, A, B, C, bias, True, channel_mean=True, block=512)
    assert mean.shape == (1, length, length) and mean.dtype == torch.float32
    for row in (0, 3000, length - 1):
        expected = hidden_attention_row(u, delta, A, B, C, row, bias, True).mean(dim=1)
        torch.testing.assert_close(mean[:, row], expected, rtol=1e-5, atol=1e-7)


def test_mismatched_shapes_name_the_tensor() -> None:
    u, delta, A, B, C, bias = _scan_inputs(7, 1, 3, 2, 8)
    with pytest.raises(ValueError, match=r"B must be \(1, 2, 8\)"):
        hidden_attention(u, delta, A, B[:, :, :5], C)
    with pytest.raises(ValueError, match="row 8 is outside"):
        hidden_attention_row(u, delta, A, B, C, 8)
