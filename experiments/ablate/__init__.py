"""The ablation tables: `python -m experiments.ablate TABLE ...` (see __main__.py)."""
