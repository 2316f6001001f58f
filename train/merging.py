"""Token merging (ToMe; Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023) for
Hugging Face ``ViTForImageClassification``, for training (``train --merge-tokens``) and export
(``export --merge-tokens``: the merging becomes part of the ONNX graph).

In every encoder layer, after self-attention and before the MLP, bipartite soft matching merges
the ``r`` most similar token pairs: the tokens after the class token are split alternately into
sets A and B, each A token's most similar B token is found (cosine similarity of the attention
keys, averaged over heads), and the ``r`` A tokens with the most similar partners are averaged
into them, weighted by how many patches each already holds (its *size*). Attention is then
proportional: ``softmax(QK^T / sqrt(d) + log s)``, so a token standing for s patches counts as s.

Exact where it must be:

* the class token is never merged and stays at index 0 (the classifier reads it there);
* the sizes of the tokens always sum to the patch count + 1;
* every token count is fixed by the schedule and the patch count alone (``MergePlan``), so an
  exported graph has static shapes and r = 0 in every layer is the unmerged model (the HF
  weights are never touched: ``patch_model`` swaps the encoder's class, state-dict keys unchanged).

``trace_source=True`` also keeps, per token, the patches it holds (a 0/1 ``(N, T, patches + 1)``
assignment, as the paper's visualisations do); the merged ONNX graph does not carry it.

Only the ops ONNX opset 16+ has are used (Slice with steps, TopK, GatherElements, ScatterElements
with ``add``), so ``torch.onnx.export`` writes a graph that onnxruntime and OpenVINO run.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from medvit_edge.errors import UserError

AUTO = "auto"  # export --merge-tokens auto: the largest r that passes the guard


@dataclass(frozen=True)
class MergeRequest:
    """What the user asked for: ``r`` tokens per layer, or one value per layer (``schedule``)."""

    r: int = 0
    schedule: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str | int | Sequence[int]) -> MergeRequest:
        """``8`` -> r 8 in every layer; ``"4,4,8,8"`` -> one r per layer. ``UserError`` else."""
        if isinstance(text, int) and not isinstance(text, bool):
            values = [text]
        elif isinstance(text, str):
            try:
                values = [int(part) for part in text.split(",")]
            except ValueError:
                raise UserError(
                    f"--merge-tokens: expected a whole number, 'auto' or a comma-separated list of "
                    f"whole numbers (one per layer), got {text!r}"
                ) from None
        else:
            values = [int(value) for value in text]
        if not values or any(value < 0 for value in values):
            raise UserError(f"--merge-tokens: token counts must be 0 or more, got {text!r}")
        if len(values) == 1:
            return cls(r=values[0])
        return cls(r=round(sum(values) / len(values)), schedule=tuple(values))

    @property
    def active(self) -> bool:
        return self.r > 0 or any(self.schedule)

    def per_layer(self, layers: int) -> list[int]:
        if not self.schedule:
            return [self.r] * layers
        if len(self.schedule) != layers:
            raise UserError(
                f"--merge-tokens: the schedule has {len(self.schedule)} values but the model has "
                f"{layers} encoder layers"
            )
        return list(self.schedule)

    def to_text(self) -> str:
        return ",".join(map(str, self.schedule)) if self.schedule else str(self.r)


@dataclass(frozen=True)
class MergePlan:
    """The merges each layer really makes (capped where too few tokens remain) and the token
    counts they leave: all fixed before any image is seen."""

    request: MergeRequest
    patches: int  # patch tokens (the class token comes on top)
    schedule: tuple[int, ...]  # tokens merged in each layer, after capping

    @classmethod
    def make(cls, request: MergeRequest, patches: int, layers: int) -> MergePlan:
        tokens, schedule = patches + 1, []
        for r in request.per_layer(layers):
            r = min(r, (tokens - 1) // 2)  # at most the A set (the tokens after the class token)
            schedule.append(r)
            tokens -= r
        return cls(request, patches, tuple(schedule))

    @property
    def r(self) -> int:
        return self.request.r

    @property
    def tokens(self) -> list[int]:
        """Token count entering each layer, then the count leaving the last one."""
        counts = [self.patches + 1]
        for r in self.schedule:
            counts.append(counts[-1] - r)
        return counts

    @property
    def tag(self) -> str:
        """The file-name tag: ``tome8`` (r 8 per layer), ``tome6s`` (a schedule averaging 6)."""
        return f"tome{self.r}{'s' if self.request.schedule else ''}"

    def to_dict(self) -> dict[str, Any]:
        return {"r": self.r, "schedule": list(self.schedule)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# -- PyTorch ----------------------------------------------------------------------------------


def patch_count(model: Any) -> int:
    config = model.config
    return (config.image_size // config.patch_size) ** 2


def patch_model(model: Any, request: MergeRequest, trace_source: bool = False) -> MergePlan:
    """Turn merging on in ``model`` (a ``ViTForImageClassification`` or ``ViTModel``), in place:
    its encoder's class is swapped for one that merges; weights and state-dict keys unchanged.
    Patching again replaces the schedule. Returns the plan."""
    encoder = _vit(model).encoder
    plan = MergePlan.make(request, patch_count(model), len(encoder.layer))
    if plan.tokens[-1] < 1:
        raise UserError(f"--merge-tokens {request.to_text()}: leaves no tokens")
    encoder.__class__ = _merging_class(type(encoder))
    encoder.merge_plan = plan
    encoder.trace_source = trace_source
    encoder.last_size = encoder.last_source = None
    return plan


def unpatch_model(model: Any) -> None:
    """Back to the model's own encoder (the weights were never changed)."""
    encoder = _vit(model).encoder
    base = getattr(type(encoder), "_unmerged_class", None)
    if base is not None:
        encoder.__class__ = base


