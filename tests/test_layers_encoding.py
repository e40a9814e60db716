"""The layers encoding: the client sends layers as data, the scheduler lowers them.

Stories: for every workload, lowering on the scheduler gives exactly the task set (keys and
dependencies) that lowering on the client gives, and computing gives the same results; the
message for a regular graph does not grow with the task count; the scheduler's decoding
never unpickles (a template whose unpickling would write a file is sent; no file appears);
bad layer messages are refused with a clear error.
"""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from harness.workloads import WORKLOADS, build
from scheduler.graph.layers import LayerGraph, blockwise
from scheduler.graph.task import BlockArg, IndexSlot
from scheduler.runtime.inproc import InProcessCluster
from scheduler.wire.encodings import SpecLoader, decode_graph, encode_graph
from scheduler.wire.frames import WireError
from scheduler.wire.layers import output_keys


def _both_ways(name: str, n: int):
    w = build(name, n)
    layers = w.layer_graph()
    frames = encode_graph(layers, "layers", outputs=[w.output_layer])
    wire = decode_graph(frames)
    return w, layers, wire


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_same_task_set_as_client_lowering(name: str) -> None:
    w, layers, wire = _both_ways(name, 3000)
    client_side = w.lower()
    assert wire.graph.keys() == client_side.keys()
    assert wire.graph.edges() == client_side.edges()
    keys = [wire.graph.key_of(int(i)) for i in wire.outputs]
    assert keys == output_keys(layers, [w.output_layer])
    assert set(keys) == set(w.outputs)


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_same_results_as_compact(name: str) -> None:
    w = build(name, 2000)
    expected = w.lower().execute(w.outputs)
    cluster = InProcessCluster(2)
    got = cluster.run(w.layer_graph(), encoding="layers", output_layers=[w.output_layer],
                      graph_id="layers").results
    assert got == expected
    compact = InProcessCluster(2).run(w.lower(), w.outputs, graph_id="compact").results
    assert compact == expected


def test_message_size_does_not_grow_with_tasks() -> None:
    sizes = []
    for n in (1_000, 100_000, 1_000_000):
        w = build("elementwise", n)
        frames = encode_graph(w.layers, "layers", outputs=[w.output_layer])
        sizes.append(sum(len(f) for f in frames))
    assert max(sizes) - min(sizes) <= 16  # only the digits of the shape change
    assert max(sizes) < 4096


class _WritesFile:
    """Unpickling this creates a file: proof that something unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_scheduler_never_unpickles_layers(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    layers = LayerGraph([blockwise("x", (4,), _identity, IndexSlot(0), _WritesFile(str(marker))),
                         blockwise("y", (4,), _identity, BlockArg("x"), 0)])
    frames = encode_graph(layers, "layers", outputs=["y"])
    wire = decode_graph(frames)
    assert wire.graph.n == 8
    assert not marker.exists()
    SpecLoader(wire.functions).load(wire.graph.groups[0].template)  # a worker would
    assert marker.exists()


def _identity(x, *_):
    return x


def test_bad_layer_messages_are_refused() -> None:
    w = build("elementwise", 100)
    frames = encode_graph(w.layers, "layers", outputs=[w.output_layer])
    header = msgpack.unpackb(frames[0], raw=False)
    bad = dict(header, outputs=["nope"])
    with pytest.raises(WireError, match="not among the layers"):
        decode_graph([msgpack.packb(bad, use_bin_type=True), *frames[1:]])
    layers = [dict(e) for e in header["layers"]]
    layers[1] = dict(layers[1], params=dict(layers[1]["params"], inputs=["missing"]))
    with pytest.raises(WireError, match="not an earlier layer"):
        decode_graph([msgpack.packb(dict(header, layers=layers), use_bin_type=True),
                      *frames[1:]])
    huge = [dict(e) for e in header["layers"]]
    huge[0] = dict(huge[0], params=dict(huge[0]["params"], shape=[10**9, 10**9]))
    huge[1] = dict(huge[1], params=dict(huge[1]["params"], shape=[10**9, 10**9]))
    with pytest.raises(WireError, match="more than"):
        decode_graph([msgpack.packb(dict(header, layers=huge), use_bin_type=True),
                      *frames[1:]])


@pytest.mark.cluster
def test_layers_and_compact_agree_on_a_cluster() -> None:
    """Several graphs in a row on one cluster (so later graphs get ids past the first ones):
    every workload computes the same values whichever side lowers it."""
    from scheduler import Client, LocalCluster

    with LocalCluster(n_workers=2) as cluster, Client(cluster) as client:
        for name in WORKLOADS:
            w = build(name, 3000)
            got = client.run(w.layer_graph(), encoding="layers",
                             output_layers=[w.output_layer], timeout=120).results
            assert got == client.compute(w.lower(), w.outputs, timeout=120), name
