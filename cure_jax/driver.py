"""The CURE training loop of cure-train: supervise the rollout server, feed the learner, sync weights.

One step (synchronous mode, on-policy)::

    export params v_k (HF names/layout) -> WeightChannel -> server loads v_k into its engine
    server: rollout(step k)  -> experience rows + statistics -> RolloutBuffer
    learner.update(batch)    -> params v_{k+1}
    TensorBoard summaries, checkpoint (every train.checkpoint_every), evaluation (every
    train.eval_every) on held-out problems, one console line

Asynchronous mode keeps ``rollout.max_staleness`` rollouts in flight: the rollout of step k+1
runs on the server (with weights v_k) while the learner trains on step k, and the next weights
are loaded after it. Every row carries the version that produced it; a batch older than
``max_staleness`` versions is an error, and the learner's truncated importance sampling
(``learner.tis_cap``) corrects the remaining mismatch.

Supervision: the server is a child process in its own session. The driver waits on its replies
with a deadline and watches its pid and heartbeats, so a crash is an error naming the server's
exit status and last log lines within a second, and a frozen server one within
``rollout.heartbeat_timeout_s``. With ``rollout.restarts > 0`` a dead server is restarted, given
the current weights and asked again for the rollouts in flight. Shutting down kills the server's
whole process tree; the shared-memory segments are owned (and unlinked) by the driver.

Resume: the checkpoint's driver state holds the data cursor (next step) and the policy version.
Problem ids of step s are a pure function of (seed, s), and sampling seeds of (seed, s), so a
resumed synchronous run repeats the uninterrupted one.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import pathlib
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any, Self

import numpy as np

from rollout import shm

log = logging.getLogger(__name__)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MODES = ("sync", "async")
ENGINES = ("vllm", "hf")
WEIGHT_DTYPES = ("float32", "bfloat16", "float16")
# Keys of config.rollout the rollout server's RolloutConfig takes.
SERVER_ROLLOUT_KEYS = ("k_code", "k_case", "max_gt_tests", "temperature", "top_p", "top_k",
                       "max_tokens", "max_len", "seed", "show_example")


class RolloutServerError(RuntimeError):
    """The rollout server died, froze, or failed a command (one-line message)."""


# ------------------------------------------------------------------------------ settings
@dataclasses.dataclass(frozen=True)
class CureSettings:
    """The driver's view of config.rollout / data / eval / sandbox / cure / train."""

    mode: str = "sync"
    engine: str = "vllm"
    problems_per_step: int = 4
    max_staleness: int = 1
    weights_dtype: str = "float32"
    drop_zero_signal: bool = True
    model_path: str = ""
    engine_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    prompts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    server_rollout: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    rewards: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sandbox: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    eval: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    data_train: str = "embedded:train"
    data_eval: str = "embedded:eval"
    eval_max_problems: int = 0
    steps: int = 1
    eval_every: int = 0
    startup_timeout_s: float = 600.0
    step_timeout_s: float = 3600.0
    heartbeat_timeout_s: float = 30.0
    heartbeat_s: float = 0.5
    restarts: int = 0
    devices: str = ""


def _section(config: Any, name: str) -> dict[str, Any]:
    sec = config.get(name) if hasattr(config, "get") else None
    if sec is None:
        return {}
    return sec.to_dict() if hasattr(sec, "to_dict") else dict(sec)


