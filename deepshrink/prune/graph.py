"""Channel dependency graph traced with torch.fx.

Every tensor in the traced graph carries a *layout* of its channel axis: a list of segments
``(gid, length, rep)`` (``rep`` consecutive positions per channel, after a flatten) on one axis.
Producers (conv / linear / embedding outputs) open a new channel id; element-wise ops pass layouts
through; additions unite ids (residuals); concatenation along the channel axis joins segments;
depthwise convs and batch norms follow their input. Whatever the analysis cannot prove safe
(the model output, layer norms, attention inputs, parameters added to activations, unknown ops)
*blocks* the ids it touches, with the reason. Channel ids that remain free form prunable groups.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from deepshrink.core.errors import ModelError


@dataclass(frozen=True)
class Seg:
    gid: int
    length: int
    rep: int = 1


Layout = tuple[tuple[Seg, ...], int]  # (segments, axis)

UNARY_FN = {"relu", "relu_", "relu6", "gelu", "sigmoid", "tanh", "silu", "hardswish", "hardtanh", "dropout",
            "leaky_relu", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d",
            "adaptive_avg_pool2d", "adaptive_max_pool2d", "contiguous", "clone", "neg", "elu", "mish",
            "sigmoid_", "tanh_", "float", "detach", "to"}
BINARY_FN = {"add", "iadd", "sub", "isub", "mul", "imul", "truediv", "div", "add_", "mul_"}
REDUCE_FN = {"mean", "sum", "amax", "amin"}
PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.LeakyReLU,
                nn.ELU, nn.Hardtanh, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d,
                nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def is_attention(m: nn.Module) -> bool:
    """Duck-typed head-prunable attention: ``heads``, ``head_dim``, fused ``qkv`` and ``proj`` Linears."""
    return (isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "proj", None), nn.Linear)
            and isinstance(getattr(m, "heads", None), int) and isinstance(getattr(m, "head_dim", None), int))


class _Direct(fx.Interpreter):
    """Runs leaf modules through ``forward`` (``__call__`` is patched by fx while a trace is under way)."""

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        return self.fetch_attr(target).forward(*args, **kwargs)


class _Tracer(fx.Tracer):
    """Keeps attention blocks as leaves and resolves data-dependent Python control flow by running the
    graph traced so far on the example inputs (the trace is specialised to them)."""

    def __init__(self, root: nn.Module, example: tuple[Any, ...]) -> None:
        super().__init__()
        self.root_module = root
        self.example = example

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if is_attention(m) or isinstance(m, nn.MultiheadAttention):
            return True
        return super().is_leaf_module(m, qualname)

    def _concrete(self, obj: fx.Proxy) -> Any:
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        g.graph_copy(self.graph, env)
        g.output(env[obj.node])
        with torch.no_grad():
            return _Direct(fx.GraphModule(self.root_module, g)).run(*self.example)

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(self._concrete(obj))

    def iter(self, obj: fx.Proxy):  # noqa: A003 - fx API name
        return iter(self._concrete(obj))


def trace(model: nn.Module, example: tuple[Any, ...]) -> fx.GraphModule:
    """Symbolically trace ``model`` and record every node's output shape; failures are ModelError."""
    try:
        tracer = _Tracer(model, example)
        graph = tracer.trace(model)
        gm = fx.GraphModule(model, graph)
        with torch.no_grad():
            ShapeProp(gm).propagate(*example)
    except Exception as exc:  # fx raises many types; the user needs one line
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{type(model).__name__} cannot be traced with torch.fx: {msg}") from None
    return gm


def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


@dataclass
class Member:
    module: str
    role: str  # "out" (producer), "in" (consumer), "chan" (batch norm / depthwise: both)
    segs: tuple[Seg, ...]


