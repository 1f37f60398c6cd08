"""``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder`` for ``quantize_model``.

torch's own modules cannot be traced (their ``forward`` picks fused kernels, nested tensors and fast paths by
Python tests on the tensors), so ``qfx.nn.trace.convert_model`` first puts a plain-PyTorch composite in each one's
place (``expand_transformers``): the same children under the same names (``out_proj``, ``linear1``, ``norm1``,
``dropout1``, ``self_attn``, ``layers.0``, ...), the same values, written the way self-attention is written by hand
(``tests/test_attention.py``). The tracer then goes through the composite's ``forward`` like through any user
module, so each op gets its usual qfx twin:

* in-projection: ``in_proj_weight`` / ``in_proj_bias`` split into three ``nn.Linear`` (``q_proj``, ``k_proj``,
  ``v_proj``: three ``QLinear``, each with its own weight format), heads by ``view`` + ``transpose`` (wires),
  ``q @ k.transpose(-2, -1)`` (``QMatMul``), ``* (1 / sqrt(head_dim))`` (``QConstScale``, a 16-bit constant),
  ``softmax(dim=-1)`` over each score row (``QSoftmax``), attention dropout (``QTrainOnly``: torch's dropout in train
  mode, a wire in eval and exact mode), ``att @ v`` (``QMatMul``), heads merged (wires), ``out_proj`` (``QLinear``);
* encoder layer: LayerNorm (``QLayerNorm``), residual adds (``QAdd``), the feed-forward Linear / activation (ReLU,
  or GELU as a table) / Linear, post- or pre-norm (``norm_first``) as torch computes it;
* encoder: its layers in order, then its ``norm`` if any.

``state_dict`` keys stay torch's: the composite's hooks write ``in_proj_weight`` / ``in_proj_bias`` (or
``q_proj_weight``, ... when kdim/vdim differ) from the three projections and split them back on load.

A causal ``attn_mask`` / ``is_causal=True`` (and any mask whose allowed keys form one run per query row: a sliding
window) is exact: each query row's softmax runs over its allowed keys only and the masked weights are exact zeros
(slices, row softmaxes, zero padding and one lossless concat). ``key_padding_mask`` (per-sample data), masks
computed in forward from tensor sizes, additive float masks and attention weights that reach the output are refused
at ``quantize_model`` time, in one line naming the module.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from qfx.errors import UnsupportedError

__all__ = ["QMultiheadAttention", "QTransformerEncoderLayer", "QTransformerEncoder", "expand_transformers",
           "attention_weights"]


def attention_weights(att: torch.Tensor, average: bool = True) -> torch.Tensor:
    """``nn.MultiheadAttention``'s returned weights (need_weights=True): the softmax rows, averaged over the heads
    when ``average``. A marker for the tracer: qfx computes the attention output, so weights that reach a model
    output or a later op are refused (``qfx.nn.trace``); unused ones cost nothing."""
    return att.mean(1) if average else att


torch.fx.wrap("attention_weights")


def _where(path: str, cls: str, root: str = "") -> str:
    return f"{f'cannot quantize {root}: ' if root else ''}module '{path}' (torch.nn.{cls})"


class QMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` as plain PyTorch the tracer converts op by op (see the module doc). Built from the
    float module by ``from_torch``; ``path`` names it in refusals."""

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, dropout: float = 0.0,
                 batch_first: bool = False, kdim: int | None = None, vdim: int | None = None, path: str = "") -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise UnsupportedError(f"{_where(path, 'MultiheadAttention')}: embed_dim {embed_dim} is not divisible by "
                                   f"num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.head_dim = int(embed_dim), int(num_heads), embed_dim // num_heads
        self.kdim, self.vdim = int(kdim or embed_dim), int(vdim or embed_dim)
        self.batch_first, self.qfx_path, self.qfx_root = bool(batch_first), path, ""
        self.same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias)
        self.dropout = float(dropout)
        self.attn_dropout = nn.Dropout(dropout)
        self._register_state_dict_hook(_save_in_proj)
        self._register_load_state_dict_pre_hook(_load_in_proj, with_module=True)

    @classmethod
    def from_torch(cls, m: nn.MultiheadAttention, path: str = "") -> "QMultiheadAttention":
        where = _where(path, "MultiheadAttention")
        if m.bias_k is not None or m.bias_v is not None:
            raise UnsupportedError(f"{where}: add_bias_kv=True has no qfx twin; use add_bias_kv=False")
        if m.add_zero_attn:
            raise UnsupportedError(f"{where}: add_zero_attn=True has no qfx twin; use add_zero_attn=False")
        bias = m.in_proj_bias is not None
        q = cls(m.embed_dim, m.num_heads, bias, float(m.dropout), bool(m.batch_first), m.kdim, m.vdim, path)
        with torch.no_grad():
            if m._qkv_same_embed_dim:
                ws = m.in_proj_weight.chunk(3)
            else:
                ws = (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
            bs = m.in_proj_bias.chunk(3) if bias else (None,) * 3
            for lin, w, b in zip((q.q_proj, q.k_proj, q.v_proj), ws, bs):
                lin.weight.copy_(w)
                if b is not None:
                    lin.bias.copy_(b)
            q.out_proj.weight.copy_(m.out_proj.weight)
            if m.out_proj.bias is not None and q.out_proj.bias is not None:
                q.out_proj.bias.copy_(m.out_proj.bias)
            elif m.out_proj.bias is not None:  # in-projection without bias, out_proj with one: keep torch's layout
                q.out_proj.bias = nn.Parameter(m.out_proj.bias.detach().clone())
        q.train(m.training)
        return q

    def extra_repr(self) -> str:
        return (f"{self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}, "
                f"dropout={self.dropout}")

    @property
    def _where(self) -> str:
        return _where(self.qfx_path, "MultiheadAttention", self.qfx_root)

    # ------------------------------------------------------------------ masks
    def _mask_value(self, attn_mask: Any) -> torch.Tensor | None:
        """The mask's values at quantize time: a tensor, or a buffer / constant read in forward (fx get_attr)."""
        if attn_mask is None or isinstance(attn_mask, torch.Tensor):
            return attn_mask
        node = getattr(attn_mask, "node", None)
        root = getattr(getattr(attn_mask, "tracer", None), "root", None)
        if node is not None and node.op == "get_attr" and root is not None:
            v: Any = root
            for part in str(node.target).split("."):
                v = getattr(v, part, None)
            if isinstance(v, torch.Tensor):
                return v.detach()
        raise UnsupportedError(f"{self._where}: an attn_mask computed in forward from tensor sizes; qfx needs the "
                               "mask's values when it converts the model: register it as a buffer, build it from "
                               "constant sizes, or pass is_causal=True")

    def _bands(self, attn_mask: Any, is_causal: bool, n_q: int, n_k: int) -> list[tuple[int, int]] | None:
        """Per query row, the run [a, b) of keys it attends to; None when every row sees every key."""
        where = self._where
        if is_causal:
            bands = [(0, min(r + 1, n_k)) for r in range(n_q)]
        else:
            m = self._mask_value(attn_mask)
            if m is None:
                return None
            if m.dim() != 2 or tuple(m.shape) != (n_q, n_k):
                raise UnsupportedError(f"{where}: attn_mask of shape {tuple(m.shape)}: qfx takes one ({n_q}, {n_k}) "
                                       "mask shared by every sample and head")
            if m.dtype == torch.bool:
                masked = m
            else:
                finite = torch.isfinite(m)
                if bool((m[finite] != 0).any()) or bool((m[~finite] > 0).any()):
                    raise UnsupportedError(f"{where}: an additive attn_mask with finite non-zero values (a learned "
                                           "or relative bias): qfx masks positions out (True / -inf) only")
                masked = ~finite
            bands = []
            for r in range(n_q):
                keep = (~masked[r]).nonzero().flatten().tolist()
                if not keep or keep != list(range(keep[0], keep[-1] + 1)):
                    what = "masks every key" if not keep else "allows keys that are not one run"
                    raise UnsupportedError(f"{where}: attn_mask row {r} {what}; qfx masks each query row to one run "
                                           "of keys (causal, sliding window)")
                bands.append((keep[0], keep[-1] + 1))
        return None if all(b == (0, n_k) for b in bands) else bands

    def _lengths(self, n_q: Any, n_k: Any) -> tuple[int, int]:
        """The query and key lengths as ints: while torch.fx traces, the ones an eager run on the example inputs
        recorded (``expand_transformers``)."""
        if isinstance(n_q, int) and isinstance(n_k, int):
            return n_q, n_k
        seen = getattr(self, "qfx_lengths", None)
        if seen is None:
            raise UnsupportedError(f"{self._where}: an attention mask needs the sequence lengths: give "
                                   "quantize_model calib_data")
        return seen

    # ------------------------------------------------------------------ forward
    def forward(self, query: Any, key: Any, value: Any, key_padding_mask: Any = None, need_weights: bool = True,
                attn_mask: Any = None, average_attn_weights: bool = True, is_causal: bool = False) -> Any:
        where = self._where
        if key_padding_mask is not None:
            raise UnsupportedError(f"{where}: key_padding_mask (per-sample padding) has no qfx twin; qfx attends "
                                   "over every position of fixed-length sequences")
        same_kv = key is value
        self_attn = key is query and same_kv
        if not self.batch_first:  # (L, N, E): attention runs batch-first, the transposes are relabellings
            query = query.transpose(0, 1)
            key = query if self_attn else key.transpose(0, 1)
            value = key if same_kv else value.transpose(0, 1)
        b = query.shape[0]
        if isinstance(query, torch.Tensor) and not isinstance(query, torch.fx.Proxy):
            self.qfx_lengths = (int(query.shape[1]), int(key.shape[1]))  # eager: what masks need while tracing
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).view(b, -1, h, d).transpose(1, 2)
        k = self.k_proj(key).view(b, -1, h, d).transpose(1, 2)
        v = self.v_proj(value).view(b, -1, h, d).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d))
        bands, nk = None, 0
        if attn_mask is not None or is_causal:
            nq, nk = self._lengths(query.shape[1], key.shape[1])
            bands = self._bands(attn_mask, bool(is_causal), nq, nk)
        if bands is None:
            att = scores.softmax(dim=-1)
        else:  # each row over its own keys; the masked weights are zeros
            rows = []
            for r, (lo, hi) in enumerate(bands):
                p = scores[:, :, r:r + 1, lo:hi].softmax(dim=-1)
                rows.append(F.pad(p, (lo, nk - hi)) if (lo, hi) != (0, nk) else p)
            if "mask_rows" not in self._modules:  # made in the eager run before tracing (lengths are known there)
                from qfx.nn.op_layers import QCat

                self.mask_rows = QCat(2, out_width=None)  # lossless: the rows keep the softmax's own format
            att = self.mask_rows(*rows)
        att = self.attn_dropout(att)
        y = self.out_proj((att @ v).transpose(1, 2).reshape(b, -1, h * d))
        if not self.batch_first:
            y = y.transpose(0, 1)
        return y, (attention_weights(att, average_attn_weights) if need_weights else None)


