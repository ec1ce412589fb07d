"""Run every benchmark (or those named) and print ratios against their targets.

    python -m benchmarks                 # all
    python -m benchmarks native wasm    # some: see MODULES (native ... operator nodeloss)
    python -m benchmarks --json out.json
    ESTARTER_BENCH_300=1 python -m benchmarks cluster   # also the 300-app memory run
    ESTARTER_BENCH_HUNDREDS=1 python -m benchmarks hundreds  # 300 apps on 3 nodes

A module may list the figures it reports in ``FIGURES`` (name prefixes): any of them
it did not report (it failed, or the machine could not give a number) is printed as
``not measured`` with its target, so the table always has every row. A module may
also call ``report.unmeasured(name, target, why)`` itself.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from typing import Any

MODULES = ["native", "fs", "fairness", "wasm", "limits", "cluster", "operator",
           "nodeloss", "hundreds"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(MODULES)}")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []

    def report(name: str, ours: float, baseline: float, target: float | None,
               unit: str) -> None:
        ratio = ours / baseline if baseline else float("inf")
        ok = "" if target is None else ("ok" if ratio <= target else "MISSED")
        rows.append({"name": name, "ours": ours, "baseline": baseline, "ratio": ratio,
                     "target": target, "unit": unit, "verdict": ok})
        tgt = "" if target is None else f"<= {target:g}x"
        print(f"{name:58s} ours {ours:10.4g} {unit:3s} base {baseline:10.4g} {unit:3s} "
              f"ratio {ratio:6.2f}x {tgt:8s} {ok}", flush=True)

    def unmeasured(name: str, target: float | None, why: str) -> None:
        rows.append({"name": name, "ours": None, "baseline": None, "ratio": None,
                     "target": target, "unit": "", "verdict": "not measured", "why": why})
        tgt = "" if target is None else f"<= {target:g}x"
        print(f"{name:58s} not measured ({why[:80]}) {tgt}", flush=True)

    report.unmeasured = unmeasured  # type: ignore[attr-defined]

    failed = 0
    for name in args.names or MODULES:
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
        except ModuleNotFoundError:
            print(f"-- {name}: not available", flush=True)
            continue
        print(f"-- {name}", flush=True)
        before = len(rows)
        why = "the benchmark did not report it"
        try:
            module.run(report)
        except Exception as exc:
            failed += 1
            traceback.print_exc()
            why = f"{type(exc).__name__}: {exc}"
        done = [str(r["name"]) for r in rows[before:]]
        for figure, target in getattr(module, "FIGURES", {}).items():
            if not any(n.startswith(figure) for n in done):
                unmeasured(figure, target, why)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
