"""Run every bench/bench_*.py, then gather their RESULTS_*.md into bench/RESULTS.md.

    python bench/run_all.py                 # all benches (tens of minutes on 2 cores)
    python bench/run_all.py quant prune     # only bench_quant.py and bench_prune.py
    python bench/run_all.py --gather-only   # just rebuild RESULTS.md from the sections
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import describe  # noqa: E402


def main(argv: list[str]) -> int:
    gather_only = "--gather-only" in argv  # rebuild RESULTS.md from the sections already written
    only = {a for a in argv if not a.startswith("--")}
    failed = []
    for script in [] if gather_only else sorted(HERE.glob("bench_*.py")):
        topic = script.stem.removeprefix("bench_")
        if only and topic not in only:
            continue
        print(f"== {script.name}", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode:
            failed.append(script.name)
    parts = [f"# edgeopt benchmarks\n\nGathered by `make bench` (bench/run_all.py) on: {describe()}\n"
             "Each section below was written by its own script, with the machine it ran on.\n"]
    for result in sorted(HERE.glob("RESULTS_*.md")):
        parts.append(result.read_text().strip() + "\n")
    (HERE / "RESULTS.md").write_text("\n".join(parts))
    print(f"wrote {HERE / 'RESULTS.md'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
