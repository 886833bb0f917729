"""FSDP's refusals on two ranks (torchrun, gloo): beside DDP() (both split the work), added
after a fit whose optimizer has state (sharding rebuilds the optimizer, which would drop it), a
loader that is not sharded, and a rank-local call on one rank, before any validation pass or
after a fit's. Every rank refuses in full, before anything changes; a fit with no validation set
is no refusal. FSDP's keyword arguments reach every ``fully_shard`` call."""

from __future__ import annotations

import pytest
import torch

from tests.jobs.launch import run_case

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_fsdp_beside_ddp_or_after_the_optimizer_stepped_is_refused_on_every_rank(tmp_path):
    ranks = run_case(tmp_path, "fsdp-refusals")
    # a fit with no validation set (and GradientAccumulation(1), which accumulates nothing)
    # trains; then predict on rank 0 alone is refused (the ranks meet before each rank-local
    # call, the first one too)
    refusal = ranks[0]["said"]["predict"]
    # the same after a fit whose validation passes met the ranks: each call meets again
    assert ranks[0]["said"].pop("predict-after-validation") == refusal
    # fully_shard got FSDP's keyword arguments (a float32 policy on the float64 model), on the
    # layers and on the root
    for rank in ranks:
        assert rank["dtypes"] == {"layers": ["torch.float32"], "root": ["torch.float32"]}
    assert ranks[0]["said"].pop("predict") == (
        "FSDP: learn.predict() was called on rank 0, and the other ranks did not call it within "
        "2.0 s: under FSDP each rank holds a shard of the weights, so every forward is a "
        "collective and validate(), get_preds() and predict() must be called on every rank at "
        "the same point (each then gets the whole result). Call learn.predict() on every rank "
        "and use its result on rank 0 only (if pluglearn.dist.is_main_process(): ...)."
    )
    for rank in ranks:
        assert rank["said"] == {
            "both": "FSDP() with DDP(): they both split the work across the ranks; keep one of "
            "them.",
            "late": "FSDP(): the optimizer has already stepped (a fit before FSDP() was added), "
            "and sharding the model means rebuilding it, which would drop that state. Add "
            "FSDP() before the first fit (Learner(..., plugins=[FSDP()])).",
            "unsharded": "FSDP(): the train loader (DataLoader) is not sharded across the ranks "
            "(or has no len), so the ranks cannot run the same number of forwards: use "
            "DataLoaders.from_datasets(train, valid, batch_size=...) (batch_size is the global "
            "batch), or a torch DataLoader with a DistributedSampler.",
        }
        assert rank["unchanged"]  # the refused fit trained nothing
