"""Split points from a model's graph: every cut where exactly one tensor crosses from head to tail.

The module is traced with torch.fx into a flat list of nodes in execution order. A cut after position p
is valid when exactly one value computed at or before p is still used after p; that value is the
activation the edge sends. Inside a residual block the block's input is still needed by the addition at
its end, so two tensors cross every cut in its middle and none of them is offered.

Two kinds of value never count as crossing: parameters and buffers (`get_attr`: the tail holds its own
copy), and the batch size (`x.size(0)`: every tensor of an image model has the same batch dimension, so
the tail reads it from its own input).

A module called more than once (EfficientNet's one `_swish`, used by the stem and by the head) has one cut per
call, named as torch.fx keys the calls: its path for the first call, `path@k` for the k-th later one.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from splitrt.partition.errors import TraceError

__all__ = ["Cut", "TraceError", "find_cuts", "head_module", "tail_module", "trace"]


@dataclass(frozen=True)
class Cut:
    """A valid cut: `node` is the one tensor that crosses; `position` is its index in the graph."""

    name: str
    node: str
    position: int
    shape: tuple[int, ...]  # per sample, without the batch dimension
    dtype: str


class _Tracer(fx.Tracer):
    """Keeps the standard torch.nn layers and the modules named in `keep_whole` as single nodes.

    Remembers the module it was inside when tracing failed, so the error can name it.
    """

    def __init__(self, keep_whole: Iterable[str] = ()) -> None:
        super().__init__()
        self.keep_whole = set(keep_whole)
        self.stack: list[str] = []
        self.failed_in: str | None = None

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name in self.keep_whole or super().is_leaf_module(module, qualified_name)

    def call_module(self, module: nn.Module, forward, args, kwargs):  # type: ignore[no-untyped-def]
        name = self.path_of_module(module)
        self.stack.append(name)
        try:
            return super().call_module(module, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = name
            raise
        finally:
            self.stack.pop()


def trace(module: nn.Module, keep_whole: Sequence[str] = ()) -> fx.GraphModule:
    """torch.fx trace of `module`; modules named in `keep_whole` stay opaque (not traced into)."""
    known = dict(module.named_modules())
    for name in keep_whole:
        if name not in known:
            raise KeyError(f"{type(module).__name__} has no submodule {name!r}; its children: {', '.join(n for n, _ in module.named_children())}")
    tracer = _Tracer(keep_whole)
    try:
        graph = tracer.trace(module)
    except Exception as exc:
        where = tracer.failed_in or ""
        label = f"{where!r} ({type(known[where]).__name__})" if where else f"the top-level forward of {type(module).__name__}"
        children = [n for n, _ in module.named_children()]
        raise TraceError(
            f"cannot trace module {label}: {type(exc).__name__}: {exc}. "
            f"Fix: give explicit split points by module name, e.g. split_modules={children[:3]!r} "
            f"(command line: --split-modules {','.join(children[:3])}); those modules are kept whole and "
            f"cuts are offered only after them"
            + (f"; {where!r} must then be one of them or inside one" if where else "")
        ) from exc
    return fx.GraphModule(module, graph, class_name=type(module).__name__ + "Traced")


def _is_batch_size(node: fx.Node) -> bool:
    """`x.size(0)` or `x.shape[0]`: the batch size, the same for every tensor in the graph."""
    if node.op == "call_method" and node.target == "size":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return dim == 0
    if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
        source = node.args[0]
        return isinstance(source, fx.Node) and (
            (source.op == "call_function" and source.target is getattr and source.args[1] == "shape")
            or (source.op == "call_method" and source.target == "size" and len(source.args) == 1)
        )
    return False


def _free(node: fx.Node) -> bool:
    """Values that never count as crossing a cut."""
    return node.op == "get_attr" or _is_batch_size(node)


def _shape_helpers(node: fx.Node) -> set[fx.Node]:
    """The `x.shape` / `x.size()` nodes that feed a batch-size node (recreated in the tail, not crossing)."""
    helpers: set[fx.Node] = set()
    if node.op == "call_function" and node.target is operator.getitem:
        source = node.args[0]
        if isinstance(source, fx.Node):
            helpers.add(source)
    return helpers


def _calls(node: fx.Node) -> list[tuple[str, str]]:
    """(call, module path) of each module call a node was traced inside, outermost first (a kept-whole
    module includes itself). `call` is torch.fx's key for the call: the path for a module's first call,
    `path@k` for its k-th later one, so that two calls of a shared module are told apart."""
    stack = node.meta.get("nn_module_stack") or {}
    return [(str(call), str(path)) for call, (path, _) in stack.items()]


def _scope_outputs(nodes: list[fx.Node]) -> dict[fx.Node, tuple[str, str]]:
    """node -> (call, module path) of the module call whose output it is (the last node traced inside it).

    When a node ends several nested calls, the innermost module that was traced into names it (the block,
    `layer1.2`, rather than its last layer, `layer1.2.bn2`); a layer kept whole names its own output.
    """
    last: dict[tuple[str, str], fx.Node] = {}
    for node in nodes:
        for call in _calls(node):
            last[call] = node
    ends: dict[fx.Node, list[tuple[str, str]]] = {}
    for call, node in last.items():
        ends.setdefault(node, []).append(call)
    outputs: dict[fx.Node, tuple[str, str]] = {}
    for node, calls in ends.items():
        calls.sort(key=lambda call: call[1].count("."))
        traced_into = [call for call in calls if not (node.op == "call_module" and node.target == call[1])]
        outputs[node] = traced_into[-1] if traced_into else calls[-1]
    return outputs


def _cut_name(node: fx.Node, scope_outputs: dict[fx.Node, tuple[str, str]]) -> str:
    """A module call's name when the tensor is that call's output, else the node's name inside its call."""
    if node in scope_outputs:
        return scope_outputs[node][0]
    calls = _calls(node)
    return f"{calls[-1][0]}.{node.name}" if calls else node.name


