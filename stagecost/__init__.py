"""stagecost as a library: ``measure`` runs work on backends stage by stage, as
``stagecost run`` does; ``recording`` measures the computations run inside a ``with`` block
on an existing ``distributed.Client``. The command line is ``harness.cli``."""

from harness.api import measure
from harness.recording import Recording, recording

__all__ = ["Recording", "measure", "recording"]