def cure_settings(config: Any) -> CureSettings:
    """Validate the CURE-loop fields of ``config``; a bad one is a ConfigError naming it."""
    from cure_jax.config import ConfigError

    def fail(path: str, msg: str) -> None:
        raise ConfigError(f"{path}: {msg}")

    r = _section(config, "rollout")
    known_driver = {"source", "mode", "engine", "problems_per_step", "max_staleness",
                    "weights_dtype", "drop_zero_signal", "model_path", "engine_options",
                    "prompts", "startup_timeout_s", "step_timeout_s", "heartbeat_timeout_s",
                    "heartbeat_s", "restarts", "synthetic", "devices"}
    for k in r:
        if k not in known_driver and k not in SERVER_ROLLOUT_KEYS:
            fail(f"config.rollout.{k}", "unknown field (known: "
                 f"{', '.join(sorted(known_driver | set(SERVER_ROLLOUT_KEYS)))})")
    mode = r.get("mode", "sync")
    if mode not in MODES:
        fail("config.rollout.mode", f"must be one of {MODES} (got {mode!r})")
    engine = r.get("engine", "vllm")
    if engine not in ENGINES:
        fail("config.rollout.engine", f"must be one of {ENGINES} (got {engine!r})")
    wd = r.get("weights_dtype", "float32")
    if wd not in WEIGHT_DTYPES:
        fail("config.rollout.weights_dtype", f"must be one of {WEIGHT_DTYPES} (got {wd!r})")
    for k, lo in (("problems_per_step", 1), ("max_staleness", 1), ("restarts", 0)):
        v = r.get(k, getattr(CureSettings, k))
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            fail(f"config.rollout.{k}", f"must be an integer >= {lo} (got {v!r})")
    for k in ("startup_timeout_s", "step_timeout_s", "heartbeat_timeout_s", "heartbeat_s"):
        v = r.get(k, getattr(CureSettings, k))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            fail(f"config.rollout.{k}", f"must be a number > 0 (got {v!r})")
    server_rollout = {k: r[k] for k in SERVER_ROLLOUT_KEYS if k in r}
    # Validate the server's sections here, before any process starts.
    from rollout.experience_maker import EvalConfig, RolloutConfig
    from rollout.rewards import RewardConfig
    try:
        RolloutConfig.from_mapping(server_rollout)
    except (ValueError, TypeError) as e:
        fail("config." + str(e).split(":", 1)[0], str(e).split(":", 1)[-1].strip())
    ev = _section(config, "eval")
    ev_max = ev.pop("max_problems", 0)
    try:
        EvalConfig.from_mapping(ev)
    except (ValueError, TypeError) as e:
        fail("config." + str(e).split(":", 1)[0], str(e).split(":", 1)[-1].strip())
    rewards = _section(config, "cure")
    try:
        RewardConfig(**rewards)
    except TypeError as e:
        fail("config.cure", str(e))
    except ValueError as e:
        fail("config.cure." + str(e).split(":", 1)[0].split(".", 1)[-1], str(e).split(":", 1)[-1].strip())
    sandbox = _section(config, "sandbox")
    sb_known = {"workers", "isolation", "time_s", "memory_mb", "output_mb", "time_multiplier",
                "wall_factor", "processes", "open_files", "tmp_mb", "input_mb", "float_tol"}
    for k in sandbox:
        if k not in sb_known:
            fail(f"config.sandbox.{k}", f"unknown field (known: {', '.join(sorted(sb_known))})")
    data = _section(config, "data")
    for k in data:
        if k not in ("train", "eval"):
            fail(f"config.data.{k}", "unknown field (known: eval, train)")
    model = _section(config, "model")
    if model.get("preset") and not (r.get("model_path") or model.get("hf_dir")):
        fail("config.rollout.model_path", "required with config.model.preset (the HF "
             "directory or hub id the rollout engine serves)")
    train = _section(config, "train")
    steps = train.get("steps", 1)
    eval_every = train.get("eval_every", 0)
    return CureSettings(
        mode=mode, engine=engine, problems_per_step=r.get("problems_per_step", 4),
        max_staleness=r.get("max_staleness", 1), weights_dtype=wd,
        drop_zero_signal=bool(r.get("drop_zero_signal", True)),
        model_path=r.get("model_path", ""), engine_options=dict(r.get("engine_options", {})),
        prompts=dict(r.get("prompts", {})), server_rollout=server_rollout, rewards=rewards,
        sandbox=sandbox, eval=ev, data_train=data.get("train", "embedded:train"),
        data_eval=data.get("eval", "embedded:eval"), eval_max_problems=int(ev_max),
        steps=int(steps), eval_every=int(eval_every),
        startup_timeout_s=float(r.get("startup_timeout_s", 600.0)),
        step_timeout_s=float(r.get("step_timeout_s", 3600.0)),
        heartbeat_timeout_s=float(r.get("heartbeat_timeout_s", 30.0)),
        heartbeat_s=float(r.get("heartbeat_s", 0.5)), restarts=int(r.get("restarts", 0)),
        devices=str(r.get("devices", "")))


