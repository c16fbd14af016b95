r"""The evaluation pipeline behind ``cure-eval``: one-shot coding, unit-test generation and BoN.

For every problem of every dataset::

    code prompt  -> k_code samples from the coder  -> parse the last ```python block
    test prompt  -> k_case samples from the tester -> parse the last Test Input / Test Output
    sandbox: parsed codes x (parsed generated tests + ground-truth tests) -> verdict matrix
    rollout.metrics: code accuracy, unit-test accuracy, BoN(n, m), p_01, p_00, parse rates

The coder and the tester may be different models on different engines (e.g. a hosted coder
with our tester). The test prompt shows no public example by default (the paper's evaluation).

Nothing is lost: every sample is appended to ``<out_dir>/samples.jsonl`` the moment it exists
(one JSON object per line, flushed and fsynced per batch), and so is every problem's execution
matrix. Re-running the same command reads that file first and only does what is missing; a
line cut short by a crash is dropped and redone. ``run.json`` records the settings that change
results (models, sampling, prompts); resuming with different ones is refused with the fields
named. Raising ``k_code``/``k_case`` on a finished run only draws the extra samples (and
re-executes those problems).

Outputs in ``out_dir``: ``metrics.json`` (per dataset: ``code_accuracy``,
``unit_test_accuracy``, ``bon`` {"NxM": acc}, ``p_01``, ``p_00``, ``n_problems``,
``code_parse_rate``, ``test_parse_rate``), ``results.md`` (the paper-style table) and
``bon.png`` (BoN accuracy over n and over m), written by :mod:`rollout.eval_report`.

No jax here (rollout never imports it); torch/vLLM load only when a local engine is used.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Self

import numpy as np

from rollout import metrics as cure_metrics
from rollout.engines.api_engine import ApiConfig, ApiEngine, ChatRequest
from rollout.eval_report import write_reports
from rollout.parsing import parse_code, parse_test
from rollout.problems import Problem, embedded_problems, load_problems
from rollout.prompts import STOP_STRINGS, PromptBuilder, PromptConfig

__all__ = [
    "DataParallelEngine",
    "EvalError",
    "EvalSettings",
    "ModelSpec",
    "SampleLog",
    "Sampling",
    "default_engine_factory",
    "ensure_hf_model",
    "evaluate",
    "resolve_datasets",
    "summary_scalars",
    "write_summaries",
]

log = logging.getLogger(__name__)

ENGINES = ("vllm", "hf", "api")
KINDS = ("code", "test")
SAMPLES_FILE = "samples.jsonl"
RUN_FILE = "run.json"
_NOT_RUN = "-"  # verdict character of a cell never executed (unparsed code or test)
# The paper's evaluation prompts: no public example in the test prompt.
EVAL_PROMPTS = PromptConfig(show_example_in_test_prompt=False)


class EvalError(RuntimeError):
    """A user-facing failure of the evaluation; ``str(err)`` is one line."""


# --------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Sampling settings (paper's evaluation defaults). API: sample ``i`` of a prompt is sent
    with seed ``seed + i``. Local engines: each call is seeded from ``seed``, the first sample
    index and the prompt's place in the call. ``seed < 0``: no per-request seeds (local
    engines; vLLM's CPU build fails on seeded requests whose prompt is prefilled in chunks)."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    max_tokens: int = 2048
    seed: int = 0
    stop: tuple[str, ...] = STOP_STRINGS

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p: must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"sampling.max_tokens: must be >= 1, got {self.max_tokens}")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model playing a role: ``engine`` in ENGINES; ``model`` a HF directory or an Orbax
    checkpoint (vllm/hf), or ``api`` for the API engine; ``options`` go to the engine."""

    engine: str
    model: str = ""
    api: ApiConfig | None = None
    tokenizer: str = ""
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    base_model: str = ""  # HF dir an Orbax checkpoint was trained from (config, tokenizer)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine: expected one of {ENGINES}, got {self.engine!r}")
        if self.engine == "api" and self.api is None:
            raise ValueError("api: engine 'api' needs api.base_url and api.model")
        if self.engine != "api" and not self.model:
            raise ValueError(f"model: engine {self.engine!r} needs a model directory")

    @property
    def label(self) -> str:
        return self.api.model if self.engine == "api" and self.api else pathlib.Path(self.model).name

    def public(self) -> dict[str, Any]:
        """What identifies this model in run.json: the endpoint may move (a proxy, a new
        port), the model name may not. Never the API key."""
        d: dict[str, Any] = {"engine": self.engine}
        if self.engine == "api":
            assert self.api is not None
            d.update(model=self.api.model)
        else:
            d.update(model=str(self.model), tokenizer=self.tokenizer)
            if self.base_model:
                d.update(base_model=str(self.base_model))
        return d


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What to sample and score. ``bon`` pairs need ``n <= k_code`` and ``m <= k_case``;
    ``single_eval`` evaluates code only (no tests are sampled); ``max_gt_tests`` = 0 uses all
    ground-truth tests."""

    k_code: int = 16
    k_case: int = 16
    bon: tuple[tuple[int, int], ...] = ((1, 16), (4, 16), (8, 16), (16, 16), (16, 1), (16, 4), (16, 8))
    single_eval: bool = False
    max_gt_tests: int = 0
    gen_batch: int = 64  # prompts per engine call (vllm/hf); samples per fsync (api)
    exec_batch: int = 8  # problems per sandbox call

    def __post_init__(self) -> None:
        if self.k_code < 1:
            raise ValueError(f"k_code: must be >= 1, got {self.k_code}")
        if self.k_case < 0 or (not self.single_eval and self.k_case < 1):
            raise ValueError(f"k_case: must be >= 1 (or use single_eval), got {self.k_case}")
        for pair in self.bon:
            if len(pair) != 2:
                raise ValueError(f"bon: expected (n, m) pairs, got {pair!r}")
            n, m = pair
            if not 1 <= n <= self.k_code:
                raise ValueError(f"bon: ({n}, {m}) needs 1 <= n <= k_code = {self.k_code}")
            if not 0 <= m <= self.n_tests:
                raise ValueError(f"bon: ({n}, {m}) needs 0 <= m <= k_case = {self.n_tests}"
                                 + (" (single_eval samples no tests)" if self.single_eval else ""))
        if self.gen_batch < 1 or self.exec_batch < 1:
            raise ValueError("gen_batch/exec_batch: must be >= 1")

    @property
    def n_tests(self) -> int:
        return 0 if self.single_eval else self.k_case


# --------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------


def resolve_datasets(spec: str, *, data_dir: str | os.PathLike[str] = "data",
                     max_problems: int = 0, download: bool = True) -> dict[str, list[Problem]]:
    """``spec`` is a comma-separated list; each item is ``embedded:<split>``, a path (file or
    directory), or a hub dataset name (LiveBench, MBPP, ...) found as ``<data_dir>/<Name>.json``
    or downloaded there. Returns {label: problems} in the given order."""
    out: dict[str, list[Problem]] = {}
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        if item.startswith(("embedded:", "embedded-")):
            split = item.split(":", 1)[1] if ":" in item else item.split("-", 1)[1]
            label, problems = f"embedded-{split}", embedded_problems(split)
        elif pathlib.Path(item).exists():
            path = pathlib.Path(item)
            label, problems = path.stem if path.is_file() else path.name, load_problems(path)
        else:
            from rollout import hub  # stdlib only; the hub client loads lazily

            try:
                info = hub.resolve_dataset(item)
            except hub.UnknownDatasetError as e:
                raise EvalError(f"dataset {item!r} is not a file, a directory, embedded:<split> "
                                f"or a known dataset ({e})") from None
            label = info.name
            path = pathlib.Path(data_dir) / f"{info.name}.json"
            if not path.exists():
                if not download:
                    raise EvalError(f"dataset {info.name}: {path} not found "
                                    f"(run: cure-data download --dataset={info.name} --out={data_dir})")
                try:
                    path = hub.download_dataset(info.name, data_dir).path
                except hub.DatasetDownloadError as e:
                    raise EvalError(f"dataset {info.name}: {e}") from None
            problems = load_problems(path)
        if not problems:
            raise EvalError(f"dataset {item!r} holds no problems")
        if label in out:
            raise EvalError(f"dataset {item!r} is listed twice")
        out[label] = problems[:max_problems] if max_problems > 0 else problems
    if not out:
        raise EvalError("dataset: empty; give a name, a path or embedded:eval")
    return out


# --------------------------------------------------------------------------------------
# the JSONL record of samples and executions
# --------------------------------------------------------------------------------------


class SampleLog:
    """Append-only JSONL file of sample and execution records, crash-tolerant.

    Records: ``{"type": "sample", "dataset", "task_id", "kind": "code"|"test", "index", ...}``
    and ``{"type": "exec", "dataset", "task_id", "n_codes", "n_tests", "gen", "gt", ...}``.
    A final line without its newline (a crash mid-write) is cut off when the file is opened;
    a malformed line anywhere else is an error naming the line.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = pathlib.Path(path)
        self.samples: dict[tuple[str, str, str, int], dict] = {}
        self.execs: dict[tuple[str, str], dict] = {}
        self._load()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held until close()

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "r+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":  # a crash mid-write: cut back to the last full line
                    step, pos = 1 << 16, size
                    while pos > 0:
                        pos = max(0, pos - step)
                        fh.seek(pos)
                        cut = fh.read(min(step, size - pos)).rfind(b"\n")
                        if cut >= 0:
                            pos += cut + 1
                            break
                    log.warning("%s: dropping a partial last line (%d bytes) left by an "
                                "interruption", self.path, size - pos)
                    fh.truncate(pos)
            fh.seek(0)
            for lineno, line in enumerate(fh, 1):  # streamed: the file may be large
                if not line.strip():
                    continue
                try:
                    self._index(json.loads(line))
                except (ValueError, KeyError, TypeError) as e:
                    raise EvalError(f"{self.path}, line {lineno}: not a valid record ({e})") from None

    def _index(self, rec: dict) -> None:
        if rec["type"] == "sample":
            # The response text stays on disk only; memory keeps what scoring needs.
            slim = {k: v for k, v in rec.items() if k != "response"}
            self.samples[(rec["dataset"], rec["task_id"], rec["kind"], int(rec["index"]))] = slim
        elif rec["type"] == "exec":
            self.execs[(rec["dataset"], rec["task_id"])] = rec
        else:
            raise KeyError(f"unknown type {rec['type']!r}")

    def append(self, records: Sequence[dict]) -> None:
        """Writes ``records`` and makes them durable (flush + fsync) before returning."""
        if not records:
            return
        self._fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        for r in records:
            self._index(r)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_run_file(out_dir: pathlib.Path, fingerprint: dict) -> None:
    """Writes run.json, or checks that a resumed run used the same settings."""
    path = out_dir / RUN_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError as e:
            raise EvalError(f"{path}: unreadable ({e}); use a new out_dir") from None
        diff = [k for k in sorted(set(old) | set(fingerprint)) if old.get(k) != fingerprint.get(k)]
        if diff:
            raise EvalError(f"{out_dir} holds a run with other settings ({', '.join(diff)} differ: "
                            f"was {json.dumps({k: old.get(k) for k in diff})}); "
                            "use a new out_dir or the same settings to resume")
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------
# models: prompts and generation
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Want:
    """Missing samples of one (problem, kind): the prompt and the sample indices to draw."""

    dataset: str
    problem: Problem
    kind: str
    prompt: Any  # chat messages (api) or a prompt string (vllm/hf)
    indices: list[int]


