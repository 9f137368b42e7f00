"""Decode steps' decoder layers replayed from CUDA graphs, cut at the experts.

A decode step's work outside the experts is some fifty small kernels a layer, each launched from
Python. On the lent H100 that host work set the pace, not the GPU: an all-hit Mixtral layer took
1.9–2.5 ms, 1.1–1.4 of it outside the experts function, and replayed from graphs that part took
0.4–0.5 ms (``benchmarks/decode_graphs_gpu.py``); eagerly its speed also moved with the host's
state between runs (``benchmarks/dense_spread_gpu.py``). A CUDA graph launches a captured
sequence of kernels at once. The experts cannot be captured: each layer's routing decides on the host what
runs where. So each decoder layer's decode step is captured as segments that end where the
layer calls its experts, and replayed with ``CachedExperts.forward`` running the experts eagerly
in between, exactly as in an eager pass.

Layers, not the whole forward: what a model does once per pass (embeddings, rotary tables, the
mask) may read positions on the host, which a graph would freeze (Phi-3.5-MoE picks its rotary
scale from the sequence length). A graph also needs its tensors in place and its shapes fixed,
which a static key-value cache gives (``runtime.kv`` keeps one per model for generate); a
layer's call with any other cache (sliding-window layers included), or more than one token,
runs eagerly. Replay runs the same kernels on the same data as an eager layer with that cache,
so the tokens do not change.
"""

from __future__ import annotations

import functools
import time
import warnings
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten
from transformers.cache_utils import StaticLayer

from expertcache.runtime.experts import decoder_layers_name
from expertcache.runtime.kv import CACHE_ARGUMENT


@dataclass
class ExpertsCall:
    """One experts call as captured: its inputs are the segment before's outputs, its output the
    buffer the segment after reads."""

    module: nn.Module
    layer: int
    hidden: torch.Tensor
    top_k_index: torch.Tensor
    top_k_weights: torch.Tensor
    out: torch.Tensor


@dataclass
class LayerCapture:
    """One decoder layer's decode step, captured for one cache and one shape of its arguments."""

    key: tuple
    inputs: list[torch.Tensor | None]  # a buffer per tensor among the arguments, copied into before replay
    segments: list[torch.cuda.CUDAGraph] = field(default_factory=list)
    calls: list[ExpertsCall] = field(default_factory=list)
    output: object = None


