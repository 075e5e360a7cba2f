"""roi-consistency: a chest X-ray classifier trained with a learned region-of-interest mask, and the
evidence of whether the model relies on the region it highlights.

    import roi_consistency as rc
    model = rc.load("checkpoints/nih_roi_consistency.best.pt")
    model.predict(["a.png"])

The public names are `load` and `Model` (api.py); they are imported on first use, so the command line
starts without loading torch.
"""
from roi_consistency.version import __version__

__all__ = ["Model", "__version__", "load"]


def __getattr__(name: str):
    if name in ("Model", "load"):
        from roi_consistency import api
        return getattr(api, name)
    raise AttributeError(f"module 'roi_consistency' has no attribute {name!r}")