Generated = tuple[int, int, str, dict]  # (want index, sample index, text, extra fields)


class _ApiRole:
    """A hosted model: chat messages, one request per sample, results as they finish."""

    def __init__(self, spec: ModelSpec, prompt_cfg: PromptConfig, flush_every: int = 16) -> None:
        assert spec.api is not None
        self.spec = spec
        self.flush_every = flush_every
        self.engine = ApiEngine(spec.api, seed=0)
        self.builder = PromptBuilder(dataclasses.replace(prompt_cfg, mode="raw"))

    def prompt(self, problem: Problem, kind: str, show_example: bool) -> list[dict[str, str]]:
        text = (self.builder.code_instruction(problem) if kind == "code"
                else self.builder.test_instruction(problem, show_example))
        system = self.builder.config.system_prompt
        return ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": text}]

    def run(self, wants: Sequence[_Want], sampling: Sampling,
            flush_s: float = 2.0) -> Iterator[list[Generated]]:
        """Batches of finished samples: ``flush_every`` of them, or whatever finished within
        ``flush_s`` seconds of the previous batch."""
        flat = [(w, i) for w in range(len(wants)) for i in wants[w].indices]
        reqs = [ChatRequest(messages=tuple(wants[w].prompt), temperature=sampling.temperature,
                            top_p=sampling.top_p, top_k=sampling.top_k,
                            max_tokens=sampling.max_tokens,
                            seed=sampling.seed + i if sampling.seed >= 0 else None)
                for w, i in flat]  # no stop strings: chat replies end on their own
        batch: list[Generated] = []
        last = time.monotonic()
        try:
            for j, c in self.engine.stream(reqs):
                w, i = flat[j]
                batch.append((w, i, c.text, {"finish_reason": c.finish_reason,
                                             "response_tokens": c.completion_tokens,
                                             "attempts": c.attempts}))
                if len(batch) >= self.flush_every or time.monotonic() - last >= flush_s:
                    out, batch, last = batch, [], time.monotonic()
                    yield out
        except GeneratorExit:
            raise
        except BaseException:  # an API error or Ctrl-C: what finished is still kept
            if batch:
                yield batch
            raise
        if batch:
            yield batch

    def close(self) -> None:
        self.engine.close()


