"""``poolkit`` under torchrun with a fault injected into one rank (for tests/test_distributed.py).

    torchrun ... tests/helpers/rank_fault.py die RANK N -- run ARGS...
        rank RANK records every batch and exits hard after writing N batches
    torchrun ... tests/helpers/rank_fault.py own-cache-dir BASE -- run ARGS...
        each rank gets its own POOLKIT_CACHE_DIR, BASE/rank<r> (a cache dir not shared)
    torchrun ... tests/helpers/rank_fault.py other-arg RANK OLD NEW -- run ARGS...
        rank RANK is started with NEW where the others have OLD (another --data file, say)
"""

import os
import sys

import poolkit.encoding.encode
from poolkit.cli import main
from poolkit.encoding.cache import CacheWriter

mode, *rest = sys.argv[1 : sys.argv.index("--")]
sys.argv = ["poolkit", *sys.argv[sys.argv.index("--") + 1 :]]
rank = int(os.environ["RANK"])
if mode == "die" and rank == int(rest[0]):
    poolkit.encoding.encode.CHECKPOINT_EVERY = 1
    write, limit = CacheWriter.write, int(rest[1])

    def write_then_die(self, batch, states):
        write(self, batch, states)
        if len(self.crcs) >= limit:
            self.checkpoint()
            os._exit(17)

    CacheWriter.write = write_then_die
elif mode == "other-arg" and rank == int(rest[0]):
    sys.argv = [rest[2] if arg == rest[1] else arg for arg in sys.argv]
elif mode == "own-cache-dir":
    os.environ["POOLKIT_CACHE_DIR"] = os.path.join(rest[0], f"rank{rank}")
main()