class DecodeGraphs:
    """The captured decoder layers of one model, captured on first use and replayed after.

    All captures share one memory pool, captured in the order a pass runs the layers and so
    replayed in it. ``CachedExperts.forward`` hands its call to ``cut`` while a capture runs."""

    def __init__(self) -> None:
        self.layers: dict[int, LayerCapture] = {}  # id of the decoder layer → its capture
        self.failed = False  # a capture failed once: this model decodes eagerly from then on
        self.captures = 0
        self.capture_s = 0.0  # host time spent capturing, all captures together
        self._pool = None
        self._recording: LayerCapture | None = None
        self._open: torch.cuda.CUDAGraph | None = None
        self._cache_tensors: tuple[weakref.ref, tuple] | None = None

    @property
    def capturing(self) -> bool:
        return self._recording is not None

    def layer_forward(self, layer: nn.Module, eager, experts, args: tuple, kwargs: dict):
        """One call of a decoder layer: replayed when it is a decode step of a static cache, else
        eager. ``experts`` is the runtime's ``forward``, which runs the experts between segments."""
        keyed = None if self.failed else self._key(args, kwargs)
        if keyed is None:
            return eager(*args, **kwargs)
        key, leaves, spec = keyed
        capture = self.layers.get(id(layer))
        if capture is None or capture.key != key:
            if capture is not None:  # a new cache or new shapes: every layer captures again, in a new pool
                self.layers, self._pool = {}, None
            capture = self._capture(eager, leaves, spec, key)
            if capture is None:
                return eager(*args, **kwargs)
            self.layers[id(layer)] = capture
        return self._replay(capture, leaves, experts)

    def cut(self, module: nn.Module, layer: int, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        """End the segment being captured at this experts call, and open the next one."""
        self._open.capture_end()
        self._recording.segments.append(self._open)
        out = torch.empty_like(hidden)  # outside the graphs' pool: written eagerly at every replay
        self._recording.calls.append(ExpertsCall(module, layer, hidden, top_k_index, top_k_weights, out))
        self._open = torch.cuda.CUDAGraph()
        self._open.capture_begin(pool=self._pool)
        return out

    def _key(self, args: tuple, kwargs: dict) -> tuple[tuple, list, object] | None:
        """What a capture holds fixed (the cache's tensors, the arguments' shapes and values), with
        the arguments flattened; None for a call that is not one decode step of a static cache,
        told before any flattening (prefill passes every layer through here too)."""
        hidden = args[0] if args else kwargs.get("hidden_states")
        if not torch.is_tensor(hidden) or hidden.device.type != "cuda" or hidden.shape[:-1] != (1, 1):
            return None
        held = self._tensors_of(kwargs.get(CACHE_ARGUMENT))
        if held is None or torch.is_grad_enabled():
            return None
        leaves, spec = tree_flatten((args, kwargs))
        shapes = tuple(
            (tuple(leaf.shape), leaf.dtype) if torch.is_tensor(leaf) else leaf if isinstance(leaf, (bool, int, float, str, type(None))) else type(leaf)
            for leaf in leaves
        )  # fmt: skip
        return (held, spec, shapes, torch.is_inference_mode_enabled()), leaves, spec

    def _tensors_of(self, cache) -> tuple | None:
        """The addresses of the cache's tensors, or None for a cache that graphs cannot serve.

        Only plain static layers: all their state is in tensors, which a replay updates. A
        sliding-window layer also counts its length in a Python int, which a replay would leave
        behind (positions, masks and its roll all read it). The addresses, not the cache's
        identity: generate makes a new cache per request, which the allocator tends to put where
        the last one was, and a graph needs only the addresses. Remembered for the cache object,
        whose tensors stay in place."""
        if self._cache_tensors is None or self._cache_tensors[0]() is not cache:
            layers = getattr(cache, "layers", None)
            if not layers or not all(type(layer) is StaticLayer for layer in layers):
                return None
            if not all(layer.is_initialized for layer in layers):
                return None  # a first pass of one token: it allocates the tensors, a capture may not
            held = tuple(t.data_ptr() for holder in (cache, *layers) for t in vars(holder).values() if torch.is_tensor(t))
            self._cache_tensors = weakref.ref(cache), held
        return self._cache_tensors[1]

    def _capture(self, eager, leaves: list, spec, key: tuple) -> LayerCapture | None:
        """Capture one decode step of a layer without running it (a capture records kernels and
        runs none); the caller replays it."""
        started = time.perf_counter()
        inputs = [leaf.clone() if torch.is_tensor(leaf) else None for leaf in leaves]
        recording = LayerCapture(key, inputs)
        copied_args, copied_kwargs = tree_unflatten([leaf if buffer is None else buffer for leaf, buffer in zip(leaves, inputs)], spec)
        torch.cuda.synchronize()
        self._pool = self._pool or torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        self._recording = recording
        try:
            with torch.cuda.stream(side):
                self._open = torch.cuda.CUDAGraph()
                self._open.capture_begin(pool=self._pool)
                try:
                    recording.output = eager(*copied_args, **copied_kwargs)
                finally:
                    self._open.capture_end()
                recording.segments.append(self._open)
        except Exception as error:  # a layer that cannot be captured still decodes, eagerly
            self.failed = True
            self.layers = {}
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            warnings.warn(f"decoding without CUDA graphs: {reason}", RuntimeWarning, stacklevel=2)
            return None
        finally:
            self._recording, self._open = None, None
            torch.cuda.current_stream().wait_stream(side)
        self.captures += 1
        self.capture_s += time.perf_counter() - started
        return recording

    def _replay(self, capture: LayerCapture, leaves: list, experts):
        for buffer, leaf in zip(capture.inputs, leaves):
            if buffer is not None:
                buffer.copy_(leaf, non_blocking=True)
        for segment, call in zip(capture.segments, capture.calls):
            segment.replay()
            experts(call.module, call.layer, call.hidden, call.top_k_index, call.top_k_weights, out=call.out)
        capture.segments[-1].replay()
        return capture.output


def route_decode_through_graphs(model: nn.Module, experts_names: list[str]) -> DecodeGraphs | None:
    """The model's ``DecodeGraphs``, made on the first call: from then on each decoder layer's
    calls go through it while the attached runtime has it (``model.expertcache.graphs``). One per
    model, so that a runtime attached anew (a bench's next system) replays what an earlier one
    captured. The decoder layers are the list that holds the layers named in ``experts_names``,
    with the dense ones among them; None when there is no such list (decode stays eager)."""
    if hasattr(model, "_expertcache_graphs"):
        return model._expertcache_graphs
    layers = model.get_submodule(decoder_layers_name(experts_names[0]))
    model._expertcache_graphs = DecodeGraphs() if isinstance(layers, nn.ModuleList) else None
    if model._expertcache_graphs is None:
        return None
    model._expertcache_keeps_layer_outputs = False
    model.register_forward_pre_hook(_note_kept_outputs, with_kwargs=True)
    for layer in layers:
        layer.forward = _graphed(model, layer, layer.forward)
    return model._expertcache_graphs


def _note_kept_outputs(model: nn.Module, args: tuple, kwargs: dict) -> None:
    """A pass that returns the layers' hidden states or attentions keeps what each layer returned,
    which a replay would overwrite at the next step: such passes run eagerly."""
    model._expertcache_keeps_layer_outputs = any(
        kwargs.get(flag, getattr(model.config, flag, False)) for flag in ("output_hidden_states", "output_attentions")
    )


def _graphed(model: nn.Module, layer: nn.Module, eager):
    @functools.wraps(eager)
    def forward(*args, **kwargs):
        runtime = getattr(model, "expertcache", None)
        graphs = getattr(runtime, "graphs", None)
        if graphs is None or model._expertcache_keeps_layer_outputs:
            return eager(*args, **kwargs)
        return graphs.layer_forward(layer, eager, runtime.forward, args, kwargs)

    return forward