def learner_view(config: Any) -> Any:
    """``config`` as the learner's validator reads it (``rollout.source = "cure"`` mapped
    for a learner that does not know it; ``train.steps``/``eval_every`` are learner fields)."""
    import ml_collections

    from cure_jax import config as cfg_lib

    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    rollout = dict(d.get("rollout") or {})
    if rollout.get("source") == "cure" and "cure" not in cfg_lib.ROLLOUT_SOURCES:
        rollout["source"] = "synthetic"
    d["rollout"] = rollout
    return ml_collections.ConfigDict(d)


def problem_ids_for_step(n_problems: int, per_step: int, step: int, seed: int) -> list[int]:
    """Problem ids of training step ``step``: consecutive slices of seeded per-epoch
    permutations of ``range(n_problems)`` (every problem once per epoch), a pure function of
    its arguments, so a resumed run picks exactly what the uninterrupted one would."""
    if n_problems < 1:
        raise ValueError("the training split holds no problems")
    start = step * per_step
    out: list[int] = []
    pos = start
    while len(out) < per_step:
        epoch, off = divmod(pos, n_problems)
        perm = np.random.default_rng([seed, epoch]).permutation(n_problems)
        take = min(per_step - len(out), n_problems - off)
        out.extend(int(i) for i in perm[off:off + take])
        pos += take
    return out


# ------------------------------------------------------------------------------ process tree
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = collections.defaultdict(list)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rfind(b")") + 2:].split()
        kids[int(fields[1])].append(int(d))
    return kids


