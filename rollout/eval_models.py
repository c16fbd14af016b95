"""The models of a ``cure-eval`` run: who plays coder and tester, and how they are sampled.

:class:`ModelSpec` names a model and its engine (``vllm`` / ``hf`` on a HF directory or an
Orbax checkpoint, or ``api`` for an OpenAI-compatible endpoint). A role wraps the engine a
spec needs and draws the missing samples of the pipeline: :class:`ApiRole` sends chat
messages, one request per sample, yielding results as they finish; :class:`LocalRole` renders
prompt strings and calls the engines interface in batches, with seeds that make samples drawn
when ``k`` grows new draws rather than repeats. An Orbax checkpoint is turned into a HF
directory by :func:`ensure_hf_model`, which runs ``cure-convert`` as a subprocess (rollout never
imports jax). torch/vLLM load only when a local engine is built.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Self

from rollout.contract import checkpoint_layout
from rollout.engines.api_engine import ApiConfig, ApiEngine, ChatRequest
from rollout.engines.base import SamplingConfig
from rollout.engines.data_parallel import DataParallelEngine, DataParallelError
from rollout.eval_settings import EvalError
from rollout.problems import Problem
from rollout.prompts import PromptBuilder, PromptConfig

__all__ = [
    "ENGINES",
    "ApiRole",
    "Generated",
    "LocalRole",
    "ModelSpec",
    "Roles",
    "Want",
    "default_engine_factory",
    "ensure_hf_model",
]

log = logging.getLogger(__name__)

ENGINES = ("vllm", "hf", "api")


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


@dataclasses.dataclass
class Want:
    """Missing samples of one (problem, kind): the prompt and the sample indices to draw."""

    dataset: str
    problem: Problem
    kind: str
    prompt: Any  # chat messages (api) or a prompt string (vllm/hf)
    indices: list[int]


Generated = tuple[int, int, str, dict]  # (want index, sample index, text, extra fields)


class ApiRole:
    """A hosted model: one request per sample, results as they finish. Chat endpoints get chat
    messages; the completions endpoint (base models) gets the rendered prompt string."""

    def __init__(self, spec: ModelSpec, prompt_cfg: PromptConfig, flush_every: int = 16) -> None:
        assert spec.api is not None
        self.spec = spec
        self.flush_every = flush_every
        self.engine = ApiEngine(spec.api, seed=0)
        self.completions = spec.api.endpoint == "completions"
        # Chat messages: the instruction is the user turn (mode "reference": the reference's
        # whole prompt, as the reference sends it; rollout.prompts). Completions: the prompt
        # string of mode "raw" or "reference" (no chat template: the server's model has none).
        mode = "reference" if prompt_cfg.mode == "reference" else "raw"
        self.builder = PromptBuilder(dataclasses.replace(prompt_cfg, mode=mode))

    def prompt(self, problem: Problem, kind: str, show_example: bool) -> list[dict[str, str]] | str:
        if self.completions:
            return (self.builder.code_prompt(problem, evaluation=True) if kind == "code"
                    else self.builder.test_prompt(problem, show_example, evaluation=True))
        text = (self.builder.code_instruction(problem, evaluation=True) if kind == "code"
                else self.builder.test_instruction(problem, show_example, evaluation=True))
        return self.builder.messages(text)

    def repair_prompt(self, problem: Problem, code: str,
                      failures: list[dict[str, str]]) -> list[dict[str, str]] | str:
        """A refinement round's repair request (rollout.refine), as :meth:`prompt` sends it."""
        if self.completions:
            return self.builder.repair_prompt(problem, code, failures)
        return self.builder.messages(self.builder.repair_instruction(problem, code, failures))

    def run(self, wants: Sequence[Want], sampling: SamplingConfig,
            flush_s: float = 2.0) -> Iterator[list[Generated]]:
        """Batches of finished samples: ``flush_every`` of them, or whatever finished within
        ``flush_s`` seconds of the previous batch."""
        flat = [(w, i) for w in range(len(wants)) for i in wants[w].indices]
        def request(prompt: Any, i: int) -> ChatRequest:
            # completions: the prompt string and the stop strings; chat: the messages only
            # (chat replies end on their own)
            what = ({"messages": (), "prompt": prompt, "stop": sampling.stop} if self.completions
                    else {"messages": tuple(prompt)})
            return ChatRequest(**what, temperature=sampling.temperature, top_p=sampling.top_p,
                               top_k=sampling.top_k, max_tokens=sampling.max_tokens,
                               seed=sampling.request_seed(i))
        reqs = [request(wants[w].prompt, i) for w, i in flat]
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


