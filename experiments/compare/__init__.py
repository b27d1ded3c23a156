"""The objectives compared on one block: `python -m experiments.compare ...` (see __main__.py)."""
