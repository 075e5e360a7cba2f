"""The confounder audits of several evaluations side by side, with each group's mean and spread.

Usage: python benchmarks/confounder_table.py NAME=EVAL_DIR[,EVAL_DIR…] … [--finding Pneumothorax]
Each EVAL_DIR holds a metrics.json written by `evaluate --confounders`. Prints two Markdown tables: the
model's reliance on the listed regions, and each map's pointing and share on the pairs the model relies on
and on those it ignores; one row per run, then each group's mean and standard deviation (n − 1).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def reliance_row(m: dict, finding: str) -> dict:
    s = m["confounders"]["sets"]
    return {"AUROC": m["auroc"]["full"].get(finding), "pairs": s["all"]["n_pairs"],
            "relied": s["relied"]["n_pairs"], "ignored": s["ignored"]["n_pairs"],
            "reliance fill": s["all"]["reliance"]["fill"]["mean"],
            "reliance ROAD": s["all"]["reliance"]["road"]["mean"],
            "share > 0.1": s["all"]["reliance"]["fill"]["share_above"]}


def maps_row(m: dict, measure: str) -> dict:
    s = m["confounders"]["sets"]
    return {f"{name} {k}": s[k]["maps"][name][measure]["mean"] if s[k]["n_pairs"] else None
            for name in m["confounders"]["maps"] for k in ("relied", "ignored")}


def table(groups: dict, row) -> None:
    rows = {g: [(p, row(json.loads((Path(p) / "metrics.json").read_text()))) for p in dirs]
            for g, dirs in groups.items()}
    cols = list(next(iter(rows.values()))[0][1])
    print("| run | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
    fmt = lambda v: "—" if v is None else (f"{v}" if isinstance(v, int) else f"{v:.3f}")  # noqa: E731
    for g, rs in rows.items():
        for p, r in rs:
            print(f"| {g}: {p} | " + " | ".join(fmt(r[c]) for c in cols) + " |")
    for g, rs in rows.items():
        vals = {c: [r[c] for _, r in rs if r[c] is not None] for c in cols}
        means = [fmt(statistics.mean(v)) if v else "—" for v in vals.values()]
        print(f"| **{g}: mean of {len(rs)}** | " + " | ".join(means) + " |")
        print(f"| {g}: sd | " + " | ".join(fmt(statistics.stdev(v)) if len(v) > 1 else "—" for v in vals.values())
              + " |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="NAME=EVAL_DIR[,EVAL_DIR…]")
    ap.add_argument("--finding", default="Pneumothorax")
    a = ap.parse_args()
    groups = {r.split("=", 1)[0]: r.split("=", 1)[1].split(",") for r in a.runs}
    table(groups, lambda m: reliance_row(m, a.finding))
    for measure in ("share", "pointing"):
        print(f"{measure}, on the pairs the model relies on | ignores:\n")
        table(groups, lambda m, k=measure: maps_row(m, k))


if __name__ == "__main__":
    main()