class _LocalRole:
    """A local model through rollout.engines (vllm or hf): rendered prompt strings, batched."""

    def __init__(self, spec: ModelSpec, prompt_cfg: PromptConfig, batch: int,
                 engine_factory: Callable[[ModelSpec], Any], engine: Any = None) -> None:
        self.spec = spec
        self.batch = batch
        self.owns_engine = engine is None  # a running engine lent by the caller stays open
        self.engine = engine_factory(spec) if engine is None else engine
        tokenizer = getattr(self.engine, "tokenizer", None)
        self.builder = PromptBuilder(prompt_cfg, tokenizer=tokenizer)

    def prompt(self, problem: Problem, kind: str, show_example: bool) -> str:
        return (self.builder.code_prompt(problem) if kind == "code"
                else self.builder.test_prompt(problem, show_example))

    def run(self, wants: Sequence[_Want], sampling: Sampling) -> Iterator[list[Generated]]:
        """One batch per engine call (``batch`` prompts with the same number of samples)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for w, want in enumerate(wants):
            groups.setdefault((len(want.indices), want.indices[0]), []).append(w)
        for (n, first), ws in groups.items():
            for start in range(0, len(ws), self.batch):
                chunk = ws[start:start + self.batch]
                # Seeds differ per prompt and per first sample index, so the samples drawn
                # when k grows are new draws, not repeats of the ones already on disk.
                seed = None if sampling.seed < 0 else sampling.seed + 100_003 * first + start
                try:
                    outs = _engine_generate(self.engine, [wants[w].prompt for w in chunk], n,
                                            sampling, seed)
                except Exception as e:
                    if "does not use offset" in str(e):
                        raise EvalError("vLLM's CPU build cannot seed requests whose prompts are "
                                        "prefilled in chunks; use --config.sampling.seed=-1 "
                                        f"(unseeded) on CPU ({e})") from None
                    raise
                batch = []
                for w, samples in zip(chunk, outs):
                    for i, s in zip(wants[w].indices, samples):
                        text, extra = _sample_fields(s)
                        batch.append((w, i, text, extra))
                yield batch

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if self.owns_engine and callable(close):
            close()


def _engine_generate(engine: Any, prompts: list[str], n: int, sampling: Sampling,
                     seed: int | None) -> list[list[Any]]:
    """Calls the engines interface (rollout.engines.base): prompt i of the call gets seed
    ``seed + i`` (None: unseeded); no log-probs (evaluation does not need them)."""
    from rollout.engines.base import SamplingConfig

    params = SamplingConfig(temperature=sampling.temperature, top_p=sampling.top_p,
                            top_k=max(0, sampling.top_k), max_tokens=sampling.max_tokens,
                            stop=tuple(sampling.stop), seed=seed, logprobs=False)
    return engine.generate(prompts, n, params)


def _sample_fields(s: Any) -> tuple[str, dict]:
    """Text and bookkeeping of one engine sample (object with .text, or a str)."""
    if isinstance(s, str):
        return s, {}
    text = s.text
    extra: dict[str, Any] = {}
    reason = getattr(s, "finish_reason", None)
    if reason is not None:
        extra["finish_reason"] = str(reason)
    ids = getattr(s, "token_ids", None)
    if ids is not None:
        extra["response_tokens"] = len(ids)
    elif getattr(s, "response_tokens", None) is not None:
        extra["response_tokens"] = int(s.response_tokens)
    return text, extra


def default_engine_factory(spec: ModelSpec) -> Any:
    """Builds a vllm or hf engine with rollout.engines.make_engine (torch/vllm load only now).

    ``spec.options`` are EngineConfig fields (tensor_parallel_size, gpu_memory_utilization,
    dtype, max_model_len (0: the model's own), enforce_eager, in_process, kv_cache_gb (0: the
    default), device) plus ``data_parallel_size``: with more than one, that many engines run
    in their own processes (see :class:`DataParallelEngine`). Unknown fields are an error.
    """
    opts = dict(spec.options)
    replicas = int(opts.pop("data_parallel_size", 1) or 1)
    for name in ("max_model_len", "kv_cache_gb", "distributed_executor_backend", "in_process"):
        if name in opts and not opts[name]:  # 0 / "" / False in the config: the default
            opts.pop(name)
    opts.update(backend=spec.engine, model=ensure_hf_model(spec.model, base_model=spec.base_model),
                tokenizer=spec.tokenizer or None)
    try:
        from rollout.engines import EngineConfig, make_engine

        EngineConfig.from_mapping(opts)  # validate here, before any process starts
        if replicas > 1:
            return DataParallelEngine(opts, replicas)
        return make_engine(opts)
    except ValueError as e:
        raise EvalError(f"engine_options: {e}") from None


@dataclasses.dataclass
class _Reply:
    """A sample as it crosses the process boundary of :class:`DataParallelEngine`."""

    text: str
    finish_reason: str | None
    response_tokens: int


def _dp_worker(conn: Any, opts: dict, devices: str | None) -> None:
    """One data-parallel replica: builds its engine on its GPU group and serves generate calls."""
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    try:
        from rollout.engines import make_engine

        engine = make_engine(opts)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, one line
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    try:
        while (msg := conn.recv()) is not None:
            prompts, n, params = msg
            try:
                out = engine.generate(prompts, n, params)
                conn.send(("ok", [[_Reply(s.text, s.finish_reason, len(s.token_ids)) for s in row]
                                  for row in out]))
            except Exception as e:  # noqa: BLE001
                conn.send(("error", f"{type(e).__name__}: {e}"))
    except EOFError:
        pass  # the parent went away
    finally:
        engine.close()


class DataParallelEngine:
    """``replicas`` engines, each in its own process on its own group of
    ``tensor_parallel_size`` GPUs (tensor parallel within a group), sharing every generate
    call: the prompts are split into contiguous shards, one per replica, run concurrently.
    Prompt ``i`` of a call keeps seed ``seed + i`` whichever replica serves it."""

    def __init__(self, opts: Mapping[str, Any], replicas: int, start_timeout_s: float = 1800.0):
        import multiprocessing as mp

        tp = int(opts.get("tensor_parallel_size", 1) or 1)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(replicas * tp)]
        if len(ids) < replicas * tp:
            raise EvalError(f"engine_options.data_parallel_size: {replicas} replicas x "
                            f"{tp} GPUs need {replicas * tp} GPUs, CUDA_VISIBLE_DEVICES has {len(ids)}")
        ctx = mp.get_context("spawn")
        self.replicas = replicas
        self.procs, self.conns = [], []
        for r in range(replicas):
            parent, child = ctx.Pipe()
            devices = ",".join(ids[r * tp:(r + 1) * tp])
            proc = ctx.Process(target=_dp_worker, args=(child, dict(opts), devices),
                               name=f"cure-eval-engine-{r}", daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
        try:
            for r in range(replicas):
                self._recv(r, start_timeout_s)
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(opts.get("tokenizer") or opts["model"])
        except BaseException:
            self.close()
            raise

    def _recv(self, r: int, timeout_s: float = float("inf")) -> Any:
        conn, proc = self.conns[r], self.procs[r]
        waited = 0.0
        while not conn.poll(1.0):
            waited += 1.0
            if not proc.is_alive():
                raise EvalError(f"data-parallel engine replica {r} died (exit code {proc.exitcode})")
            if waited > timeout_s:
                raise EvalError(f"data-parallel engine replica {r} did not answer in {timeout_s:g} s")
        try:
            status, payload = conn.recv()
        except EOFError:
            raise EvalError(f"data-parallel engine replica {r} died (exit code {proc.exitcode})") from None
        if status == "error":
            raise EvalError(f"data-parallel engine replica {r}: {payload}")
        return payload

    def generate(self, prompts: Sequence[Any], n: int, sampling: Any) -> list[list[_Reply]]:
        bounds = np.linspace(0, len(prompts), self.replicas + 1).astype(int)
        used = []
        for r in range(self.replicas):
            lo, hi = int(bounds[r]), int(bounds[r + 1])
            if lo == hi:
                continue
            params = sampling if sampling.seed is None else dataclasses.replace(
                sampling, seed=sampling.seed + lo)
            self.conns[r].send((list(prompts[lo:hi]), n, params))
            used.append(r)
        out: list[list[_Reply]] = []
        for r in used:
            out.extend(self._recv(r))
        return out

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self.conns:
            conn.close()
        self.conns, self.procs = [], []


def _is_hf_dir(path: pathlib.Path) -> bool:
    return (path / "config.json").exists() and (
        any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin")))


def _is_orbax_checkpoint(path: pathlib.Path) -> bool:
    """cure-train / cure-convert layouts: params-only (``params/``), a run's checkpoints
    directory (numbered steps), a run workdir (``checkpoints/``) or one step directory."""
    if _is_hf_dir(path):
        return False
    markers = ("params", "state", "checkpoints", "_CHECKPOINT_METADATA", "_METADATA")
    return any((path / m).exists() for m in markers) or any(
        p.is_dir() and p.name.isdigit() for p in path.iterdir())


def _convert_command() -> str | None:
    exe = shutil.which("cure-convert")
    if exe is None:  # not on PATH: the console script installed next to this interpreter
        sibling = pathlib.Path(sys.executable).parent / "cure-convert"
        exe = str(sibling) if sibling.exists() else None
    return exe


def ensure_hf_model(model: str, cache_dir: str | os.PathLike[str] | None = None, *,
                    base_model: str = "") -> str:
    """A HF model directory for ``model``: itself when it is one; an Orbax checkpoint from
    training is converted once with ``cure-convert orbax-to-hf`` (a subprocess, so no jax is
    imported here) into ``cache_dir`` (default ``<checkpoint>.hf``). ``base_model``: the HF
    directory the model was trained from (its config and tokenizer), needed for training
    checkpoints that carry no config.json."""
    path = pathlib.Path(model)
    if not path.exists():
        raise EvalError(f"model: {model} does not exist")
    if not path.is_dir() or not _is_orbax_checkpoint(path):
        return str(path)
    out = pathlib.Path(cache_dir) if cache_dir else path.with_name(path.name + ".hf")
    if _is_hf_dir(out):
        return str(out)
    exe = _convert_command()
    if exe is None:
        raise EvalError(f"model: {model} is an Orbax checkpoint and converting it needs the "
                        "cure-convert command, which is not installed (pip install -e .)")
    cmd = [exe, "orbax-to-hf", f"--ckpt_dir={path}", f"--hf_dir={out}"]
    if base_model:
        cmd.append(f"--base_hf_dir={base_model}")
    log.info("converting Orbax checkpoint %s to a HF directory: %s", model, " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [x for x in (done.stderr + "\n" + done.stdout).strip().splitlines() if x.strip()]
        raise EvalError(f"model: converting Orbax checkpoint {model} with cure-convert failed "
                        f"(exit {done.returncode}): {lines[-1] if lines else 'no output'}")
    return str(out)


# --------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------


def _sample_record(want: _Want, index: int, text: str, extra: dict, model: str) -> dict:
    rec = {"type": "sample", "dataset": want.dataset, "task_id": want.problem.task_id,
           "kind": want.kind, "index": index, "model": model, "response": text}
    rec.update(extra)
    if want.kind == "code":
        p = parse_code(text)
        rec.update(code=p.code, parse_error=p.reason)
    else:
        t = parse_test(text)
        rec.update(test_input=t.input, test_output=t.output, parse_error=t.reason)
    return rec


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="it", disable=not enabled, dynamic_ncols=True)


def _generate(role: Any, wants: list[_Want], sampling: Sampling, slog: SampleLog,
              desc: str, show: bool) -> None:
    """Draws every wanted sample; each batch the role yields is appended and fsynced at once
    (a failure or Ctrl-C keeps every batch that finished)."""
    total = sum(len(w.indices) for w in wants)
    if not total:
        return
    with _progress(total, desc, show) as bar:
        for batch in role.run(wants, sampling):
            slog.append([_sample_record(wants[w], i, text, extra, role.spec.label)
                         for w, i, text, extra in batch])
            bar.update(len(batch))


def _gt_tests(problem: Problem, max_gt: int) -> list[tuple[str, str]]:
    tests = list(zip(problem.test_input, problem.test_output))
    return tests[:max_gt] if max_gt > 0 else tests


def _verdict_rows(verdicts: np.ndarray, rows: list[int], cols: list[int], n: int, m: int) -> list[str]:
    """Full [n, m] verdict strings: the digit of ``sandbox.Verdict`` for executed cells (0 is
    OK), ``-`` for cells never run (an unparsed code or test)."""
    grid = [[_NOT_RUN] * m for _ in range(n)]
    for a, r in enumerate(rows):
        for b, c in enumerate(cols):
            grid[r][c] = str(int(verdicts[a, b]))
    return ["".join(row) for row in grid]


def _execute(jobs: list[tuple[str, Problem]], slog: SampleLog, settings: EvalSettings,
             sandbox_factory: Callable[[], Any], show: bool) -> None:
    """Runs codes x (generated + ground-truth tests) for each job and appends exec records."""
    if not jobs:
        return
    from sandbox import TestCase, Verdict

    with sandbox_factory() as sb, _progress(len(jobs), "execute", show) as bar:
        for start in range(0, len(jobs), settings.exec_batch):
            chunk = jobs[start:start + settings.exec_batch]
            groups, layout = [], []
            for ds, p in chunk:
                codes = [slog.samples[(ds, p.task_id, "code", i)] for i in range(settings.k_code)]
                tests = [slog.samples[(ds, p.task_id, "test", i)] for i in range(settings.n_tests)]
                rows = [i for i, c in enumerate(codes) if c["code"] is not None]
                cols = [k for k, t in enumerate(tests) if t["test_input"] is not None]
                gt = _gt_tests(p, settings.max_gt_tests)
                cases = [TestCase(tests[k]["test_input"], tests[k]["test_output"]) for k in cols]
                cases += [TestCase(i, o) for i, o in gt]
                groups.append(([codes[r]["code"] for r in rows], cases, p.test_time_limit))
                layout.append((ds, p, rows, cols, len(gt)))
            live = [g for g, (progs, cases, _) in enumerate(groups) if progs and cases]
            ran = sb.run_matrices([groups[g] for g in live]) if live else []
            results: list[Any] = [None] * len(groups)
            for g, r in zip(live, ran):
                results[g] = r
            records = []
            for (ds, p, rows, cols, n_gt), res in zip(layout, results):
                shape = (len(rows), len(cols) + n_gt)
                v = np.asarray(res.verdicts).reshape(shape) if res is not None else \
                    np.full(shape, int(Verdict.SANDBOX_ERROR), dtype=object)  # (always empty)
                errors = int(sum(int(x) == int(Verdict.SANDBOX_ERROR) for x in v.flat))
                if errors:
                    log.warning("%s/%s: %d executions failed inside the sandbox (SANDBOX_ERROR, "
                                "counted as not passing)", ds, p.task_id, errors)
                records.append({
                    "type": "exec", "dataset": ds, "task_id": p.task_id,
                    "n_codes": settings.k_code, "n_tests": settings.n_tests, "n_gt": n_gt,
                    "gen": _verdict_rows(v[:, :len(cols)], rows, cols, settings.k_code, settings.n_tests),
                    "gt": _verdict_rows(v[:, len(cols):], rows, list(range(n_gt)), settings.k_code, n_gt),
                    "sandbox_errors": errors,
                })
            slog.append(records)
            bar.update(len(chunk))


def _passed(rows: list[str], n: int, m: int) -> np.ndarray:
    out = np.zeros((n, m), dtype=bool)
    for r, row in enumerate(rows):
        out[r] = [ch == "0" for ch in row]
    return out


def _exec_is_current(rec: dict | None, settings: EvalSettings, problem: Problem) -> bool:
    return (rec is not None and rec["n_codes"] == settings.k_code
            and rec["n_tests"] == settings.n_tests
            and rec["n_gt"] == len(_gt_tests(problem, settings.max_gt_tests)))


def problem_table(slog: SampleLog, ds: str, p: Problem, settings: EvalSettings) -> dict:
    """Per-problem metrics (rollout.metrics.evaluate_table) from its exec and sample records."""
    rec = slog.execs[(ds, p.task_id)]
    n, m = settings.k_code, settings.n_tests
    code_parsed = np.array([slog.samples[(ds, p.task_id, "code", i)]["code"] is not None
                            for i in range(n)])
    test_parsed = np.array([slog.samples[(ds, p.task_id, "test", k)]["test_input"] is not None
                            for k in range(m)], dtype=bool)
    return cure_metrics.evaluate_table(
        _passed(rec["gen"], n, m), _passed(rec["gt"], n, rec["n_gt"]), list(settings.bon),
        code_parsed=code_parsed, test_parsed=test_parsed)


def summary_scalars(metrics: Mapping[str, dict], prefix: str = "eval") -> dict[str, float]:
    """Flat ``{"<prefix>/<dataset>/<metric>": value}`` for TensorBoard (the training driver's
    periodic evaluation); BoN entries become ``.../bon_NxM``; undefined (None) rates are left out."""
    out: dict[str, float] = {}
    for ds, r in metrics.items():
        for k, v in r.items():
            if k == "bon":
                out.update({f"{prefix}/{ds}/bon_{nm}": float(a) for nm, a in v.items()
                            if a is not None})
            elif v is not None:
                out[f"{prefix}/{ds}/{k}"] = float(v)
    return out


def write_summaries(metrics: Mapping[str, dict], logdir: str | os.PathLike[str], step: int,
                    prefix: str = "eval") -> int:
    """Appends :func:`summary_scalars` at ``step`` to TensorBoard event files in ``logdir``
    (tensorboardX: no TensorFlow needed). Returns the number of scalars written."""
    from tensorboardX import SummaryWriter

    scalars = summary_scalars(metrics, prefix)
    writer = SummaryWriter(str(logdir))
    try:
        for tag, value in sorted(scalars.items()):
            writer.add_scalar(tag, value, global_step=step)
    finally:
        writer.close()
    return len(scalars)


def dataset_metrics(tables: Iterable[dict]) -> dict:
    """The metrics.json entry of one dataset from its per-problem tables."""
    agg = cure_metrics.aggregate(tables)
    return {
        "n_problems": agg["problems"],
        "code_accuracy": agg["code_accuracy"],
        "unit_test_accuracy": agg["unit_test_accuracy"],
        "bon": agg["bon"],
        "p_01": agg["p_01"],
        "p_00": agg["p_00"],
        "code_parse_rate": agg["code_parse_rate"],
        "test_parse_rate": agg["test_parse_rate"],
    }


def evaluate(
    datasets: Mapping[str, Sequence[Problem]],
    coder: ModelSpec,
    out_dir: str | os.PathLike[str],
    *,
    tester: ModelSpec | None = None,
    settings: EvalSettings = EvalSettings(),
    sampling: Sampling = Sampling(),
    prompt_config: PromptConfig = EVAL_PROMPTS,
    sandbox_factory: Callable[[], Any] | None = None,
    engine_factory: Callable[[ModelSpec], Any] = default_engine_factory,
    engine: Any = None,
    progress: bool = True,
    reports: bool = True,
) -> dict[str, dict]:
    """Runs (or resumes) the evaluation and returns {dataset: metrics}; see the module doc.

    ``engine``: a running local engine (engines interface, with a ``tokenizer``) to use for
    ``coder`` (and for the tester when it is the same spec) instead of building one; it is not
    closed. The training driver evaluates the weights it holds this way, with ``reports=False``
    and :func:`summary_scalars` for TensorBoard.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tester = tester or coder
    show_example = prompt_config.show_example_in_test_prompt
    fingerprint = {
        "coder": coder.public(),
        "tester": tester.public() if not settings.single_eval else None,
        "sampling": {k: (list(v) if isinstance(v, tuple) else v)
                     for k, v in dataclasses.asdict(sampling).items()},
        "prompts": {k: (str(v) if v is not None else None)
                    for k, v in dataclasses.asdict(prompt_config).items()},
        "max_gt_tests": settings.max_gt_tests,
    }
    _check_run_file(out, fingerprint)
    if sandbox_factory is None:
        from sandbox import Limits, Sandbox

        sandbox_factory = lambda: Sandbox(limits=Limits())

    with SampleLog(out / SAMPLES_FILE) as slog:
        built: dict[str, Any] = {}  # one engine per distinct model, shared by both roles
        try:
            plan = [("code", coder, settings.k_code)]
            if not settings.single_eval:
                plan.append(("test", tester, settings.k_case))
            for kind, spec, k in plan:
                missing = [(ds, p, idx) for ds, problems in datasets.items() for p in problems
                           if (idx := [i for i in range(k)
                                       if (ds, p.task_id, kind, i) not in slog.samples])]
                if not missing:
                    continue  # nothing to draw: the engine is not even started
                key = json.dumps([spec.public(), spec.api and spec.api.url], sort_keys=True)
                if key not in built:
                    lent = engine if engine is not None and spec == coder else None
                    if spec.engine == "api":
                        built[key] = _ApiRole(spec, prompt_config, settings.gen_batch)
                    else:
                        if lent is None:  # an Orbax checkpoint becomes a HF dir in out_dir
                            spec = dataclasses.replace(spec, model=ensure_hf_model(
                                spec.model, out / "converted" / pathlib.Path(spec.model).name,
                                base_model=spec.base_model))
                        built[key] = _LocalRole(spec, prompt_config, settings.gen_batch,
                                                engine_factory, engine=lent)
                role = built[key]
                wants = [_Want(ds, p, kind, role.prompt(p, kind, show_example), idx)
                         for ds, p, idx in missing]
                _generate(role, wants, sampling, slog, f"generate {kind}s ({spec.label})", progress)
        finally:
            for role in built.values():
                role.close()

        jobs = [(ds, p) for ds, problems in datasets.items() for p in problems
                if not _exec_is_current(slog.execs.get((ds, p.task_id)), settings, p)]
        _execute(jobs, slog, settings, sandbox_factory, progress)

        result = {ds: dataset_metrics(problem_table(slog, ds, p, settings) for p in problems)
                  for ds, problems in datasets.items()}
    if reports:
        model = coder.label if tester is coder or settings.single_eval else \
            f"{coder.label} + {tester.label} (tester)"
        write_reports(result, out, model=model, bon=settings.bon, single_eval=settings.single_eval)
    return result
