"""The reference client–scheduler–worker system of stagecost.

Rules: this package never imports ``harness``; ``scheduler.state`` does no I/O.
"""
