"""Wall time of each tutorial notebook, in the test suite's fast mode and (optionally) in full.

Run: `python benchmarks/tutorials.py [--full] [NOTEBOOK ...]`. Each notebook runs top to bottom
with the `python3` kernel, exactly as `tests/test_tutorials.py` runs it (same executor), one after
the other in this process's kernels. Target: every notebook under 60 s in fast mode. The full
figures are what a reader waits for on this machine's CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The executor lives with the tests (nbclient is a test dependency); import it from there.
sys.path.insert(0, str(REPO_ROOT / "tests"))

import test_tutorials  # noqa: E402

FAST_MODE_BUDGET_SECONDS = 60.0


def _run(path: Path, fast: bool) -> float:
    with tempfile.TemporaryDirectory() as output_dir:
        started = time.perf_counter()
        test_tutorials.execute_notebook(path, Path(output_dir), timeout=3600, fast=fast)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="paths (default: every tutorial)")
    parser.add_argument("--full", action="store_true", help="also time the full (not fast) runs")
    args = parser.parse_args()
    paths = [Path(p).resolve() for p in args.notebooks] or test_tutorials.NOTEBOOKS

    print(f"{'notebook':<32} {'fast (s)':>9} {'budget':>7} {'full (s)':>9}")
    for path in paths:
        fast = _run(path, fast=True)
        full = f"{_run(path, fast=False):9.1f}" if args.full else f"{'-':>9}"
        verdict = "ok" if fast < FAST_MODE_BUDGET_SECONDS else "OVER"
        print(f"{path.stem:<32} {fast:9.1f} {verdict:>7} {full}", flush=True)


if __name__ == "__main__":
    main()
