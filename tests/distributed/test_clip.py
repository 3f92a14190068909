"""Gradient clipping: in one process it is torch's; under tp2 and tp2 x dp2 (mixed DTensor and plain gradients,
FSDP2 shards) the training tests of test_tensor_parallel clip at a norm below the gradients' and match one
process."""

from __future__ import annotations

import pytest
import torch

from flm.distributed.clip import clip_grad_norm_
from flm.distributed.init import materialize, meta_model

from ._common import CLIP, ONE, SEED, batches, tiny_cfg


def with_grads():
    model = materialize(meta_model(tiny_cfg()), "cpu", SEED)
    x, y = batches(tiny_cfg(), steps=1)[0]
    model(x, targets=y).backward()
    return model


def test_clip_matches_torch():
    a, b = with_grads(), with_grads()
    norm = clip_grad_norm_(a.parameters(), CLIP, ONE)
    want = torch.nn.utils.clip_grad_norm_(b.parameters(), CLIP)
    assert norm > CLIP  # the tests' clip level acts
    assert abs(float(norm) - float(want)) <= 1e-6 * float(want)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, rtol=1e-6, atol=0)


def test_zero_max_norm_only_measures():
    model = with_grads()
    before = [p.grad.clone() for p in model.parameters()]
    norm = clip_grad_norm_(model.parameters(), 0.0, ONE)
    assert float(norm) > 0
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), before))


def test_no_gradients_is_an_error():
    with pytest.raises(ValueError, match="after backward"):
        clip_grad_norm_(materialize(meta_model(tiny_cfg()), "cpu", SEED).parameters(), 1.0, ONE)
