"""The benchmark runs in its smoke size, exits 0, prints its table and writes the ratio keys."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick_runs_and_reports_ratios(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--json",
                          str(tmp_path / "b.json")], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "PNG decode + resize" in run.stdout and "samples/s" in run.stdout
    figures = json.loads((tmp_path / "b.json").read_text())
    assert figures["loader_speedup_cache_vs_png"] > 0 and figures["fused_speedup_vs_three_calls"] > 0
    assert {r["passes"] for r in figures["steps"]} == {"fused", "separate"}
    assert "ROAD imputation" in run.stdout and figures["road_speedup_vs_gradcam"] > 0
    assert {o: figures["road"][o]["speedup"] > 0 for o in ("morf", "lerf")} == {"morf": True, "lerf": True}
