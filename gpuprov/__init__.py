"""gpuprov: take bare GPU servers to schedulable, shareable GPU capacity."""

__version__ = "0.1.0"
