"""roi-consistency: a chest X-ray classifier trained with a learned region-of-interest mask, and the
evidence of whether the model relies on the region it highlights."""
__version__ = "0.1.0"
