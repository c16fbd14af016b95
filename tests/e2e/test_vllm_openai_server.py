"""cure-eval's API engine against vLLM's own OpenAI-compatible server serving the tiny coder.

The tiny coder has no chat template, so the server refuses chat requests (HTTP 400, and our
error says which endpoint to use); with ``api.endpoint=completions`` the rendered prompts go to
``/v1/completions``, and the held-out code accuracy comes out in the range of the in-process
vLLM engine's on the same problems and sampling (both unseeded: the CPU build cannot seed
requests whose prompts are prefilled in chunks). Both also run one refinement round
(rollout.refine) on 2 generated tests per problem: repair prompts through the real engines.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.helpers.cure_runs import ROOT, free_port
from tests.rollout.test_evaluate import SANDBOX_ISOLATION

TINY_CODER = ROOT / "rollout" / "assets" / "tiny_coder"
HELD_OUT = ROOT / "rollout" / "assets" / "tasks" / "eval.json"
CURE_EVAL = [sys.executable, "-c", "from rollout.eval_main import run; run()",
             f"--config={ROOT / 'configs' / 'eval.py'}"]
K_CODE = 8
# Both sides draw K_CODE programs for each of the 61 held-out problems (~13% correct): the
# difference of two such accuracies has a standard deviation of about 0.02.
TOLERANCE = 0.07
# One refinement round over 2 generated tests per problem, 2 candidates per repair request.
REFINE = ("--config.single_eval=false", "--config.k_case=2", f"--config.bon=(({K_CODE},2),)",
          "--config.refine.rounds=1", "--config.refine.k=2")


def _eval(out, *flags: str) -> dict:
    args = [*CURE_EVAL, f"--config.dataset={HELD_OUT}", f"--config.k_code={K_CODE}",
            "--config.single_eval=true", "--config.sampling.temperature=1.0",
            "--config.sampling.top_p=1.0", "--config.sampling.top_k=0",
            "--config.sampling.max_tokens=128", "--config.sampling.seed=-1",
            f"--config.out_dir={out}", "--config.progress=false",
            f"--config.sandbox.isolation={SANDBOX_ISOLATION}", *flags]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=str(ROOT),
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False)
    return {"rc": r.returncode, "stderr": r.stderr, "metrics": json.loads(
        (out / "metrics.json").read_text()) if r.returncode == 0 else None}


def _wait_up(url: str, proc: subprocess.Popen, log, timeout_s: float = 420.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"vLLM's server exited ({proc.returncode}): {log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1.0)
    pytest.fail(f"vLLM's server did not answer {url} within {timeout_s:.0f} s")


@pytest.mark.slow
def test_api_engine_on_vllms_server_matches_the_in_process_engine(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    server = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
              f"--model={TINY_CODER}", "--served-model-name=tiny-coder", "--dtype=float32",
              "--max-model-len=1024", "--enforce-eager", "--host=127.0.0.1", f"--port={port}"]
    with open(tmp_path / "server.log", "w+") as log:
        proc = subprocess.Popen(server, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path),
                                env=dict(os.environ, VLLM_TARGET_DEVICE="cpu"),
                                start_new_session=True)
        try:
            _wait_up(f"{base}/models", proc, log)
            api = ["--config.engine=api", f"--config.api.base_url={base}",
                   "--config.api.model=tiny-coder", "--config.api.max_retries=2"]
            chat = _eval(tmp_path / "chat", *api)
            served = _eval(tmp_path / "served", *api, "--config.api.endpoint=completions", *REFINE)
        finally:
            # SIGTERM first: vLLM's server then stops its engine process and frees its shared
            # memory (SIGKILL leaves torch's psm_* segments and a semaphore in /dev/shm).
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    err = [line for line in chat["stderr"].splitlines() if line.strip()]
    assert chat["rc"] != 0 and "HTTP 400" in err[-1] and "api.endpoint=completions" in err[-1], \
        chat["stderr"][-2000:]
    assert served["rc"] == 0, served["stderr"][-3000:]
    local = _eval(tmp_path / "local", "--config.engine=vllm", f"--config.model={TINY_CODER}",
                  "--config.engine_options.in_process=true",
                  "--config.engine_options.distributed_executor_backend=uni",
                  "--config.engine_options.enforce_eager=true",
                  "--config.engine_options.dtype=float32",
                  "--config.engine_options.kv_cache_gb=1", *REFINE)
    assert local["rc"] == 0, local["stderr"][-3000:]
    (name,) = served["metrics"]
    a, b = served["metrics"][name], local["metrics"][name]
    assert a["n_problems"] == b["n_problems"] == 61
    assert a["code_parse_rate"] > 0.9, a  # the raw prompt really reached a model that knows it
    assert b["code_accuracy"] > 0.05, b
    assert abs(a["code_accuracy"] - b["code_accuracy"]) <= TOLERANCE, (a["code_accuracy"],
                                                                       b["code_accuracy"])
    for out, m in ((tmp_path / "served", a), (tmp_path / "local", b)):
        ref = m["refine"]
        assert ref["accuracy"][0] == m["bon"][f"{K_CODE}x2"] and len(ref["accuracy"]) == 2
        assert ref["repair_requests"] > 0, ref  # picks that fail a generated test were sent
        recs = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
        assert sum(x.get("kind") == "repair-1" for x in recs) == 2 * ref["repair_requests"]
