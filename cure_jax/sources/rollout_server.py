"""The rollout-server experience source: CURE experience from a supervised rollout server process.

Per step (synchronous mode, on-policy)::

    server: rollout(step k) with weights v_k -> experience rows + statistics -> RolloutBuffer
    trainer: learner.update(rows)                  -> params v_{k+1}
    publish: export v_{k+1} (HF names/layout) -> WeightChannel -> server loads it -> rollout(k+1)

Asynchronous mode keeps `rollout.max_staleness` rollouts in flight: the rollout of step k+1 runs
on weights v_k while the learner trains on step k, and the next weights are loaded after it.
Every row carries the version that produced it; a batch older than `max_staleness` versions is
an error, and the learner's truncated importance sampling (`learner.tis_cap`) corrects the rest.

Supervision: the server is a child process in its own session, reached through
`rollout.contract.control.RolloutClient` (deadlines, heartbeats, one-line errors naming the
server's exit status and log). With `rollout.restarts > 0` a dead or frozen server (no heartbeat
within `rollout.heartbeat_timeout_s`) is killed and restarted, given the current weights and
asked again for the rollouts in flight. The shared-memory segments are owned
(and unlinked) by this process.

Resume: problem ids of step s are a pure function of (seed, s) (`problem_ids_for_step`), and
sampling seeds of (seed, s), so a resumed synchronous run repeats the uninterrupted one.

Several processes (one per host): each starts its own server (its own sandbox, ring buffer and
weight channel in its host's /dev/shm; files `rollout_server.p<i>.*` in the shared run
directory) and asks it for its contiguous share of the step's `problems_per_step` problem ids;
advantages stay per problem on the host that made them, each process trains on its own rows
(cure_jax.row_plan), and the statistics and held-out metrics of all hosts are reduced from
counts (rollout.contract.stats) with JAX's collectives.
"""
from __future__ import annotations

import collections
import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from cure_jax import distributed, placement
from cure_jax.config import Config, ConfigError
from cure_jax.experience import ExperienceBatch
from cure_jax.sources.base import Experience
from cure_jax.weight_export import export_weights, weights_capacity
from rollout.contract import procs, schema, segments
from rollout.contract.control import RolloutClient, RolloutServerError
from rollout.contract.ring_buffer import RolloutBuffer
from rollout.contract.sections import SERVER_SECTIONS
from rollout.contract.stats import merge_eval_metrics, merge_rollout_stats
from rollout.contract.weight_channel import WeightChannel


def longest_row(cfg: Config, model_cfg: Any) -> int:
    """The longest experience row (prompt + response) the rollout server hands over:
    `rollout.max_len`, else the engine's `max_model_len`, else the model's positions."""
    r = cfg.rollout
    return r.max_len or r.engine_options.max_model_len or int(model_cfg.max_position_embeddings)


