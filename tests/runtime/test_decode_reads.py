"""A decode step's reads from the GPU: copied in one wait, into buffers made once per shape."""

from __future__ import annotations

import os

import torch

from expertcache.runtime.decode_reads import DecodeReads
from expertcache.runtime.slots import compute_stream

DEVICE = torch.device(os.environ.get("EXPERTCACHE_TEST_DEVICE", "cpu"))


def test_reads_copy_each_tensor_to_the_host_and_leave_none_out():
    reads = DecodeReads(DEVICE)
    index = torch.tensor([[3, 1]], device=DEVICE)
    weights = torch.tensor([[0.75, 0.25]], dtype=torch.bfloat16, device=DEVICE)
    index_read, hidden_read, weights_read = reads.read([index, None, weights], compute_stream(DEVICE))
    assert hidden_read is None
    assert index_read.device.type == "cpu" and index_read.tolist() == [[3, 1]]
    assert weights_read.dtype == torch.bfloat16 and weights_read.float().tolist() == [[0.75, 0.25]]
    assert index_read.is_pinned() == (DEVICE.type == "cuda")


def test_a_buffer_is_reused_by_the_next_read_of_its_shape_so_callers_copy_what_they_keep():
    reads = DecodeReads(DEVICE)
    first = reads.read([torch.tensor([[1, 2]], device=DEVICE)], compute_stream(DEVICE))[0]
    kept = first.numpy().copy()
    second = reads.read([torch.tensor([[5, 6]], device=DEVICE)], compute_stream(DEVICE))[0]
    assert second.data_ptr() == first.data_ptr()
    assert first.tolist() == [[5, 6]] and kept.tolist() == [[1, 2]]
    wider = reads.read([torch.tensor([[7, 8, 9]], device=DEVICE)], compute_stream(DEVICE))[0]
    assert wider.data_ptr() != first.data_ptr() and wider.tolist() == [[7, 8, 9]]


def test_buffers_made_in_inference_mode_are_written_outside_it_too():
    reads = DecodeReads(DEVICE)
    with torch.inference_mode():
        reads.read([torch.tensor([[1, 2]], device=DEVICE)], compute_stream(DEVICE))
    assert reads.read([torch.tensor([[3, 4]], device=DEVICE)], compute_stream(DEVICE))[0].tolist() == [[3, 4]]
