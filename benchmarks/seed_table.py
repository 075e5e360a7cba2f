"""The headline figures of several evaluations side by side, and each group's mean and spread.

Usage: python benchmarks/seed_table.py NAME=EVAL_DIR[,EVAL_DIR…] …
Each EVAL_DIR holds evaluate's metrics.json; runs of one NAME are, for example, training seeds of one
variant. Prints a Markdown table: one row per run, then the mean and the standard deviation (n − 1) of
each group, so that a difference between variants can be read against the spread of a run.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from roi_consistency.evaluation.schema import ratio_key, upgraded

R = ratio_key(0.1)


def figures(d: dict) -> dict:
    f, road = d["faithfulness"], d["road"]
    loc, vs = d["localisation"], d["uncertainty"]["learned_vs_gradcam"]
    out = {"AUROC": d["mean_auroc"]["full"]}
    for label, get in (("comp", lambda m: f[m]["comprehensiveness"][R]), ("ROAD MoRF", lambda m: road[m]["morf"][R]),
                       ("ROAD LeRF", lambda m: road[m]["lerf"][R]), ("pointing", lambda m: loc[m]["pointing_game"])):
        out[f"{label} L"], out[f"{label} G"] = get("learned"), get("gradcam")
    out["MoRF L−G"] = vs["road_morf"]["difference"]
    out["p (MoRF)"] = vs["road_morf"]["p"]
    if (d.get("sanity") or {}).get("frozen_head"):  # at the verdict's step (earlier checks stopped there)
        s = d["sanity"]["frozen_head"]
        out["sanity ρ L, fc"] = s["maps"]["learned"]["median"][0]  # only the head random: issue 28's target 2
        out["sanity ρ L"] = s["maps"]["learned"]["median"][s.get("judged_at", len(s["stages"])) - 1]
    return out


def main(argv: list[str]) -> None:
    groups = {}
    for arg in argv:
        name, dirs = arg.split("=", 1)
        groups[name] = [(p, figures(upgraded(json.loads((Path(p) / "metrics.json").read_text()))))
                        for p in dirs.split(",")]
    cols = list(next(iter(groups.values()))[0][1])
    print("| run | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, runs in groups.items():
        for path, fig in runs:
            print(f"| {name}: {path} | " + " | ".join(f"{fig.get(c, float('nan')):.3f}" for c in cols) + " |")
    for name, runs in groups.items():
        vals = {c: [fig[c] for _, fig in runs if c in fig] for c in cols}
        mean = " | ".join(f"{statistics.mean(v):.3f}" if v else "—" for v in vals.values())
        sd = " | ".join(f"{statistics.stdev(v):.3f}" if len(v) > 1 else "—" for v in vals.values())
        print(f"| **{name}: mean of {len(runs)}** | {mean} |")
        print(f"| {name}: sd | {sd} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
