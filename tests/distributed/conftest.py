"""The spawned layouts, run once per session and shared by the tests that check them."""

from __future__ import annotations

import pytest
import torch

from ._harness import spawn
from ._workers import Variant, suite

TP2_VARIANTS = [Variant(), Variant(sp=True, ac="full", fused=True)]
TP2DP2_VARIANTS = [Variant(), Variant(sp=True, ac="selective", fused=True)]
# every growth under tp2; with sequence parallel, those it changes: the hidden mask (width) and new blocks
TP2_GROWTHS = [(False, ["width", "heads", "ffn", "depth"]), (True, ["width", "depth"])]


@pytest.fixture(scope="session")
def tp2(tmp_path_factory) -> dict:
    """tp2 on 2 ranks: training variants, every growth with and without sequence parallel, the readout."""
    tmp = tmp_path_factory.mktemp("tp2")
    spawn(suite, 2, tmp, 2, TP2_VARIANTS, TP2_GROWTHS)
    return torch.load(tmp / "result.pt")


@pytest.fixture(scope="session")
def tp2dp2(tmp_path_factory) -> dict:
    """tp2 x dp2 (FSDP2 over dp) on 4 ranks: training variants and the readout."""
    tmp = tmp_path_factory.mktemp("tp2dp2")
    spawn(suite, 4, tmp, 2, TP2DP2_VARIANTS, [])
    return torch.load(tmp / "result.pt")