def find_cuts(
    gm: fx.GraphModule,
    example: torch.Tensor,
    after_modules: Sequence[str] | None = None,
    granularity: str = "module",
    max_depth: int | None = None,
) -> list[Cut]:
    """Every valid cut of the traced graph, in execution order.

    granularity "module" offers cuts at the output of a module (or of an operation in the top-level
    forward); "node" also offers cuts after operations inside a module. With `after_modules`, only cuts
    right after one of those modules are offered. `max_depth` drops cuts named by a module deeper than
    that many levels (`_blocks.3` is depth 2, `_blocks.3._bn0` depth 3).
    """
    if granularity not in ("module", "node"):
        raise ValueError(f"granularity must be 'module' or 'node', got {granularity!r}")
    ShapeProp(gm).propagate(example)
    nodes = list(gm.graph.nodes)
    index = {node: i for i, node in enumerate(nodes)}
    scope_outputs = _scope_outputs(nodes)
    helpers: set[fx.Node] = set()
    for node in nodes:
        if _is_batch_size(node):
            helpers |= _shape_helpers(node)
    # last_use[i]: the last position at which node i's value is read.
    last_use = {node: max((index[u] for u in node.users), default=index[node]) for node in nodes}
    cuts: list[Cut] = []
    seen: set[fx.Node] = set()
    for position, node in enumerate(nodes):
        if node.op in ("placeholder", "output") or nodes[position + 1].op == "output":
            continue
        crossing = [
            n
            for n in nodes[: position + 1]
            if last_use[n] > position and not _free(n) and n not in helpers
        ]
        if len(crossing) != 1:
            continue
        (tensor,) = crossing
        meta = tensor.meta.get("tensor_meta")
        if tensor in seen or tensor.op == "placeholder" or meta is None or not hasattr(meta, "shape"):
            continue
        if after_modules is not None and (tensor not in scope_outputs or scope_outputs[tensor][1] not in after_modules):
            continue
        if granularity == "module" and _calls(tensor) and tensor not in scope_outputs:
            continue
        name = _cut_name(tensor, scope_outputs)
        if max_depth is not None and _calls(tensor) and name.count(".") + 1 > max_depth:
            continue
        seen.add(tensor)
        cuts.append(
            Cut(
                name=name,
                node=tensor.name,
                position=index[tensor],
                shape=tuple(int(d) for d in meta.shape[1:]),
                dtype=str(meta.dtype).removeprefix("torch."),
            )
        )
    return cuts


def _copy_nodes(
    source: list[fx.Node], target: fx.Graph, env: dict[fx.Node, fx.Node], batch_from: fx.Node | None
) -> None:
    """Copy `source` into `target`; values produced outside it are looked up in env, parameters are
    re-read, and batch sizes are read from `batch_from` (the tail's input)."""

    def lookup(node: fx.Node) -> fx.Node:
        if node not in env:
            if node.op == "get_attr":
                env[node] = target.get_attr(str(node.target))
            elif _is_batch_size(node) and batch_from is not None:
                env[node] = target.call_method("size", (batch_from, 0))
            else:
                raise AssertionError(f"node {node.name} crosses the cut but is not the cut's tensor")
        return env[node]

    for node in source:
        if node in env:
            continue
        if batch_from is not None and _is_batch_size(node):
            env[node] = target.call_method("size", (batch_from, 0))
            continue
        env[node] = target.node_copy(node, lookup)


def head_module(gm: fx.GraphModule, cut: Cut) -> fx.GraphModule:
    """The graph up to and including the cut's tensor, returning it."""
    nodes = list(gm.graph.nodes)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    _copy_nodes([n for n in nodes[: cut.position + 1] if n.op != "output"], graph, env, None)
    crossing = next(n for n in nodes if n.name == cut.node)
    graph.output(env[crossing])
    return _module(gm, graph, f"Head_{cut.node}")


def tail_module(gm: fx.GraphModule, cut: Cut) -> fx.GraphModule:
    """The graph after the cut: takes the cut's tensor, returns the model's output."""
    nodes = list(gm.graph.nodes)
    graph = fx.Graph()
    crossing = next(n for n in nodes if n.name == cut.node)
    activation = graph.placeholder("activation")
    env: dict[fx.Node, fx.Node] = {crossing: activation}
    rest = [n for n in nodes[cut.position + 1 :] if n.op != "output"]
    _copy_nodes(rest, graph, env, activation)
    (result,) = [n for n in nodes if n.op == "output"]
    graph.output(fx.map_arg(result.args[0], lambda n: env[n]))
    return _module(gm, graph, f"Tail_{cut.node}")


def _module(root: fx.GraphModule, graph: fx.Graph, class_name: str) -> fx.GraphModule:
    """A GraphModule over `graph` that holds only the parameters it uses."""
    module = fx.GraphModule(root, graph, class_name=class_name)
    module.graph.eliminate_dead_code()
    module.recompile()
    module.delete_all_unused_submodules()
    return module