def descendants(pid: int) -> list[int]:
    """Pids of every live descendant of ``pid`` (from /proc)."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill_tree(pid: int, pgid: int | None) -> None:
    victims = descendants(pid)
    for sig in (signal.SIGKILL,):
        if pgid is not None:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for p in [pid] + victims:
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass


# ------------------------------------------------------------------------------ client
class RolloutClient:
    """Starts ``python -m rollout.server`` and exchanges JSON-line commands with it."""

    def __init__(self, spec: Mapping[str, Any], workdir: str | os.PathLike[str], *,
                 startup_timeout_s: float = 600.0, heartbeat_timeout_s: float = 30.0,
                 env: Mapping[str, str] | None = None) -> None:
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.spec_path = self.workdir / "rollout_server.json"
        self.spec_path.write_text(json.dumps(spec, indent=1))
        self.log_path = self.workdir / "rollout_server.log"
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._buf = b""
        self._current: str = "start-up"
        self.on_progress = None
        cmd_r, cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        child_env = dict(os.environ if env is None else env)
        child_env.setdefault("PYTHONPATH", "")
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), child_env["PYTHONPATH"]) if p)
        child_env.pop("XLA_FLAGS", None)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - held while the server runs
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rollout.server", f"--spec={self.spec_path}",
                 f"--ctl-in={cmd_r}", f"--ctl-out={rep_w}"],
                pass_fds=(cmd_r, rep_w), stdin=subprocess.DEVNULL, stdout=self._log,
                stderr=subprocess.STDOUT, env=child_env, start_new_session=True,
                cwd=str(REPO_ROOT))
        finally:
            os.close(cmd_r)
            os.close(rep_w)
        self.pid = self.proc.pid
        self.pgid = self.pid
        self._w = cmd_w
        self._r = rep_r
        self._closed = False
        self._broken = False
        try:
            ready = self._read_until(lambda m: m.get("type") == "ready", startup_timeout_s,
                                     "start-up", heartbeat_timeout_s=None)
        except BaseException:
            self.close()
            raise
        self.ready = ready

    # -- messages
    def _log_tail(self, n: int = 6) -> str:
        try:
            lines = self.log_path.read_bytes().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        lines = [ln for ln in lines if ln.strip() and "WARNING" not in ln][-n:]
        return " | ".join(ln.strip()[:300] for ln in lines)

    def _died(self, what: str) -> RolloutServerError:
        self._broken = True
        rc = self.proc.poll()
        how = (f"was killed by signal {signal.Signals(-rc).name}" if rc is not None and rc < 0
               else f"exited with status {rc}")
        return RolloutServerError(
            f"rollout server (pid {self.pid}) {how} during {what}; log {self.log_path}: "
            f"{self._log_tail()}")

    def _read_until(self, want, timeout: float, what: str,
                    heartbeat_timeout_s: float | None) -> dict:
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                msg = json.loads(line)
                last = time.monotonic()
                kind = msg.get("type")
                if kind == "fatal":
                    raise RolloutServerError(f"rollout server (pid {self.pid}): "
                                             f"{msg.get('message')}; log {self.log_path}")
                if kind == "progress":
                    self._current = f"{what} ({msg.get('phase')})"
                    if self.on_progress is not None:
                        self.on_progress(msg)
                    continue
                if kind == "heartbeat":
                    continue
                if kind in ("done", "error") and msg.get("id") is not None:
                    self._replies[int(msg["id"])] = msg
                if want(msg):
                    return msg
            now = time.monotonic()
            if now >= deadline:
                raise RolloutServerError(f"rollout server (pid {self.pid}): no answer to {what} "
                                         f"within {timeout:.0f}s; log {self.log_path}")
            if heartbeat_timeout_s is not None and now - last > heartbeat_timeout_s:
                self._broken = True
                raise RolloutServerError(
                    f"rollout server (pid {self.pid}) sent no heartbeat for "
                    f"{now - last:.1f}s during {self._current} (frozen or stuck); log "
                    f"{self.log_path}")
            r, _, _ = select.select([self._r], [], [], 0.1)
            if r:
                chunk = os.read(self._r, 1 << 16)
                if chunk:
                    self._buf += chunk
                    continue
                self.proc.wait(timeout=5)  # EOF: the server is gone
                raise self._died(self._current)
            if self.proc.poll() is not None:
                raise self._died(self._current)

    def send(self, cmd: str, **fields: Any) -> int:
        """Queue a command; returns its id (see :meth:`wait`)."""
        if self._closed:
            raise RolloutServerError("rollout server: the client is closed")
        self._next_id += 1
        msg = dict(fields, cmd=cmd, id=self._next_id)
        data = (json.dumps(msg) + "\n").encode()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._w, view):]
        except BrokenPipeError:
            self.proc.wait(timeout=5)
            raise self._died(f"'{cmd}'") from None
        return self._next_id

    def wait(self, cid: int, timeout: float, what: str = "") -> dict:
        """The reply to command ``cid``; an error reply, death or silence raise."""
        what = what or f"command {cid}"
        self._current = what
        msg = self._replies.pop(cid, None)
        if msg is None:
            self._read_until(lambda m: m.get("id") == cid and m.get("type") in ("done", "error"),
                             timeout, what, self.heartbeat_timeout_s)
            msg = self._replies.pop(cid)
        if msg["type"] == "error":
            raise RolloutServerError(f"rollout server: {what} failed: {msg.get('message')}")
        return msg

    def has_reply(self, cid: int) -> bool:
        """True once the reply to ``cid`` has been read (see :meth:`wait`)."""
        return cid in self._replies

    def call(self, cmd: str, timeout: float, what: str = "", **fields: Any) -> dict:
        return self.wait(self.send(cmd, **fields), timeout, what or f"'{cmd}'")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self, timeout: float = 10.0) -> None:
        """Stop the server (politely, then by force) and every process it started."""
        if self._closed:
            return
        self._closed = True
        tree = [self.pid] + descendants(self.pid)
        if self.proc.poll() is None and not self._broken:
            try:
                os.write(self._w, (json.dumps({"cmd": "stop", "id": 0}) + "\n").encode())
            except OSError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        tree += descendants(self.pid) if self.proc.poll() is None else []
        _kill_tree(self.pid, self.pgid)
        for p in tree:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------ weights
def export_weights(learner: Any, params: Any, channel: shm.WeightChannel, version: int,
                   dtype: str) -> float:
    """Write ``params`` in HF naming/layout (the one table, cure_jax.hf_io) into the channel
    as ``version``; returns the bytes written.

    Streams: each device shard goes from the learner's buffer straight to its place in the
    channel's shared memory (hf_io.write_hf_arrays), so no host copy of the model (or of one
    whole tensor) is built; the version is published after the last tensor.
    """
    from cure_jax import hf_io

    with channel.writer(version) as w:
        hf_io.write_hf_arrays(learner.model(params), w, hf_io.parse_dtype(dtype),
                              cfg=learner.model_cfg)
    return float(w.nbytes)


def weights_capacity(model_cfg: Any, dtype: str) -> int:
    from cure_jax import hf_io

    specs = hf_io.hf_specs(model_cfg, hf_io.parse_dtype(dtype))
    total = 0
    for _, shape, dt in specs:
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
        total = (total + n + 63) // 64 * 64
    return total


# ------------------------------------------------------------------------------ the loop
def _run_id() -> str:
    return f"t{os.getpid()}x{int(time.time() * 1000) % 10**8}"


def server_spec(settings: CureSettings, model_cfg: Any, workdir: pathlib.Path, buffer: str,
                channel: str, seed: int, model_path: str = "") -> dict[str, Any]:
    """The JSON the rollout server starts from. The engine serves ``model_path`` (a HF
    directory or hub id); without one, a tiny HF directory of ``model_cfg`` is built in the
    workdir (configs/tiny.py). Either way the learner's weights are pushed before any rollout."""
    engine = {"backend": settings.engine, "seed": seed}
    if settings.engine == "vllm":
        engine.update(enforce_eager=True)
    engine.update(settings.engine_options)
    spec: dict[str, Any] = {
        "buffer": buffer, "channel": channel, "engine": engine,
        "rollout": dict(settings.server_rollout), "eval": dict(settings.eval),
        "rewards": dict(settings.rewards), "prompts": dict(settings.prompts),
        "sandbox": dict(settings.sandbox),
        "data": {"train": settings.data_train, "eval": settings.data_eval},
        "heartbeat_s": settings.heartbeat_s,
    }
    if model_path:
        engine["model"] = model_path
    else:
        hf = model_cfg.to_hf_dict()
        hf["torch_dtype"] = "float32"
        spec["tiny_model"] = {"dir": str(workdir / "policy_init_hf"), "hf_config": hf,
                              "seed": seed}
        engine["model"] = str(workdir / "policy_init_hf")
    return spec