def _save_in_proj(module: QMultiheadAttention, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """state_dict hook: torch's keys (in_proj_weight / in_proj_bias, or q/k/v_proj_weight) for the projections'
    weight and bias; their quantizers keep their own keys."""
    names = [f"{prefix}{n}_proj" for n in "qkv"]
    ws = [state_dict.pop(f"{p}.weight") for p in names]
    bs = [state_dict.pop(f"{p}.bias", None) for p in names]
    if module.same_embed_dim:
        state_dict[f"{prefix}in_proj_weight"] = torch.cat(ws)
    else:
        for p, w in zip(names, ws):
            state_dict[f"{p}_weight"] = w
    if bs[0] is not None:
        state_dict[f"{prefix}in_proj_bias"] = torch.cat(bs)


def _load_in_proj(module: QMultiheadAttention, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    e = module.embed_dim
    names = [f"{prefix}{n}_proj" for n in "qkv"]
    w = state_dict.pop(f"{prefix}in_proj_weight", None)
    if w is not None:
        for p, part in zip(names, w.split(e)):
            state_dict[f"{p}.weight"] = part
    for p in names:
        if f"{p}_weight" in state_dict:
            state_dict[f"{p}.weight"] = state_dict.pop(f"{p}_weight")
    b = state_dict.pop(f"{prefix}in_proj_bias", None)
    if b is not None:
        for p, part in zip(names, b.split(e)):
            state_dict[f"{p}.bias"] = part


class QTransformerEncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer`` as torch's slow path computes it (post-norm, or pre-norm with
    ``norm_first``), with ``self_attn`` a ``QMultiheadAttention`` and the float layers it owned."""

    def __init__(self, m: nn.TransformerEncoderLayer, path: str = "") -> None:
        super().__init__()
        self.self_attn = QMultiheadAttention.from_torch(m.self_attn, f"{path}.self_attn" if path else "self_attn")
        self.linear1, self.dropout, self.linear2 = m.linear1, m.dropout, m.linear2
        self.norm_first = bool(m.norm_first)
        self.norm1, self.norm2, self.dropout1, self.dropout2 = m.norm1, m.norm2, m.dropout1, m.dropout2
        act = m.activation
        if isinstance(act, nn.Module):
            self.activation = act
        else:
            self.activation_fn = act  # F.relu / F.gelu (the tracer converts the call)
        self.qfx_path = path
        self.train(m.training)

    def _act(self, x: Any) -> Any:
        return self.activation(x) if "activation" in self._modules else self.activation_fn(x)

    def _sa_block(self, x: Any, attn_mask: Any, key_padding_mask: Any, is_causal: bool) -> Any:
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=is_causal)[0]
        return self.dropout1(x)

    def _ff_block(self, x: Any) -> Any:
        return self.dropout2(self.linear2(self.dropout(self._act(self.linear1(x)))))

    def forward(self, src: Any, src_mask: Any = None, src_key_padding_mask: Any = None, is_causal: bool = False) -> Any:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x


class QTransformerEncoder(nn.Module):
    """``nn.TransformerEncoder``: its layers (``QTransformerEncoderLayer``) in order, then ``norm`` (no nested
    tensors, no fast path: the tracer sees plain ops)."""

    def __init__(self, m: nn.TransformerEncoder, path: str = "") -> None:
        super().__init__()
        pre = f"{path}." if path else ""
        self.layers = nn.ModuleList([_expand_one(layer, f"{pre}layers.{i}") for i, layer in enumerate(m.layers)])
        self.num_layers = len(self.layers)
        self.norm = m.norm
        self.qfx_path = path
        self.train(m.training)

    def forward(self, src: Any, mask: Any = None, src_key_padding_mask: Any = None,
                is_causal: bool | None = None) -> Any:
        out = src
        for mod in self.layers:
            out = mod(out, src_mask=mask, is_causal=bool(is_causal), src_key_padding_mask=src_key_padding_mask)
        return self.norm(out) if self.norm is not None else out


def _expand_one(m: nn.Module, path: str) -> nn.Module:
    """The composite of one of torch's modules (whose ``forward`` is torch's own), or ``m`` itself."""
    if isinstance(m, nn.TransformerEncoder) and type(m).forward is nn.TransformerEncoder.forward:
        return QTransformerEncoder(m, path)
    if isinstance(m, nn.TransformerEncoderLayer) and type(m).forward is nn.TransformerEncoderLayer.forward:
        return QTransformerEncoderLayer(m, path)
    if isinstance(m, nn.MultiheadAttention) and type(m).forward is nn.MultiheadAttention.forward:
        return QMultiheadAttention.from_torch(m, path)
    return m


def expand_transformers(body: nn.Module, example: Any = None) -> nn.Module:
    """``body`` with every ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder``
    (torch's ``forward``) replaced, in place, by its composite at the same path (every alias of a shared module gets
    the same composite). Returns the root's own composite when ``body`` itself is one of them. With ``example``
    inputs the model runs once (eval, no_grad) so each attention knows its sequence lengths (masks need them)."""
    name = type(body).__name__
    try:
        root = _expand_one(body, "")
        if root is not body:
            body = root
        else:
            _expand_children(body)
    except UnsupportedError as exc:
        raise UnsupportedError(f"cannot quantize {name}: {exc}") from None
    for m in body.modules():
        if isinstance(m, QMultiheadAttention):
            m.qfx_root = name  # refusals while tracing start like the tracer's own: "cannot quantize <model>: ..."
    xs = [t for t in (example if isinstance(example, (tuple, list)) else [example]) if isinstance(t, torch.Tensor)]
    if xs and any(isinstance(m, QMultiheadAttention) for m in body.modules()):
        modes = {m: m.training for m in body.modules()}
        try:
            body.eval()
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                body(*(t[:2].clone() for t in xs))
        except Exception:  # the refusal path reports what fails (the trace)
            pass
        finally:
            for m, tr in modes.items():
                m.training = tr
    return body


def _expand_children(body: nn.Module) -> None:
    done: dict[int, nn.Module] = {}
    replaced: list[str] = []
    for path, m in list(body.named_modules(remove_duplicate=False)):
        if not path or any(path.startswith(p + ".") for p in replaced):
            continue
        new = done.get(id(m))
        if new is None:
            new = _expand_one(m, path)
            if new is m:
                continue
            done[id(m)] = new
        parent, _, name = path.rpartition(".")
        setattr(body.get_submodule(parent) if parent else body, name, new)
        replaced.append(path)
