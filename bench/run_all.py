"""`make bench`: every speed and memory benchmark of this machine, one after the other.

Each script prints what it measured and the machine's load; the peer comparison
(`bench/compare_peers.py`) needs the bench extra and is run on its own (README, Measure).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCRIPTS = ["bench_detector.py", "bench_embedder.py", "bench_gallery.py", "bench_pipeline.py", "bench_landmarks.py",
           "bench_liveness.py", "bench_daemon.py", "device_install_size.py"]


def main() -> int:
    failed = []
    for script in SCRIPTS:
        print(f"== {script}", flush=True)
        if subprocess.run([sys.executable, str(BENCH / script)], cwd=BENCH.parent).returncode != 0:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
