"""Gradient accumulation: batch 4 x accum 2 makes the updates of batch 8, the short last group of an epoch
included (its update is that of one batch of the samples it holds)."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import vimtune.models  # noqa: F401 - registers the Vim configs with timm
from helpers.runs import NoSchedule
from vimtune.engine.distributed import DistContext
from vimtune.engine.loop import EpochRunner

BATCH = 4


def _model() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vim_nano_patch4_32", num_classes=3, depth=1, embed_dim=16, img_size=8,
                             scan_backend="chunked").double()


def _train(batches: list[tuple[torch.Tensor, torch.Tensor]], accum_steps: int) -> tuple[nn.Module, int, float]:
    """One epoch of plain SGD over ``batches``: (model, optimizer updates, mean loss)."""
    model = _model()
    runner = EpochRunner(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5), scheduler=NoSchedule(),
                         criterion=nn.CrossEntropyLoss(), ctx=DistContext(), accum_steps=accum_steps)
    updates, loss, _ = runner.run(batches, epoch=0, epochs=1, global_step=0)
    return model, updates, loss


# (batches of 4 in the epoch, accum steps): a short last group of 1 batch, of 2 batches, and none
@pytest.mark.parametrize("n_batches, accum", [(3, 2), (5, 3), (4, 2)])
def test_accumulated_batches_update_like_one_big_batch(n_batches: int, accum: int) -> None:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n_batches * BATCH, 3, 8, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (n_batches * BATCH,), generator=g)
    small = [(images[i:i + BATCH], labels[i:i + BATCH]) for i in range(0, len(images), BATCH)]
    big_batch = accum * BATCH
    big = [(images[i:i + big_batch], labels[i:i + big_batch]) for i in range(0, len(images), big_batch)]

    accumulated, accumulated_updates, accumulated_loss = _train(small, accum)
    reference, reference_updates, reference_loss = _train(big, 1)
    assert accumulated_updates == reference_updates == -(-n_batches // accum)
    assert accumulated_loss == pytest.approx(reference_loss, rel=1e-12)
    moved = False
    for (name, p), q in zip(accumulated.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14, msg=lambda m, n=name: f"{n}: {m}")
        moved |= not torch.equal(q, _model().get_parameter(name))
    assert moved  # the updates were not all zero
