"""asv benchmarks of stagecost: one module per stage, plus end_to_end (see common.py)."""
