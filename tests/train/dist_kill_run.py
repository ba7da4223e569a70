"""Under torchrun: `r1lab train grpo ...` where rank KILL_RANK SIGKILLs itself at POINT (see
kill_run.py) and the other ranks run on (for test_distributed_cli.py).

    torchrun --nproc_per_node 2 tests/train/dist_kill_run.py KILL_RANK POINT r1lab-args...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    here = Path(__file__).resolve()
    sys.path[:0] = [str(here.parents[2]), str(here.parent)]  # tests.* rewards, kill_run
    from kill_run import arm

    from r1lab import cli

    rank, point = sys.argv[1], sys.argv[2]
    if os.environ.get("RANK") == rank:
        arm(point)
    sys.argv = ["r1lab", *sys.argv[3:]]
    cli.main()
