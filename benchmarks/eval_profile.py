"""Where `evaluate`'s time goes: one evaluation under cProfile, each pass's cumulative seconds and its share
of the whole, in one process. Used to choose the demo's caps (BENCHMARKS.md).

    .venv/bin/python benchmarks/eval_profile.py runs/demo/checkpoints/nih_roi_consistency.best.pt runs/demo \
        --curve-images 16 --road-ratios 0.1

cProfile slows Python-heavy code more than the backbone's calls, so the shares, not the seconds, are the
figure to read.
"""
import argparse
import cProfile
import pstats
import tempfile
import time

from roi_consistency.evaluation.evaluate import evaluate_checkpoint

# (label, file suffix, function) of the passes reported, in the order evaluate runs them
PASSES = [("the passes over the test set, in all", "evaluation/passes.py", "evaluate_model"),
          ("  image pass (every map at the model's ratio)", "evaluation/passes.py", "image_pass"),
          ("  crop and drop with the fill, every pass", "evaluation/passes.py", "crop_drop"),
          ("  crop and drop with ROAD (the pair pass)", "evaluation/passes.py", "road_crop_drop"),
          ("  deletion/insertion curves", "evaluation/passes.py", "curve_pass"),
          ("  localisation", "evaluation/passes.py", "localisation_pass"),
          ("randomisation check (--sanity)", "evaluation/randomisation.py", "frozen_head_check"),
          ("confounder audit (--confounders)", "evaluation/confounders.py", "audit"),
          ("  gallery.html cards", "outputs/gallery.py", "add"),
          ("gallery.html page", "outputs/gallery.py", "finish"),
          ("metrics and bootstrap", "evaluation/summary.py", "summarize"),
          ("report.html", "outputs/report.py", "write_report")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("demo_dir", help="a folder laid out as run_all.sh --demo leaves it (csv/, phantom/, cache256/)")
    ap.add_argument("--curve-images", type=int, default=32)
    ap.add_argument("--road-ratios", default="0.05,0.1,0.2")
    ap.add_argument("--no-sanity", action="store_true")
    ap.add_argument("--confounders", default=None, help="a confounder file: profile the audit too")
    a = ap.parse_args()
    d = a.demo_dir
    prof, t0 = cProfile.Profile(), time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        prof.runcall(evaluate_checkpoint, a.checkpoint, f"{d}/csv/nih_roi_test.csv", f"{d}/phantom/images",
                     bbox=f"{d}/phantom/BBox_List_2017.csv", out_dir=out, cache=f"{d}/cache256", progress=False,
                     sanity=not a.no_sanity, curve_images=a.curve_images, confounders=a.confounders,
                     road_ratios=tuple(float(r) for r in a.road_ratios.split(",")))
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    print(f"evaluate under cProfile: {wall:.1f} s (curve images {a.curve_images}, ROAD ratios {a.road_ratios}, "
          f"sanity {not a.no_sanity})")
    for label, suffix, name in PASSES:
        found = [v[3] for (f, _, n), v in stats.items() if f.endswith(suffix) and n == name]
        skipped = (name == "frozen_head_check" and a.no_sanity) or (name == "audit" and not a.confounders)
        if not found and not skipped:
            raise SystemExit(f"eval_profile: no function {name} in {suffix}: update PASSES to the code")
        ct = max(found, default=0.0)
        print(f"  {label:56s} {ct:7.1f} s  {ct / wall:6.1%}")


if __name__ == "__main__":
    main()
