"""The pure state machines import alone: no event loop, no sockets, no wire format, no runtime.

Each module of ``scheduler.state`` is imported in a fresh interpreter, which then lists the
modules it loaded; what does I/O must not be among them.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys

import pytest

import scheduler.state

FORBIDDEN = ("asyncio", "socket", "selectors", "msgpack", "cloudpickle", "scheduler.runtime",
             "scheduler.wire", "harness")
STATE_MODULES = sorted(f"scheduler.state.{m.name}"
                       for m in pkgutil.iter_modules(scheduler.state.__path__))


def loaded_by(module: str) -> list[str]:
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_state_package_has_modules_to_check() -> None:
    assert {"scheduler.state.scheduler", "scheduler.state.worker"} <= set(STATE_MODULES)


@pytest.mark.parametrize("module", STATE_MODULES)
def test_importing_a_state_module_loads_no_io(module: str) -> None:
    loaded = loaded_by(module)
    bad = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert not bad, f"importing {module} loaded {bad}"


def test_the_runtime_still_loads_on_first_use() -> None:
    loaded = loaded_by("scheduler")
    assert "scheduler.runtime" not in loaded
    import scheduler as pkg

    assert pkg.Client.__module__ == "scheduler.runtime.client"
    assert pkg.LocalCluster.__module__ == "scheduler.runtime.cluster"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        pkg.Nope  # noqa: B018
