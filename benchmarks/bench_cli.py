"""How fast the command line answers: ``grpokit --help``, ``grpokit train --help`` and a config
error, each a fresh process, measured by wall clock; and whether torch was imported for it.

    python benchmarks/bench_cli.py --repeats 10

Prints a markdown table (median and max of the repeats) and writes benchmarks/results/cli.json.
Target (issue 11): ``grpokit --help`` under 1 s on this machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = ("import runpy, sys\nsys.argv = ['grpokit', *sys.argv[1:]]\ntry:\n"
         "    runpy.run_module('grpokit', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "sys.stderr.write('torch imported: %s' % ('torch' in sys.modules))\n")


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    return time.perf_counter() - started, result.stdout + result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    grpokit = shutil.which("grpokit") or sys.exit("install grpokit first: pip install -e .")
    bad = Path(tempfile.mkdtemp()) / "bad.yaml"
    bad.write_text("grpo:\n  num_generation: 4\n")
    cases = {"grpokit --help": ["--help"], "grpokit train --help": ["train", "--help"],
             "grpokit train bad.yaml (config error)": ["train", str(bad)]}
    rows = []
    for name, argv in cases.items():
        seconds = sorted(timed([grpokit, *argv])[0] for _ in range(args.repeats))
        torch_loaded = "torch imported: True" in timed([sys.executable, "-c", PROBE, *argv])[1]
        rows.append({"command": name, "median_s": statistics.median(seconds), "max_s": seconds[-1],
                     "imports_torch": torch_loaded})
    print("| command | median s | max s | imports torch |\n|---|---|---|---|")
    for row in rows:
        print(f"| `{row['command']}` | {row['median_s']:.2f} | {row['max_s']:.2f} | {row['imports_torch']} |")
    out = Path(__file__).parent / "results" / "cli.json"
    out.write_text(json.dumps({"command": f"python benchmarks/bench_cli.py --repeats {args.repeats}",
                               "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