def merged_plan(model: Any) -> MergePlan | None:
    return getattr(_vit(model).encoder, "merge_plan", None)


def _vit(model: Any) -> Any:
    vit = getattr(model, "vit", model)
    if not hasattr(vit, "encoder") or not hasattr(vit.encoder, "layer"):
        raise UserError(f"token merging needs a ViT (found {type(model).__name__})")
    return vit


_CLASSES: dict[type, type] = {}


def _merging_class(base: type) -> type:
    """A subclass of the encoder's class whose forward merges (one per base class, made once)."""
    if getattr(base, "_unmerged_class", None) is not None:
        return base
    if base not in _CLASSES:
        members = {"forward": _encoder_forward, "_unmerged_class": base}
        _CLASSES[base] = type(f"Merging{base.__name__}", (base,), members)
    return _CLASSES[base]


def _encoder_forward(self: Any, hidden_states: Any, head_mask: Any = None, *args: Any, **kwargs: Any) -> Any:
    """The encoder's loop with a merge after each layer's attention; sizes (and sources) travel
    with the tokens. Ends with what the HF encoder returns."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    if head_mask is not None and any(mask is not None for mask in head_mask):
        raise ValueError("token merging does not support head_mask")
    x, size, source = hidden_states, None, None
    if self.trace_source:
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        source = eye.expand(x.shape[0], -1, -1)
    for layer, r in zip(self.layer, self.merge_plan.schedule):
        x, size, source = merged_layer(layer, x, size, source, r)
    # kept for inspection (tests, source maps), detached: training must not hold their graphs
    self.last_size = size.detach() if size is not None else None
    self.last_source = source.detach() if source is not None else None
    return BaseModelOutput(last_hidden_state=x)


def merged_layer(layer: Any, x: Any, size: Any, source: Any, r: int) -> tuple[Any, Any, Any]:
    """One ``ViTLayer`` (pre-norm: attention, residual, merge, MLP, residual) with its own
    modules; ``size`` is None until the first merge (every token one patch)."""
    attention = layer.attention
    context, metric = proportional_attention(attention.attention, layer.layernorm_before(x), size)
    x = x + attention.output(context, x)
    if r > 0:
        x, size, source = merge_tokens(x, metric, size, source, r)
    return layer.output(layer.intermediate(layer.layernorm_after(x)), x), size, source


def proportional_attention(module: Any, x: Any, size: Any) -> tuple[Any, Any]:
    """``ViTSelfAttention`` with ``+ log(size)`` on the scores; returns the context and the keys
    averaged over heads (the similarity metric)."""
    import torch

    # token counts as Python ints: the exported graph gets constants, not Shape arithmetic
    t = int(x.shape[1])
    heads, width = module.num_attention_heads, module.attention_head_size

    def split(linear: Any) -> Any:
        return linear(x).view(-1, t, heads, width).transpose(1, 2)

    query, key, value = split(module.query), split(module.key), split(module.value)
    scores = torch.matmul(query, key.transpose(-1, -2)) * module.scaling
    if size is not None:
        scores = scores + size.log()[:, None, None, :, 0]
    probs = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = torch.nn.functional.dropout(probs, p=module.dropout_prob, training=module.training)
    context = torch.matmul(probs, value).transpose(1, 2).reshape(-1, t, heads * width)
    return context, key.mean(dim=1)


def merge_tokens(x: Any, metric: Any, size: Any, source: Any, r: int) -> tuple[Any, Any, Any]:
    """Bipartite soft matching: the ``r`` A tokens most similar to a B token are averaged into
    it, weighted by size. Returns the tokens ``[class, unmerged A (in order), B]``, their sizes
    and (when traced) their sources."""
    import torch

    if size is None:
        size = torch.ones_like(x[..., :1])
    metric = metric / metric.norm(dim=-1, keepdim=True)
    # A: tokens 2, 4, ... (the class token, 0, is never a candidate); B: tokens 1, 3, ...
    scores = torch.matmul(metric[:, 2::2], metric[:, 1::2].transpose(-1, -2))
    node_max, node_idx = scores.max(dim=-1)
    order = node_max.argsort(dim=-1, descending=True)
    src_idx, unm_idx = order[:, :r], order[:, r:].sort(dim=-1).values
    dst_idx = node_idx.gather(1, src_idx)

    def merge(values: Any) -> Any:
        a, b = values[:, 2::2], values[:, 1::2]
        width = int(values.shape[-1])
        kept = a.gather(1, unm_idx[..., None].expand(-1, -1, width))
        moved = a.gather(1, src_idx[..., None].expand(-1, -1, width))
        b = b.scatter_reduce(1, dst_idx[..., None].expand(-1, -1, width), moved, reduce="sum")
        return torch.cat([values[:, :1], kept, b], dim=1)

    x = merge(x * size)
    size = merge(size)
    source = merge(source) if source is not None else None  # disjoint 0/1 rows: a sum is a union
    return x / size, size, source


def merging_model(model: Any, request: MergeRequest) -> tuple[Any, MergePlan]:
    """A merged copy of ``model`` (the original stays unmerged), in eval mode."""
    import copy

    merged = copy.deepcopy(model).eval()
    return merged, patch_model(merged, request)


def export_merged_onnx(model: Any, request: MergeRequest, path: Any, size: int, opset: int) -> MergePlan:
    """``model`` with merging as an ONNX graph: ``pixel_values`` (N, 3, size, size) -> ``logits``,
    every token count static (the batch stays dynamic). TorchScript exporter: the merge's index
    arithmetic traces to static TopK/GatherElements/ScatterElements."""
    import warnings

    import torch

    merged, plan = merging_model(model, request)

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = merged

        def forward(self, pixel_values: Any) -> Any:
            return self.model(pixel_values=pixel_values).logits

    dummy = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings(), torch.no_grad(), _plain_scatter_add(opset):
        # the tracer warns about the Python shape arithmetic of ViT's embeddings: the input
        # size is fixed in the exported graph, so the traced constants are right
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Logits().eval(),
            (dummy,),
            str(path),
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_axes={"pixel_values": {0: "batch_size"}, "logits": {0: "batch_size"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return plan


@contextlib.contextmanager
def _plain_scatter_add(opset: int) -> Iterator[None]:
    """torch's symbolic for ``scatter_reduce`` wraps ScatterElements in two ``If`` nodes for a
    rank-0 input that never occurs here (and leaves outputs of unknown shape that onnxruntime
    warns about on every run): one plain ``ScatterElements(reduction="add")`` instead, for the
    length of one export."""
    from torch.onnx import register_custom_op_symbolic, unregister_custom_op_symbolic

    def scatter_add(g: Any, values: Any, dim: int, index: Any, src: Any, *rest: Any) -> Any:
        return g.op("ScatterElements", values, index, src, axis_i=dim, reduction_s="add")

    from torch.onnx.symbolic_helper import parse_args

    symbolic = parse_args("v", "i", "v", "v", "s", "b")(scatter_add)
    register_custom_op_symbolic("aten::scatter_reduce", symbolic, opset)
    try:
        yield
    finally:
        unregister_custom_op_symbolic("aten::scatter_reduce", opset)


def max_uniform_r(patches: int, layers: int) -> int:
    """The largest r every layer can merge in full (no layer capped)."""
    r = 0
    while MergePlan.make(MergeRequest(r + 1), patches, layers).schedule == (r + 1,) * layers:
        r += 1
    return r


def expected_tokens(patches: int, layers: int, r: int) -> float:
    """Mean tokens per layer with r merged in each (for reports)."""
    plan = MergePlan.make(MergeRequest(r), patches, layers)
    return sum(plan.tokens[:-1]) / layers if layers else math.nan


def trained_merge_tokens(run_dir: Any) -> str | None:
    """What ``train --merge-tokens`` recorded in the run's ``train_config.json`` (None when the
    run was trained without merging, or is not a train run)."""
    from pathlib import Path

    path = Path(run_dir) / "train_config.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("merge_tokens")
    except (OSError, ValueError, AttributeError):
        return None
    if value in (None, 0, "0", ""):
        return None
    return str(value)