def rows_per_step(cfg: Config, processes: int) -> int:
    """The most experience rows one process's rollout server hands over in a step: its share
    of the step's problems, each with k_code codes and k_case tests."""
    r = cfg.rollout
    return -(-r.problems_per_step // processes) * (r.k_code + r.k_case)


def slot_bytes(cfg: Config, model_cfg: Any, processes: int) -> int:
    """Payload bytes of one ring-buffer slot: one step's rows of one process at the longest
    row, with room for the per-row fields and the step's statistics."""
    rows = rows_per_step(cfg, processes)
    return rows * (longest_row(cfg, model_cfg) + 8) * 8 + rows * 64 + (4 << 20)


def server_env(cfg: Config, base: Mapping[str, str]) -> dict[str, str]:
    """The rollout server's environment: `base` with the server's GPUs (cure_jax.placement) and,
    unless `base` sets it, OpenMP threads that sleep when idle (OMP_WAIT_POLICY=PASSIVE). The
    server's torch threads otherwise spin on the cores the learner is computing on: on 2 CPU
    cores a tiny-default step took 15% less wall and 22% less CPU with them asleep, two runs side
    by side 35% less wall."""
    env = placement.rollout_env(placement.plan(cfg), dict(base))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def problem_ids_for_step(n_problems: int, per_step: int, step: int, seed: int) -> list[int]:
    """Problem ids of training step `step`: consecutive slices of seeded per-epoch permutations
    of `range(n_problems)` (every problem once per epoch), a pure function of its arguments,
    so a resumed run picks exactly what the uninterrupted one would."""
    if n_problems < 1:
        raise ValueError("the training split holds no problems")
    out: list[int] = []
    pos = step * per_step
    while len(out) < per_step:
        epoch, off = divmod(pos, n_problems)
        perm = np.random.default_rng([seed, epoch]).permutation(n_problems)
        take = min(per_step - len(out), n_problems - off)
        out.extend(int(i) for i in perm[off:off + take])
        pos += take
    return out


def rollout_scalars(stats: Mapping[str, Any]) -> dict[str, float]:
    """CURE statistics of a rollout batch -> TensorBoard tags."""
    out: dict[str, float] = {}
    tags = {"code_accuracy": "cure/code_accuracy", "unit_test_accuracy": "cure/unit_test_accuracy",
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
            "problems_sandbox_error": "sandbox/errors", "sandbox_retries": "sandbox/retries",
            "problems_without_gt": "batch/problems_without_gt",
            "sandbox_s": "time/sandbox_s", "rewards_s": "time/rewards_s"}
    for k, tag in tags.items():
        v = stats.get(k)
        if isinstance(v, (int, float)):
            out[tag] = float(v)
    for k, v in stats.items():
        if k.startswith(("code_reward_", "test_reward_", "code_advantage_", "test_advantage_")):
            kind, _, what = k.partition("_")
            name, _, stat = what.partition("_")
            out[f"{name}/{kind}_{stat}"] = float(v)
    for name, count in (stats.get("verdicts") or {}).items():
        out[f"sandbox/verdict_{name}"] = float(count)
    return out


def _summary(stats: Mapping[str, Any]) -> str:
    """The rollout's part of the console line."""
    def fmt(v: Any, spec: str = ".2f") -> str:
        return "n/a" if v is None else format(v, spec)
    return (f"code acc {fmt(stats.get('code_accuracy'))} ut acc "
            f"{fmt(stats.get('unit_test_accuracy'))} parsed {fmt(stats.get('code_parse_rate'))}/"
            f"{fmt(stats.get('test_parse_rate'))} | reward code "
            f"{fmt(stats.get('code_reward_mean'), '.3f')} test "
            f"{fmt(stats.get('test_reward_mean'), '.3f')} | gen {stats.get('generate_s', 0):.1f}s "
            f"sbx {stats.get('sandbox_s', 0):.1f}s")


class RolloutServerSource:
    """CURE experience from a rollout server (see the module docstring)."""

    def __init__(self, cfg: Config, learner: Any, workdir: str | os.PathLike[str]) -> None:
        import jax

        self.cfg, self.learner = cfg, learner
        self.workdir = pathlib.Path(workdir)
        r = cfg.rollout
        self.index, self.count = jax.process_index(), jax.process_count()
        if r.problems_per_step < self.count:
            raise ConfigError(f"config.rollout.problems_per_step: {r.problems_per_step} problems "
                              f"a step cannot be shared by {self.count} processes")
        # Files of this process's server in the shared run directory.
        self.tag = f".p{self.index}" if self.count > 1 else ""
        self.steps = cfg.train.steps
        self.lead = 0 if r.mode == "sync" else r.max_staleness
        self.restarts_left = r.restarts
        self.inflight: collections.deque[tuple[int, int]] = collections.deque()
        self.pending_loads: list[int] = []
        self.timing: dict[str, float] = {}
        self.client: RolloutClient | None = None
        self.n_train = 0
        self.version = 0
        run_id = f"t{os.getpid()}x{int(time.time() * 1000) % 10**8}"
        segments.cleanup_stale()
        self.buffer = RolloutBuffer.create(run_id, r.max_staleness + 1,
                                           slot_bytes(cfg, learner.model_cfg, self.count))
        self.buffer.open_reader()
        self.channel = WeightChannel.create(run_id, weights_capacity(learner.model_cfg,
                                                                     r.weights_dtype))
        self.spec = server_spec(cfg, learner.model_cfg, self.workdir, self.buffer.name,
                                self.channel.name, self.tag)

    # -- server lifecycle
    def _start_server(self) -> RolloutClient:
        r = self.cfg.rollout
        t0 = time.perf_counter()
        print(f"cure-train: starting the rollout server ({r.engine})...", flush=True)
        client = RolloutClient(self.spec, self.workdir, startup_timeout_s=r.startup_timeout_s,
                               heartbeat_timeout_s=r.heartbeat_timeout_s,
                               env=server_env(self.cfg, os.environ), tag=self.tag)
        print(f"cure-train: rollout server{self.tag} pid {client.pid} ready in "
              f"{time.perf_counter() - t0:.1f}s ({client.ready['n_train']} training problems)",
              flush=True)
        return client

    def _push(self, params: Any, version: int, wait: bool) -> None:
        t0 = time.perf_counter()
        export_weights(self.learner, params, self.channel, version, self.cfg.rollout.weights_dtype)
        self.timing["export_s"] = time.perf_counter() - t0
        self.pending_loads.append(self.client.send("load_weights", version=version))
        if wait:
            self._finish_load()

    def _finish_load(self, block: bool = True) -> None:
        while self.pending_loads:
            cid = self.pending_loads[0]
            if not block and not self.client.has_reply(cid):
                return
            rep = self.client.wait(cid, self.cfg.rollout.step_timeout_s, "load_weights")
            self.pending_loads.pop(0)
            self.timing["load_s"] = float(rep.get("load_s", 0.0))

    def _request(self, step: int) -> None:
        r = self.cfg.rollout
        ids = problem_ids_for_step(self.n_train, r.problems_per_step, step, self.cfg.seed)
        ids = [int(i) for i in np.array_split(np.asarray(ids), self.count)[self.index]]
        self.inflight.append((step, self.client.send("rollout", step=step, problem_ids=ids)))

    def _restart(self, err: RolloutServerError, first: int, params: Any) -> None:
        self.restarts_left -= 1
        print(f"cure-train: {err}; restarting the rollout server ({self.restarts_left} restarts "
              f"left)", flush=True)
        self.client.close()
        self.pending_loads.clear()  # answers from the dead server will never come
        while self.buffer.pending():
            self.buffer.get(timeout=1.0)
        self.client = self._start_server()
        steps = sorted({s for s, _ in self.inflight} | {first})
        self.inflight.clear()
        self._push(params, self.version, wait=True)
        for s in steps:
            if s < self.steps:
                self._request(s)

    # -- the experience-source interface
    def start(self, params: Any, version: int, cursor: int) -> None:
        self.version = version
        self.client = self._start_server()
        self.n_train = int(self.client.ready["n_train"])
        self._push(params, version, wait=True)
        for s in range(cursor, min(cursor + max(self.lead, 1), self.steps)):
            self._request(s)

    def next(self, step: int, params: Any, version: int) -> Experience:
        r = self.cfg.rollout
        self.version = version
        t0 = time.perf_counter()
        while True:
            try:
                s, cid = self.inflight[0]
                assert s == step, (s, step)
                self.client.wait(cid, r.step_timeout_s, f"the rollout of step {step}")
                self.inflight.popleft()
                wait = time.perf_counter() - t0
                msg = self.buffer.get(timeout=30.0)
                if self.lead and step + self.lead < self.steps:
                    self._request(step + self.lead)
                break
            except RolloutServerError as e:
                if self.restarts_left <= 0 or not self.client.lost:
                    raise  # out of restarts, or a command failed in a healthy server
                self._restart(e, step, params)
        self._finish_load(block=False)
        arrays, stats = msg.arrays, msg.meta
        bv = int(msg.version)
        if version - bv > (r.max_staleness if r.mode == "async" else 0):
            raise RolloutServerError(
                f"rollout of step {step} came from policy version {bv}, {version - bv} behind "
                f"the learner's {version} (mode {r.mode}, max_staleness {r.max_staleness})")
        keep = arrays["has_signal"] > 0 if r.drop_zero_signal else np.ones(len(arrays["kind"]), bool)
        kept = int(keep.sum())
        if self.count > 1:  # every process's statistics, reduced from counts
            hosts = distributed.allgather_json({"stats": dict(stats), "kept": kept})
            stats = merge_rollout_stats([h["stats"] for h in hosts])
            kept_all = sum(int(h["kept"]) for h in hosts)
        else:
            kept_all = kept
        batch = None
        if kept_all:  # every process trains, also one whose rows all lacked signal
            batch = ExperienceBatch(**{k: arrays[k][keep] for k in schema.LEARNER_FIELDS})
        scalars = rollout_scalars(stats)
        scalars.update({"time/wait_rollout_s": wait, "batch/rows_trained": float(kept_all),
                        "policy/staleness": float(version - bv)})
        return Experience(batch=batch, version=bv, rows=int(stats.get("rows", len(keep))),
                          scalars=scalars,
                          texts={"samples/code": str(stats.get("sample_code", "")),
                                 "samples/test": str(stats.get("sample_test", ""))},
                          summary=_summary(stats), wait_s=wait)

    def publish(self, params: Any, version: int, step: int, updated: bool) -> dict[str, float]:
        t0 = time.perf_counter()
        self.version = version
        self.timing.pop("load_s", None)
        self.timing.pop("export_s", None)
        if updated:
            self._push(params, version, wait=(self.cfg.rollout.mode == "sync"))
        sync = time.perf_counter() - t0
        if self.cfg.rollout.mode == "sync" and step + 1 < self.steps:
            self._request(step + 1)
        return {"time/sync_s": sync + self.timing.get("load_s", 0.0),
                "time/export_s": self.timing.get("export_s", 0.0)}

    def evaluate(self) -> dict[str, Any]:
        """Held-out metrics of the weights the server holds (after any pending load)."""
        self._finish_load()
        shard = {"shard": [self.index, self.count]} if self.count > 1 else {}
        rep = self.client.call("evaluate", self.cfg.rollout.step_timeout_s, "evaluation",
                               split="eval", max_problems=self.cfg.eval.max_problems, **shard)
        if self.count == 1:
            return rep["metrics"]
        return merge_eval_metrics(distributed.allgather_json(rep["metrics"]))

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"source": "cure", "mode": self.cfg.rollout.mode}

    def finish(self) -> None:
        """Wait for the last weight load (the end of a run)."""
        if self.client is not None:
            self._finish_load()

    def close(self) -> None:
        try:
            if self.client is not None:
                self.client.close()
        finally:
            self.buffer.close()
            self.channel.close()

    def abort(self) -> None:
        """Kill the server's process tree and unlink the segments, from any thread, without
        waiting for anything (this process is about to exit)."""
        if self.client is not None:
            procs.kill_tree(self.client.pid, self.client.pgid)
        segments.unlink_owned()