class LocalRole:
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
        return (self.builder.code_prompt(problem, evaluation=True) if kind == "code"
                else self.builder.test_prompt(problem, show_example, evaluation=True))

    def repair_prompt(self, problem: Problem, code: str, failures: list[dict[str, str]]) -> str:
        """A refinement round's repair request (rollout.refine)."""
        return self.builder.repair_prompt(problem, code, failures)

    def run(self, wants: Sequence[Want], sampling: SamplingConfig) -> Iterator[list[Generated]]:
        """One batch per engine call (``batch`` prompts with the same number of samples)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for w, want in enumerate(wants):
            groups.setdefault((len(want.indices), want.indices[0]), []).append(w)
        for (n, first), ws in groups.items():
            for start in range(0, len(ws), self.batch):
                chunk = ws[start:start + self.batch]
                # Seeds differ per prompt and per first sample index, so the samples drawn
                # when k grows are new draws, not repeats of the ones already on disk.
                seed = None if sampling.seed is None else sampling.seed + 100_003 * first + start
                try:
                    outs = _engine_generate(self.engine, [wants[w].prompt for w in chunk], n,
                                            sampling, seed)
                except Exception as e:
                    if "does not use offset" in str(e):
                        raise EvalError("vLLM's CPU build cannot seed requests whose prompts are "
                                        "prefilled in chunks; use --config.sampling.seed=-1 "
                                        f"(unseeded) on CPU ({e})") from None
                    if isinstance(e, DataParallelError):
                        raise EvalError(str(e)) from None
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


class Roles:
    """The roles of a run, one per distinct model (a model that codes and tests is built once),
    each built when first asked for and closed together. ``engine``: a running local engine
    lent for ``lent_to`` (it stays open); an Orbax checkpoint becomes a HF directory under
    ``out_dir/converted``."""

    def __init__(self, out_dir: pathlib.Path, prompt_cfg: PromptConfig, gen_batch: int,
                 engine_factory: Callable[[ModelSpec], Any], engine: Any = None,
                 lent_to: ModelSpec | None = None) -> None:
        self.out_dir = out_dir
        self.prompt_cfg = prompt_cfg
        self.gen_batch = gen_batch
        self.engine_factory = engine_factory
        self.engine = engine
        self.lent_to = lent_to
        self.built: dict[str, ApiRole | LocalRole] = {}

    def get(self, spec: ModelSpec) -> ApiRole | LocalRole:
        key = json.dumps([spec.public(), spec.api and spec.api.url], sort_keys=True)
        if key not in self.built:
            lent = self.engine if self.engine is not None and spec == self.lent_to else None
            if spec.engine == "api":
                self.built[key] = ApiRole(spec, self.prompt_cfg, self.gen_batch)
            else:
                if lent is None:
                    spec = dataclasses.replace(spec, model=ensure_hf_model(
                        spec.model, self.out_dir / "converted" / pathlib.Path(spec.model).name,
                        base_model=spec.base_model))
                self.built[key] = LocalRole(spec, self.prompt_cfg, self.gen_batch,
                                            self.engine_factory, engine=lent)
        return self.built[key]

    def close(self) -> None:
        """Closes every role built so far (a later :meth:`get` builds anew)."""
        while self.built:
            self.built.popitem()[1].close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _engine_generate(engine: Any, prompts: list[str], n: int, sampling: SamplingConfig,
                     seed: int | None) -> list[list[Any]]:
    """Calls the engines interface (rollout.engines.base): prompt i of the call gets seed
    ``seed + i`` (None: unseeded); no log-probs (evaluation does not need them)."""
    params = dataclasses.replace(sampling, seed=seed, logprobs=False)
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
    in their own processes (see :class:`rollout.engines.data_parallel.DataParallelEngine`).
    Unknown fields are an error.
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
    except DataParallelError as e:
        raise EvalError(str(e)) from None
    except ValueError as e:
        raise EvalError(f"engine_options: {e}") from None


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
    if not path.is_dir() or not checkpoint_layout.is_orbax_checkpoint(path):
        return str(path)
    out = pathlib.Path(cache_dir) if cache_dir else path.with_name(path.name + ".hf")
    if checkpoint_layout.is_hf_dir(out):
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
