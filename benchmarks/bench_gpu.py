"""GPU benchmark: pybert.Engine against its peers (see pybert/bench/gpu.py; also `pybert bench
--device cuda`).

    python benchmarks/bench_gpu.py [--peers all] [--workloads all] [--repeats 30] [--json F]
"""

import sys

from pybert.bench.gpu import main

if __name__ == "__main__":
    sys.exit(main())