def _buffer_bytes(settings: CureSettings, model_cfg: Any) -> int:
    r = settings.server_rollout
    k = int(r.get("k_code", 16)) + int(r.get("k_case", 16))
    rows = settings.problems_per_step * k
    max_len = int(r.get("max_len", 0)) or int(settings.engine_options.get("max_model_len", 0)) \
        or int(model_cfg.max_position_embeddings)
    return rows * (max_len + 8) * 8 + rows * 64 + (4 << 20)


def _scalar_stats(stats: Mapping[str, Any]) -> dict[str, float]:
    """CURE statistics of a rollout batch -> TensorBoard tags."""
    out: dict[str, float] = {}
    groups = {"code_accuracy": "cure/code_accuracy", "unit_test_accuracy": "cure/unit_test_accuracy",
              "p_01": "cure/p_01", "p_00": "cure/p_00", "code_parse_rate": "cure/code_parse_rate",
              "test_parse_rate": "cure/test_parse_rate", "truncated_rate": "length/truncated_rate",
              "prompt_len_mean": "length/prompt_mean", "code_len_mean": "length/code_mean",
              "code_len_max": "length/code_max", "test_len_mean": "length/test_mean",
              "test_len_max": "length/test_max", "rows": "batch/rows",
              "rows_with_signal": "batch/rows_with_signal",
              "problems_with_code_signal": "batch/problems_with_code_signal",
              "problems_with_test_signal": "batch/problems_with_test_signal",
              "problems_without_correct_code": "batch/problems_without_correct_code",
              "executions": "sandbox/executions", "generate_s": "time/generate_s",
              "sandbox_s": "time/sandbox_s", "rewards_s": "time/rewards_s"}
    for k, tag in groups.items():
        v = stats.get(k)
        if isinstance(v, (int, float)) and v is not None:
            out[tag] = float(v)
    for k, v in stats.items():
        if k.startswith(("code_reward_", "test_reward_", "code_advantage_", "test_advantage_")):
            kind, _, what = k.partition("_")
            name, _, stat = what.partition("_")
            out[f"{name}/{kind}_{stat}"] = float(v)
    for name, count in (stats.get("verdicts") or {}).items():
        out[f"sandbox/verdict_{name}"] = float(count)
    return out


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