@dataclass
class ChannelGraph:
    """The traced graph's coupled channel groups and what was blocked, with reasons."""

    members: list[Member] = field(default_factory=list)
    lengths: dict[int, int] = field(default_factory=dict)
    parent: dict[int, int] = field(default_factory=dict)
    blocked: dict[int, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # module -> why (part of) it is left intact
    attention: list[str] = field(default_factory=list)

    def new(self, length: int) -> int:
        gid = len(self.lengths)
        self.lengths[gid] = length
        self.parent[gid] = gid
        return gid

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, where: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        reason = self.blocked.pop(rb, None) or self.blocked.get(ra)
        if self.lengths[ra] != self.lengths[rb]:
            reason = reason or f"{where}: coupled channels of different sizes"
        if reason:
            self.blocked[ra] = reason

    def block(self, segs: Sequence[Seg], reason: str) -> None:
        for s in segs:
            r = self.find(s.gid)
            self.blocked.setdefault(r, reason)

    def groups(self) -> dict[int, list[Member]]:
        """Free channel groups (root id -> members) that have at least one producer."""
        out: dict[int, list[Member]] = {}
        for m in self.members:
            for s in m.segs:
                out.setdefault(self.find(s.gid), [])
                if m not in out[self.find(s.gid)]:
                    out[self.find(s.gid)].append(m)
        return {g: ms for g, ms in out.items()
                if g not in self.blocked and any(m.role == "out" for m in ms)}


def _norm(dim: int, ndim: int) -> int:
    return dim % ndim if ndim else dim


def _layouts(args: Any, env: dict[fx.Node, Layout | None]) -> list[tuple[fx.Node, Layout | None]]:
    out: list[tuple[fx.Node, Layout | None]] = []
    fx.node.map_arg(args, lambda n: out.append((n, env.get(n))) or n)
    return out


class _Builder:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.g = ChannelGraph()
        self.env: dict[fx.Node, Layout | None] = {}
        self.calls: dict[str, int] = {}

    def block_all(self, node: fx.Node, reason: str) -> None:
        for _, lay in _layouts((node.args, node.kwargs), self.env):
            if lay is not None:
                self.g.block(lay[0], reason)

    def run(self) -> ChannelGraph:
        for node in self.gm.graph.nodes:
            try:
                self.env[node] = self.visit(node)
            except (TypeError, ValueError, IndexError, KeyError) as exc:
                self.block_all(node, f"{node.name}: cannot analyse ({exc})")
                self.env[node] = None
        return self.g

    def visit(self, node: fx.Node) -> Layout | None:
        if node.op in ("placeholder", "get_attr"):
            return None
        if node.op == "output":
            self.block_all(node, "reaches the model output")
            return None
        if node.op == "call_module":
            return self.module(node, self.gm.get_submodule(node.target))
        target = node.target
        name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        return self.function(node, name)

    def _producer(self, node: fx.Node, name: str, length: int, axis: int) -> Layout:
        gid = self.g.new(length)
        self.g.members.append(Member(name, "out", (Seg(gid, length),)))
        return (Seg(gid, length),), axis

    def module(self, node: fx.Node, m: nn.Module) -> Layout | None:
        name = str(node.target)
        inp = self.env.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        out_shape = _shape(node)
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.calls[name] > 1 and not isinstance(m, PASS_MODULES):
            self.block_all(node, f"{name} is called more than once")
            self.g.notes[name] = "called more than once (shared weights)"
            for mem in self.g.members:
                if mem.module == name:
                    self.g.block(mem.segs, f"{name} is called more than once")
            return None
        if isinstance(m, PASS_MODULES):
            return inp
        if isinstance(m, nn.modules.conv._ConvNd):
            if inp is not None and inp[1] != 1:
                self.g.block(inp[0], f"{name}: channels not on axis 1")
                inp = None
            if m.groups == 1:
                if inp is not None:
                    self.g.members.append(Member(name, "in", inp[0]))
                return self._producer(node, name, m.out_channels, 1)
            if m.groups == m.in_channels == m.out_channels:
                if inp is not None:
                    self.g.members.append(Member(name, "chan", inp[0]))
                return inp
            if inp is not None:
                self.g.block(inp[0], f"{name}: grouped convolution (groups={m.groups})")
            self.g.notes[name] = f"grouped convolution (groups={m.groups}) is left intact"
            lay = self._producer(node, name, m.out_channels, 1)
            self.g.block(lay[0], f"{name}: grouped convolution (groups={m.groups})")
            return lay
        if isinstance(m, nn.Linear):
            if inp is not None and out_shape is not None and inp[1] != len(out_shape) - 1:
                self.g.block(inp[0], f"{name}: features not on the last axis")
            elif inp is not None:
                self.g.members.append(Member(name, "in", inp[0]))
            return self._producer(node, name, m.out_features, len(out_shape) - 1 if out_shape else 1)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if inp is not None:
                self.g.members.append(Member(name, "chan", inp[0]))
            return inp
        if isinstance(m, nn.LayerNorm):
            if inp is not None:
                self.g.block(inp[0], f"{name}: layer norm statistics span the features")
            self.g.notes[name] = "layer norm: its feature dimension is left intact"
            return inp
        if isinstance(m, nn.Embedding):
            return self._producer(node, name, m.embedding_dim, len(out_shape) - 1 if out_shape else 2)
        if isinstance(m, nn.Flatten):
            return self.flatten(node, inp, m.start_dim, m.end_dim)
        if is_attention(m):
            self.g.attention.append(name)
            if inp is not None:
                self.g.block(inp[0], f"{name}: attention mixes the embedding dimension")
            axis = len(out_shape) - 1 if out_shape else 2
            lay = self._producer(node, name + ".<out>", m.proj.out_features, axis)
            self.g.members.pop()
            gid = lay[0][0].gid
            self.g.blocked[gid] = f"{name}: attention output joins the residual stream"
            return lay
        self.block_all(node, f"{name}: unsupported module {type(m).__name__}")
        self.g.notes[name] = f"unsupported module {type(m).__name__} is left intact"
        return None

    def flatten(self, node: fx.Node, inp: Layout | None, start: int, end: int) -> Layout | None:
        shape = _shape(node.args[0])
        if inp is None or shape is None:
            return None
        nd = len(shape)
        start, end = _norm(start, nd), _norm(end, nd)
        segs, axis = inp
        if axis < start:
            return inp
        if axis > end:
            return segs, axis - (end - start)
        if axis == start:
            rep = math.prod(shape[start + 1:end + 1])
            return tuple(Seg(s.gid, s.length, s.rep * rep) for s in segs), axis
        self.g.block(segs, f"{node.name}: flatten merges the channel axis into a preceding one")
        return None

    def function(self, node: fx.Node, name: str) -> Layout | None:
        lays = _layouts((node.args, node.kwargs), self.env)
        known = [(n, lay) for n, lay in lays if lay is not None]
        if not known:
            return None
        first = node.args[0] if node.args else None
        inp = self.env.get(first) if isinstance(first, fx.Node) else None
        shape_in, shape_out = _shape(first), _shape(node)
        if name in UNARY_FN:
            return inp
        if name in ("size", "dim", "shape", "numel", "getattr"):
            return None
        if name in BINARY_FN or node.target in (operator.add, operator.mul, operator.sub, operator.truediv):
            return self.binary(node, lays, known)
        if name == "cat":
            return self.cat(node, known)
        if name == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self.flatten(node, inp, start, end)
        if name in ("view", "reshape") and inp is not None and shape_in and shape_out:
            if shape_in == shape_out:
                return inp
            if (len(shape_out) == 2 and inp[1] == 1 and shape_in[0] == shape_out[0]
                    and math.prod(shape_in[1:]) == shape_out[1]):
                return self.flatten(node, inp, 1, -1)
        if name in ("transpose", "permute") and inp is not None and shape_in:
            nd = len(shape_in)
            if name == "transpose":
                a, b = (_norm(int(d), nd) for d in node.args[1:3])
                order = list(range(nd))
                order[a], order[b] = order[b], order[a]
            else:
                dims = node.args[1:] if not isinstance(node.args[1], (list, tuple)) else node.args[1]
                order = [_norm(int(d), nd) for d in dims]
            return inp[0], order.index(inp[1])
        if name in REDUCE_FN and inp is not None and shape_in and shape_out:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            if dim is not None:
                dim = dim if isinstance(dim, (list, tuple)) else [dim]
                dims = [_norm(int(d), len(shape_in)) for d in dim]
                if inp[1] not in dims:
                    if len(shape_out) == len(shape_in):
                        return inp
                    return inp[0], inp[1] - sum(d < inp[1] for d in dims)
        same_rank = bool(shape_in and shape_out and len(shape_in) == len(shape_out))
        if name == "expand" and inp is not None and same_rank:
            return inp
        if name == "softmax" and inp is not None and shape_in:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            if dim is not None and _norm(int(dim), len(shape_in)) != inp[1]:
                return inp
        self.block_all(node, f"{node.name}: unsupported operation {name}")
        return None

    def binary(self, node: fx.Node, lays: list[tuple[fx.Node, Layout | None]],
               known: list[tuple[fx.Node, Layout]]) -> Layout | None:
        out_shape = _shape(node)
        base = known[0][1]
        axis = base[1]
        for n, lay in lays:
            if lay is not None:
                continue
            shape = _shape(n)
            if shape is not None and out_shape is not None and len(shape) == len(out_shape) \
                    and shape[axis] != 1:
                self.g.block(base[0], f"{node.name}: a tensor without known channels ({n.name}) is combined "
                                      "along the channel axis")
                return None
            if shape and out_shape is not None and len(shape) != len(out_shape):
                offset = len(out_shape) - len(shape)
                if axis >= offset and shape[axis - offset] != 1:
                    self.g.block(base[0], f"{node.name}: broadcast tensor {n.name} spans the channel axis")
                    return None
        for _, lay in known[1:]:
            if lay[1] != axis or len(lay[0]) != len(base[0]) or any(
                    a.length != b.length or a.rep != b.rep for a, b in zip(lay[0], base[0])):
                self.g.block(base[0] + lay[0], f"{node.name}: operands have different channel layouts")
                return None
            for a, b in zip(base[0], lay[0]):
                self.g.union(a.gid, b.gid, node.name)
        return base

    def cat(self, node: fx.Node, known: list[tuple[fx.Node, Layout]]) -> Layout | None:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        shape = _shape(node)
        parts = [self.env.get(t) if isinstance(t, fx.Node) else None for t in tensors]
        axis = known[0][1][1]
        if shape is None or _norm(int(dim), len(shape)) != axis:
            segs = tuple(s for _, lay in known for s in lay[0])
            self.g.block(segs, f"{node.name}: concatenation along a non-channel axis")
            return None
        if any(p is None or p[1] != axis for p in parts):
            segs = tuple(s for _, lay in known for s in lay[0])
            self.g.block(segs, f"{node.name}: concatenation with a tensor of unknown channels")
            return None
        return tuple(s for p in parts for s in p[0]), axis


def build_graph(model: nn.Module, example_inputs: Any) -> tuple[fx.GraphModule, ChannelGraph]:
    """Trace ``model`` on ``example_inputs`` (a tensor or a tuple of tensors) and group coupled channels."""
    example = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    gm = trace(model, example)
    return gm, _Builder(gm).run()