def server_spec(cfg: Config, model_cfg: Any, workdir: pathlib.Path, buffer: str,
                channel: str, tag: str = "") -> dict[str, Any]:
    """The JSON the rollout server starts from: the rollout-side sections of the config (as
    `Config.to_dict()` writes them; the server rebuilds them with the same builder), the engine
    and the shared-memory endpoints. The engine serves `rollout.model_path` or `model.hf_dir`;
    without either, a random HF directory of `model_cfg` is built in the workdir
    (`configs/tiny.py:random`; `tag` tells the directories of several processes apart).
    Either way the learner's weights are pushed before any rollout."""
    d = cfg.to_dict()
    seed = cfg.seed
    model_path = cfg.rollout.model_path or cfg.model.hf_dir
    spec: dict[str, Any] = {"buffer": buffer, "channel": channel,
                            **{k: d[k] for k in SERVER_SECTIONS},
                            "heartbeat_s": cfg.rollout.heartbeat_s}
    if not model_path:
        hf = model_cfg.to_hf_dict()
        hf["torch_dtype"] = "float32"
        model_path = str(workdir / f"policy_init_hf{tag}")
        spec["random_policy"] = {"dir": model_path, "hf_config": hf, "seed": seed}
    spec["engine"] = cfg.rollout.engine_spec(model_path, seed)
    return spec
