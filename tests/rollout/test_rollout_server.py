"""The rollout server process under the learner's supervision (rollout.contract.control.RolloutClient).

Real processes, real shared memory, a real tiny Qwen2 on the transformers backend: weights go
in through the WeightChannel, experience comes out of the RolloutBuffer with the version that
made it; a server killed mid-step or frozen is a clear error within seconds, and nothing is left
behind (no processes, no /dev/shm segments).
"""
from __future__ import annotations

import os
import pathlib
import signal
import time

import numpy as np
import pytest

from rollout.contract.control import RolloutClient, RolloutServerError
from rollout.contract.procs import descendants, pid_alive
from rollout.contract.ring_buffer import RolloutBuffer, WriterDiedError
from rollout.contract.segments import list_segments
from rollout.contract.weight_channel import WeightChannel

pytestmark = pytest.mark.slow

TINY_HF = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 512,
           "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
           "hidden_act": "silu", "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
           "tie_word_embeddings": False, "max_position_embeddings": 1024}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> pathlib.Path:
    from rollout.random_policy import ensure_random_policy_dir

    return ensure_random_policy_dir(tmp_path_factory.mktemp("server") / "tiny", TINY_HF, seed=0)


@pytest.fixture(scope="module")
def hf_weights(model_dir) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(model_dir / "model.safetensors"))


class Endpoints:
    """Buffer and channel owned by the test process (the driver's role)."""

    def __init__(self, weights_bytes: int) -> None:
        self.run_id = f"srvtest{os.getpid()}x{time.monotonic_ns() % 10**6}"
        self.buffer = RolloutBuffer.create(self.run_id, 2, 8 << 20)
        self.buffer.open_reader()
        self.channel = WeightChannel.create(self.run_id, weights_bytes)

    def close(self) -> None:
        self.buffer.close()
        self.channel.close()


def spec_for(ep: Endpoints, model_dir, **extra) -> dict:
    spec = {
        "buffer": ep.buffer.name, "channel": ep.channel.name,
        "engine": {"backend": "hf", "model": str(model_dir), "dtype": "float32", "device": "cpu"},
        "rollout": {"k_code": 2, "k_case": 2, "max_tokens": 8, "max_len": 1024, "seed": 3},
        "eval": {"k_code": 2, "k_case": 1, "max_tokens": 6, "bon": [[1, 1], [2, 1]]},
        "sandbox": {"workers": 1}, "data": {"train": "embedded:train", "eval": "embedded:eval"},
        "heartbeat_s": 0.2,
    }
    spec.update(extra)
    return spec


def _alive(pids) -> list[int]:
    return [p for p in pids if pid_alive(p)]


def test_rollout_load_weights_evaluate_and_clean_stop(tmp_path, model_dir, hf_weights):
    ep = Endpoints(WeightChannel.required_capacity(hf_weights))
    try:
        client = RolloutClient(spec_for(ep, model_dir), tmp_path, heartbeat_timeout_s=20)
        tree = [client.pid]
        try:
            assert client.ready["n_train"] == 30 and client.ready["version"] == -1
            ep.channel.write(hf_weights, version=3)
            rep = client.call("load_weights", 60, version=3)
            assert rep["version"] == 3
            rep = client.call("rollout", 120, step=0, problem_ids=[4, 7])
            assert rep["version"] == 3 and rep["rows"] == 8
            b = ep.buffer.get(timeout=5)
            assert b.version == 3
            np.testing.assert_array_equal(b.arrays["policy_version"], np.full(8, 3))
            np.testing.assert_array_equal(b.arrays["problem_id"], [4] * 4 + [7] * 4)
            np.testing.assert_array_equal(b.arrays["kind"], [0, 0, 1, 1] * 2)
            assert b.meta["rows"] == 8 and "code_accuracy" in b.meta and "verdicts" in b.meta
            total = b.arrays["prompt_len"] + b.arrays["response_len"]
            assert total.max() <= b.arrays["tokens"].shape[1]
            ev = client.call("evaluate", 120, split="eval", max_problems=2)["metrics"]
            assert ev["problems"] == 2 and set(ev["bon"]) == {"1x1", "2x1"}
            with pytest.raises(Exception, match="out of range"):
                client.call("rollout", 30, step=1, problem_ids=[999])
            tree += descendants(client.pid)
        finally:
            client.close()
        assert client.proc.returncode == 0  # stopped politely
        assert _alive(tree) == []
    finally:
        ep.close()
    assert list_segments(ep.run_id) == []


def test_server_killed_mid_step_fails_fast_and_leaves_nothing(tmp_path, model_dir, hf_weights):
    ep = Endpoints(WeightChannel.required_capacity(hf_weights))
    try:
        client = RolloutClient(spec_for(ep, model_dir), tmp_path, heartbeat_timeout_s=20)
        tree = [client.pid] + descendants(client.pid)
        killed_at = []

        def kill(msg):
            if msg.get("phase") == "generate" and not killed_at:
                tree.extend(descendants(client.pid))
                os.kill(client.pid, signal.SIGKILL)
                killed_at.append(time.monotonic())

        client.on_progress = kill
        try:
            with pytest.raises(RolloutServerError) as err:
                client.call("rollout", 300, "the rollout of step 0", step=0, problem_ids=[1, 2])
            assert killed_at and time.monotonic() - killed_at[0] < 3.0
            msg = str(err.value)
            assert "killed by signal SIGKILL" in msg and "rollout of step 0" in msg
            assert "\n" not in msg
        finally:
            client.close()
        deadline = time.monotonic() + 5
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _alive(tree) == []
        # The dead writer is reported by the buffer too, not waited on.
        with pytest.raises(WriterDiedError):
            ep.buffer.get(timeout=5)
    finally:
        ep.close()
    assert list_segments(ep.run_id) == []


def test_frozen_server_is_an_error_within_the_heartbeat_timeout(tmp_path, model_dir, hf_weights):
    ep = Endpoints(WeightChannel.required_capacity(hf_weights))
    try:
        client = RolloutClient(spec_for(ep, model_dir), tmp_path, heartbeat_timeout_s=2.0)
        tree = [client.pid] + descendants(client.pid)
        try:
            os.kill(client.pid, signal.SIGSTOP)
            t0 = time.monotonic()
            with pytest.raises(RolloutServerError, match="no heartbeat"):
                client.call("rollout", 300, "the rollout of step 0", step=0, problem_ids=[1])
            assert time.monotonic() - t0 < 5.0
        finally:
            client.close()
        assert _alive(tree) == []
    finally:
        ep.close()
    assert list_segments(ep.run_id) == []


def test_startup_failure_is_one_clear_line(tmp_path, hf_weights):
    ep = Endpoints(WeightChannel.required_capacity(hf_weights))
    try:
        bad = spec_for(ep, tmp_path / "no-such-model")
        with pytest.raises(RolloutServerError, match="start-up failed") as err:
            RolloutClient(bad, tmp_path, startup_timeout_s=120)
        assert "\n" not in str(err.value)
    finally:
        ep.close()
