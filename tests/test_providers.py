"""Execution providers: CUDA when configured and available, else the CPU, and never silently."""

from __future__ import annotations

import time

import onnxruntime as ort

from server.synthesis.voice import CUDA, RuntimeOptions


def test_cuda_provider_options_follow_config():
    options = RuntimeOptions(
        provider="cuda",
        cuda_device_id=1,
        cuda_mem_limit_bytes=2 << 30,
        cudnn_conv_algo_search="EXHAUSTIVE",
        cuda_copy_in_default_stream=False,
    )
    assert options.cuda_provider_options() == {
        "device_id": "1",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "do_copy_in_default_stream": "0",
        "arena_extend_strategy": "kSameAsRequested",
        "gpu_mem_limit": str(2 << 30),
    }


def test_no_memory_cap_unless_configured():
    assert "gpu_mem_limit" not in RuntimeOptions().cuda_provider_options()


def test_required_cuda_without_a_gpu_keeps_the_server_unready_and_says_why(make_server):
    cuda_here = CUDA in ort.get_available_providers()
    server = make_server(
        {"TTS__SYNTHESIS__PROVIDER": "cuda", "TTS__SYNTHESIS__REQUIRE_CUDA": "true"}, wait_ready=cuda_here
    )
    if cuda_here:  # on a GPU machine the same settings must give a ready server on CUDA
        assert server.get("/readyz").json()["providers"]["en_US-joe-medium"] == CUDA
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            resp = server.get("/readyz", timeout=2)
        except OSError:
            time.sleep(0.1)
            continue
        body = resp.json()
        if body["status"] != "loading":
            break
        time.sleep(0.1)
    assert resp.status == 503
    assert body["status"] == "unready"
    assert body["providers"] == {"en_US-joe-medium": "CPUExecutionProvider"}
    assert body["problem"] == "synthesis.require_cuda is set but a session runs on the CPU"
