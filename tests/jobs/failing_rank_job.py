"""A two-rank job that fails on rank 1 and never ends: rank 1 raises, but a non-daemon thread
(as a stuck loader or logger thread would) keeps its process alive, and rank 0 waits for it in
a barrier (gloo's timeout: 30 minutes). Each rank writes its pid to ``OUT/rank{r}.pid`` first.

    torchrun --nproc-per-node 2 tests/jobs/failing_rank_job.py OUT
"""

import os
import sys
import threading
import time
from pathlib import Path

import torch.distributed as dist

out, rank = Path(sys.argv[1]), int(os.environ["RANK"])
dist.init_process_group("gloo")
(out / f"rank{rank}.pid").write_text(str(os.getpid()))
if rank == 1:
    threading.Thread(target=time.sleep, args=(3600,)).start()
    raise RuntimeError("rank 1 fails")
dist.barrier()
