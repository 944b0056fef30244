"""Training entry points: `python -m experiments.train` (one run or a Hydra sweep)."""
