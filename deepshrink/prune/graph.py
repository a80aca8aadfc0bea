"""Channel dependency graph traced with torch.fx.

Every tensor in the traced graph carries a *layout* of its channel axis: a list of segments
``(gid, length, rep)`` (``rep`` consecutive positions per channel, after a flatten) on one axis.
Producers (conv / linear / embedding outputs) open a new channel id; element-wise ops pass layouts
through; additions unite ids (residuals); concatenation along the channel axis joins segments;
depthwise convs and batch norms follow their input, and so do single-axis layer norms, fused-qkv
attention inputs and parameters added to activations, which are sliced with their channels. Whatever the
analysis cannot prove safe (the model output, multi-axis layer norms, unknown ops) *blocks* the ids it
touches, with the reason. Channel ids that remain free form prunable groups.
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
        self._concrete_runs = 0  # > 0 while the partial graph runs on real tensors (fx's patches step aside)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        # fx patches nn.Module.__getattr__ for the whole trace: without this, a concrete run would see
        # Proxies for every parameter and recurse into to_bool forever
        if self._concrete_runs:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        if self._concrete_runs:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if is_attention(m) or isinstance(m, nn.MultiheadAttention) or getattr(m, "deepshrink_leaf", False):
            return True
        return super().is_leaf_module(m, qualname)

    def _concrete(self, obj: fx.Proxy) -> Any:
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        g.graph_copy(self.graph, env)
        g.output(env[obj.node])
        self._concrete_runs += 1
        try:
            with torch.no_grad():
                return _Direct(fx.GraphModule(self.root_module, g)).run(*self.example)
        finally:
            self._concrete_runs -= 1

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
    module: str  # a module's dotted name; for role "param" the parameter's dotted name
    role: str  # "out" (producer), "in" (consumer), "chan" (norm / depthwise: both), "param" (added tensor)
    segs: tuple[Seg, ...]
    axis: int = 0  # the parameter's channel axis (role "param")


@dataclass
class ChannelGraph:
    """The traced graph's coupled channel groups and what was blocked, with reasons."""

    members: list[Member] = field(default_factory=list)
    lengths: dict[int, int] = field(default_factory=dict)
    parent: dict[int, int] = field(default_factory=dict)
    blocked: dict[int, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # module -> why (part of) it is left intact
    attention: list[str] = field(default_factory=list)  # fused-qkv blocks: heads pruned on their own
    mha: list[str] = field(default_factory=list)  # nn.MultiheadAttention: heads follow the embedding dim
    blocks: dict[int, int] = field(default_factory=dict)  # grouped convs: equal keep per contiguous block
    multiple: dict[int, int] = field(default_factory=dict)  # keep count a multiple of (MHA head_dim)

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
        ba, bb = self.blocks.pop(ra, 1), self.blocks.pop(rb, 1)
        if max(ba, bb) % min(ba, bb):
            reason = reason or f"{where}: grouped convolutions with incompatible groups ({ba}, {bb})"
        if max(ba, bb) > 1:
            self.blocks[ra] = max(ba, bb)
        ma, mb = self.multiple.pop(ra, 1), self.multiple.pop(rb, 1)
        if math.lcm(ma, mb) > 1:
            self.multiple[ra] = math.lcm(ma, mb)
        if reason:
            self.blocked[ra] = reason

    def block(self, segs: Sequence[Seg], reason: str) -> None:
        for s in segs:
            r = self.find(s.gid)
            self.blocked.setdefault(r, reason)

    def constrain(self, gid: int, blocks: int = 1, multiple: int = 1) -> None:
        """Record that a channel id's keep count splits evenly over ``blocks`` contiguous blocks (grouped
        convolutions) and is a multiple of ``multiple`` (attention heads)."""
        r = self.find(gid)
        old = self.blocks.get(r, 1)
        if max(old, blocks) % min(old, blocks):
            self.blocked.setdefault(r, f"grouped convolutions with incompatible groups ({old}, {blocks})")
        if max(old, blocks) > 1:
            self.blocks[r] = max(old, blocks)
        if math.lcm(self.multiple.get(r, 1), multiple) > 1:
            self.multiple[r] = math.lcm(self.multiple.get(r, 1), multiple)

    def constraint(self, gid: int) -> tuple[int, int]:
        """(blocks, multiple) of a channel id's root."""
        r = self.find(gid)
        return self.blocks.get(r, 1), self.multiple.get(r, 1)

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
        self.params: dict[fx.Node, str] = {}  # get_attr tensors (and same-rank views of them)
        self.tuples: dict[fx.Node, list[Layout | None]] = {}  # modules returning tuples (attention)

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
        if node.op == "get_attr":
            self.params[node] = str(node.target)
            return None
        if node.op == "placeholder":
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
        if isinstance(m, nn.modules.conv._ConvTransposeNd):  # weight (in, out / groups, k...): not a _ConvNd cut
            self.block_all(node, f"{name}: transposed convolutions are not pruned")
            self.g.notes[name] = f"{type(m).__name__} is left intact (its channels and its input's)"
            return None
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
            return self.grouped(node, name, m, inp)
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
            nd = len(out_shape) if out_shape else 0
            if inp is not None and len(m.normalized_shape) == 1 and inp[1] == nd - 1:
                self.g.members.append(Member(name, "chan", inp[0]))
                return inp
            if inp is not None:
                self.g.block(inp[0], f"{name}: layer norm over several axes or not over the channel axis")
            self.g.notes[name] = "layer norm over several axes: its features are left intact"
            return inp
        if isinstance(m, nn.Embedding):
            return self._producer(node, name, m.embedding_dim, len(out_shape) - 1 if out_shape else 2)
        if isinstance(m, nn.Flatten):
            return self.flatten(node, inp, m.start_dim, m.end_dim)
        if is_attention(m):
            self.g.attention.append(name)
            axis = len(out_shape) - 1 if out_shape else 2
            if inp is not None and inp[1] == axis:
                self.g.members.append(Member(f"{name}.qkv", "in", inp[0]))
            elif inp is not None:
                self.g.block(inp[0], f"{name}: attention input features not on the last axis")
            return self._producer(node, f"{name}.proj", m.proj.out_features, axis)
        if isinstance(m, nn.MultiheadAttention):
            return self.mha(node, name, m)
        self.block_all(node, f"{name}: unsupported module {type(m).__name__}")
        self.g.notes[name] = f"unsupported module {type(m).__name__} is left intact"
        return None

    def grouped(self, node: fx.Node, name: str, m: nn.Module, inp: Layout | None) -> Layout:
        """Grouped convolution (1 < groups, not depthwise): inputs and outputs are pruned by the same
        count in each of the ``groups`` contiguous blocks, so the weight keeps its block structure."""
        g = m.groups
        if inp is not None and (len(inp[0]) != 1 or inp[0][0].rep != 1):
            self.g.block(inp[0], f"{name}: grouped convolution fed by a concatenation or flatten")
            self.g.notes[name] = f"grouped convolution (groups={g}): its input channels are left intact"
        elif inp is not None:
            self.g.members.append(Member(name, "in", inp[0]))
            self.g.constrain(inp[0][0].gid, blocks=g)
        lay = self._producer(node, name, m.out_channels, 1)
        self.g.constrain(lay[0][0].gid, blocks=g)
        return lay

    def mha(self, node: fx.Node, name: str, m: nn.MultiheadAttention) -> Layout | None:
        """nn.MultiheadAttention: torch ties the inner width (heads x head_dim) to the embedding width,
        so heads go only together with the embedding channels (a multiple of head_dim); q, k, v, the
        input and the output share one channel group."""
        args = list(node.args[:3]) + [node.kwargs.get(k) for k in ("query", "key", "value")
                                      if k in node.kwargs]
        lays = [self.env.get(a) if isinstance(a, fx.Node) else None for a in args]
        out_shape = _shape(node.args[0]) if node.args else None
        axis = len(out_shape) - 1 if out_shape else 2
        reason = None
        if not m._qkv_same_embed_dim:
            reason = "key/value widths differ from the embedding width"
        elif any(lay is None for lay in lays):
            reason = "an attention input has no prunable channels (e.g. the model input)"
        elif any(lay[1] != axis or len(lay[0]) != len(lays[0][0]) for lay in lays):
            reason = "attention inputs have different channel layouts"
        if reason is not None:
            for lay in lays:
                if lay is not None:
                    self.g.block(lay[0], f"{name}: {reason}")
            self.g.notes[name] = f"nn.MultiheadAttention heads left intact: {reason}"
            self.tuples[node] = [None, None]
            return None
        base = lays[0][0]
        for lay in lays[1:]:
            for a, b in zip(base, lay[0]):
                self.g.union(a.gid, b.gid, name)
        self.g.members.append(Member(name, "in", base))
        out = self._producer(node, name, m.embed_dim, axis)
        self.g.members[-1].role = "out"
        for a in base:
            self.g.union(a.gid, out[0][0].gid, name)
            self.g.constrain(a.gid, multiple=m.head_dim)
        self.g.mha.append(name)
        self.tuples[node] = [out, None]
        return out

    def getitem(self, node: fx.Node, inp: Layout | None) -> Layout | None:
        """``x[:, 0]``-style indexing that leaves the channel axis whole; tuple outputs of attention."""
        src, idx = node.args[0], node.args[1]
        if src in self.tuples:
            return self.tuples[src][idx] if isinstance(idx, int) and -2 <= idx < 2 else None
        shape = _shape(src)
        if inp is None or shape is None:
            return None
        items = list(idx) if isinstance(idx, tuple) else [idx]
        if sum(i is Ellipsis for i in items) > 1 or any(isinstance(i, fx.Node) for i in items):
            raise ValueError("unsupported indexing")
        if Ellipsis in items:
            k = items.index(Ellipsis)
            used = sum(i is not None for i in items) - 1
            items = items[:k] + [slice(None)] * (len(shape) - used) + items[k + 1:]
        dim, out_axis = 0, 0
        for it in items:
            if it is None:
                out_axis += 1
                continue
            if dim == inp[1]:
                if it != slice(None):
                    raise ValueError("indexing along the channel axis")
                return inp[0], out_axis
            if not isinstance(it, (int, slice)):
                raise ValueError("unsupported index")
            dim += 1
            out_axis += isinstance(it, slice)
        return inp[0], out_axis + (inp[1] - dim)

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
        first = node.args[0] if node.args else None
        if first in self.params and name in ("expand", "contiguous", "clone", "to", "float", "detach") \
                and _shape(first) is not None and len(_shape(first)) == len(_shape(node) or ()):
            self.params[node] = self.params[first]
        if name == "getitem" and first in self.tuples:
            return self.getitem(node, None)
        if not known:
            return None
        inp = self.env.get(first) if isinstance(first, fx.Node) else None
        if name == "getitem":
            return self.getitem(node, inp)
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
            if n in self.params and self.param_member(n, base, out_shape):
                continue
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

    def param_member(self, n: fx.Node, base: Layout, out_shape: tuple[int, ...] | None) -> bool:
        """A parameter (class token, positions) combined with channels: slice it with them."""
        shape = _shape(n)
        if shape is None or out_shape is None or len(shape) > len(out_shape):
            return False
        axis = base[1] - (len(out_shape) - len(shape))
        total = sum(s.length * s.rep for s in base[0])
        if axis < 0 or shape[axis] != total:
            return False
        target = self.params[n]
        t = dict(self.gm.named_parameters()).get(target)
        if t is None or t.dim() != len(shape) or t.shape[axis] != total:
            return False
        for mem in self.g.members:
            if mem.role == "param" and mem.module == target:  # used twice: never slice it twice
                self.g.block(mem.segs + base[0], f"{target}: parameter combined with channels twice")
                return False
        self.g.members.append(Member(target, "param", base[0], axis))
        return True

    def cat(self, node: fx.Node, known: list[tuple[fx.Node, Layout]]) -> Layout | None:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        shape = _shape(node)
        parts = [self.env.get(t) if isinstance(t, fx.Node) else None for t in tensors]
        axis = known[0][1][1]
        if shape is not None and _norm(int(dim), len(shape)) != axis:
            base = known[0][1]
            ok = all(p is not None and p[1] == axis and len(p[0]) == len(base[0]) and all(
                a.length == b.length and a.rep == b.rep for a, b in zip(p[0], base[0]))
                or p is None and t in self.params and self.param_member(t, base, shape)
                for t, p in zip(tensors, parts))
            if ok:
                for p in parts:
                    for a, b in zip(base[0], p[0] if p is not None else ()):
                        self.g.union(a.gid, b.gid, node.name)
                return base
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