class CureLoop:
    """State of one cure-train run (see the module docstring)."""

    def __init__(self, config: Any, workdir: str | os.PathLike[str]) -> None:
        from cure_jax import train as train_lib
        from cure_jax.config import validate_config

        self.config = config
        self.workdir = pathlib.Path(workdir)
        self.settings = validate_config(learner_view(config))
        self.cure = cure_settings(config)

        self.train_lib = train_lib
        self.seed = self.settings.seed

    # -- server lifecycle
    def _start_server(self) -> RolloutClient:
        t0 = time.perf_counter()
        print(f"cure-train: starting the rollout server ({self.cure.engine})...", flush=True)
        env = dict(os.environ)
        if self.cure.devices:  # the GPUs of the rollout engine (the learner keeps the rest)
            env["CUDA_VISIBLE_DEVICES"] = self.cure.devices
        client = RolloutClient(self.spec, self.workdir, startup_timeout_s=self.cure.startup_timeout_s,
                               heartbeat_timeout_s=self.cure.heartbeat_timeout_s, env=env)
        print(f"cure-train: rollout server pid {client.pid} ready in "
              f"{time.perf_counter() - t0:.1f}s ({client.ready['n_train']} training problems)",
              flush=True)
        return client

    def run(self) -> Any:
        import jax

        from cure_jax import checkpoint as ckpt_lib
        from cure_jax import distributed
        from cure_jax.experience import ExperienceBatch
        from cure_jax.summaries import SummaryWriter

        settings, cure = self.settings, self.cure
        distributed.initialize()
        if jax.process_count() > 1:
            raise NotImplementedError("cure-train with rollout.source='cure' runs on one host "
                                      "for now (one rollout server per node is not wired yet)")
        wd = self.workdir
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "config.json").write_text(json.dumps(
            self.config.to_dict() if hasattr(self.config, "to_dict") else dict(self.config),
            indent=1, default=str))
        learner, _ = self.train_lib.build(settings)
        tc = settings.train
        ckpt = ckpt_lib.Checkpointer(wd / "checkpoints", keep=tc.keep_checkpoints,
                                     async_save=tc.async_checkpoint)
        initial = self.train_lib._initial_state(learner, settings)
        ref_params = None
        if settings.learner.kl_coef > 0 and settings.learner.kl_reference == "initial":
            ref_params = learner.reference_params(initial.params)
        restored = ckpt.restore_latest(learner.abstract_state())
        if restored is None:
            state, cursor, version = initial, 0, 0
        else:
            step, state, drv = restored
            cursor, version = int(drv.get("cursor", step)), int(drv.get("version", step))
            print(f"cure-train: resumed from checkpoint step {step} (cursor {cursor}, policy "
                  f"version {version})", flush=True)
            del initial
        writer = SummaryWriter(wd / "tb")
        stop = ckpt_lib.StopSignal().install()
        run_id = _run_id()
        shm.cleanup_stale()
        wdtype = cure.weights_dtype
        buffer = shm.RolloutBuffer.create(run_id, cure.max_staleness + 1,
                                          _buffer_bytes(cure, learner.model_cfg))
        buffer.open_reader()
        channel = shm.WeightChannel.create(run_id, weights_capacity(learner.model_cfg, wdtype))
        self.spec = server_spec(cure, learner.model_cfg, wd, buffer.name, channel.name, self.seed,
                                cure.model_path or settings.model.hf_dir)
        client: RolloutClient | None = None
        restarts_left = cure.restarts
        inflight: collections.deque[tuple[int, int]] = collections.deque()
        lead = 0 if cure.mode == "sync" else cure.max_staleness
        n_train = 0
        pending_loads: list[int] = []
        timing: dict[str, float] = {}

        def save(next_cursor: int) -> None:
            ckpt.save(next_cursor, state, {"cursor": next_cursor, "version": version,
                                           "source": "cure", "mode": cure.mode,
                                           "seed": self.seed, "time": time.time()})

        def push(v: int, wait: bool) -> None:
            t0 = time.perf_counter()
            export_weights(learner, state.params, channel, v, wdtype)
            timing["export_s"] = time.perf_counter() - t0
            pending_loads.append(client.send("load_weights", version=v))
            if wait:
                finish_load()

        def finish_load(block: bool = True) -> None:
            while pending_loads:
                cid = pending_loads[0]
                if not block and not client.has_reply(cid):
                    return
                rep = client.wait(cid, cure.step_timeout_s, "load_weights")
                pending_loads.pop(0)
                timing["load_s"] = float(rep.get("load_s", 0.0))

        def evaluate(step: int) -> dict:
            """Held-out evaluation of the weights the server holds, written at ``step``."""
            t0 = time.perf_counter()
            rep = client.call("evaluate", cure.step_timeout_s, "evaluation",
                              split="eval", max_problems=cure.eval_max_problems)
            m = rep["metrics"]
            timing["eval_s"] = time.perf_counter() - t0
            ev = {f"eval/{k}": v for k, v in m.items() if isinstance(v, (int, float))}
            ev.update({f"eval/bon_{k}": v for k, v in (m.get("bon") or {}).items()
                       if v is not None})
            writer.scalars(step, ev)
            return m

        def request(step: int) -> None:
            ids = problem_ids_for_step(n_train, cure.problems_per_step, step, self.seed)
            inflight.append((step, client.send("rollout", step=step, problem_ids=ids)))

        def restart(err: RolloutServerError, first: int) -> None:
            nonlocal client, restarts_left
            restarts_left -= 1
            print(f"cure-train: {err}; restarting the rollout server ({restarts_left} restarts "
                  f"left)", flush=True)
            client.close()
            pending_loads.clear()  # answers from the dead server will never come
            while buffer.pending():
                buffer.get(timeout=1.0)
            client = self._start_server()
            steps = sorted({s for s, _ in inflight} | {first})
            inflight.clear()
            push(version, wait=True)
            for s in steps:
                if s < cure.steps:
                    request(s)

        try:
            client = self._start_server()
            n_train = int(client.ready["n_train"])
            push(version, wait=True)
            if cure.eval_every and cursor == 0:  # the starting point of the eval curves
                m = evaluate(0)
                print(f"step 0 eval code {_fmt(m.get('code_accuracy'))} ut "
                      f"{_fmt(m.get('unit_test_accuracy'))}", flush=True)
            for s in range(cursor, min(cursor + max(lead, 1), cure.steps)):
                request(s)
            for step in range(cursor, cure.steps):
                t_step = time.perf_counter()
                while True:
                    try:
                        s, cid = inflight[0]
                        assert s == step, (s, step)
                        client.wait(cid, cure.step_timeout_s, f"the rollout of step {step}")
                        inflight.popleft()
                        t_wait = time.perf_counter() - t_step
                        batch_msg = buffer.get(timeout=30.0)
                        if lead and step + lead < cure.steps:
                            request(step + lead)
                        break
                    except RolloutServerError as e:
                        if restarts_left <= 0 or client.alive():
                            raise
                        restart(e, step)
                finish_load(block=False)
                arrays, stats = batch_msg.arrays, batch_msg.meta
                bv = int(batch_msg.version)
                if version - bv > (cure.max_staleness if cure.mode == "async" else 0):
                    raise RolloutServerError(
                        f"rollout of step {step} came from policy version {bv}, "
                        f"{version - bv} behind the learner's {version} (mode {cure.mode}, "
                        f"max_staleness {cure.max_staleness})")
                keep = np.ones(len(arrays["kind"]), bool)
                if cure.drop_zero_signal:
                    keep = arrays["has_signal"] > 0
                t0 = time.perf_counter()
                metrics: dict[str, float] = {}
                if keep.any():
                    batch = ExperienceBatch(**{k: arrays[k][keep] for k in (
                        "tokens", "prompt_len", "response_len", "rollout_logprobs", "advantage",
                        "kind", "problem_id", "policy_version", "reward")})
                    state, metrics = learner.update(state, batch, ref_params)
                    version += 1
                t_learn = time.perf_counter() - t0
                t0 = time.perf_counter()
                timing.pop("load_s", None)
                if keep.any():
                    push(version, wait=(cure.mode == "sync"))
                t_sync = time.perf_counter() - t0
                if cure.mode == "sync" and step + 1 < cure.steps:
                    request(step + 1)
                done = step + 1
                eval_metrics = None
                if cure.eval_every and done % cure.eval_every == 0:
                    finish_load()
                    eval_metrics = evaluate(done)
                t_total = time.perf_counter() - t_step
                scalars = _scalar_stats(stats)
                scalars.update({tag: metrics[k] for k, tag in self.train_lib.SCALAR_TAGS.items()
                                if k in metrics})
                scalars.update({"time/wait_rollout_s": t_wait, "time/learn_s": t_learn,
                                "time/sync_s": t_sync + timing.get("load_s", 0.0),
                                "time/export_s": timing.get("export_s", 0.0),
                                "time/step_s": t_total, "policy/version": float(version),
                                "policy/staleness": float(version - 1 - bv) if keep.any()
                                else float(version - bv),
                                "batch/rows_trained": float(keep.sum())})
                writer.scalars(step, scalars)
                if tc.histogram_every and step % tc.histogram_every == 0 and keep.any():
                    writer.histogram(step, "dist/advantage", arrays["advantage"][keep])
                if tc.text_every and step % tc.text_every == 0:
                    writer.text(step, "samples/code", str(stats.get("sample_code", "")))
                    writer.text(step, "samples/test", str(stats.get("sample_test", "")))
                print(f"step {done}/{cure.steps} v{version} | code acc "
                      f"{_fmt(stats.get('code_accuracy'))} ut acc "
                      f"{_fmt(stats.get('unit_test_accuracy'))} parsed "
                      f"{_fmt(stats.get('code_parse_rate'))}/{_fmt(stats.get('test_parse_rate'))}"
                      f" | reward code {_fmt(stats.get('code_reward_mean'), '.3f')} test "
                      f"{_fmt(stats.get('test_reward_mean'), '.3f')} | rows "
                      f"{int(keep.sum())}/{len(keep)} | pg {_fmt(metrics.get('pg_loss'), '.4f')} kl "
                      f"{_fmt(metrics.get('kl'), '.4f')} | gen {stats.get('generate_s', 0):.1f}s "
                      f"sbx {stats.get('sandbox_s', 0):.1f}s learn {t_learn:.1f}s sync "
                      f"{t_sync:.2f}s step {t_total:.1f}s"
                      + ("" if eval_metrics is None else
                         f" | eval code {_fmt(eval_metrics.get('code_accuracy'))} ut "
                         f"{_fmt(eval_metrics.get('unit_test_accuracy'))}"), flush=True)
                if stop.requested:
                    save(done)
                    ckpt.wait()
                    writer.flush()
                    raise self.train_lib.Preempted(128 + (stop.signum or 0))
                if (tc.checkpoint_every and done % tc.checkpoint_every == 0) or done == cure.steps:
                    save(done)
                writer.flush()
            if client is not None:
                finish_load()
        finally:
            if client is not None:
                client.close()
            ckpt.close()
            writer.close()
            stop.restore()
            buffer.close()
            channel.close()
        return state


def train_cure(config: Any, workdir: str | os.PathLike[str]) -> Any:
    """Run the CURE loop for ``config`` in ``workdir``; returns the final train state."""
    return CureLoop(config, workdir).run()
