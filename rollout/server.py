"""The rollout server process: ``python -m rollout.server --spec=FILE --ctl-in=FD --ctl-out=FD``.

cure-train starts it through ``rollout.contract.control.RolloutClient`` and talks to it over two
inherited pipes carrying JSON lines; the commands and replies are documented in
``rollout.contract.control`` (the protocol's one home).

Experience (``rollout.experience_maker``) is checked against ``rollout.contract.schema`` and
goes into the learner's RolloutBuffer with the step statistics as the slot's meta; weights come
from the learner's WeightChannel and are pushed into the engine in place
(``rollout.engines.push_from_channel``). Every row carries the version of the weights that
produced it.

A frozen external tester (``cure.tester``, label-free training) is a second engine built from
the same spec (its own backend, options and seed, ``TesterConfig.engine_spec``): it writes the
training tests that reward the policy's codes. Weights are pushed into the policy's engine only;
the tester keeps its own, and held-out evaluation measures the policy alone. Label-free runs
load training problems without ground-truth tests; the evaluation split still needs them.

The server dies with its parent (PR_SET_PDEATHSIG, and EOF on the command pipe).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from typing import Any

from rollout.contract import schema
from rollout.contract.control import ServerChannel
from rollout.contract.ring_buffer import RolloutBuffer
from rollout.contract.stats import check_shard, shard_range
from rollout.contract.weight_channel import WeightChannel
from rollout.datasets import spec_problems

__all__ = ["main"]


def _die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux), so no orphan server survives."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - non-Linux
        pass
    if os.getppid() == 1:
        os._exit(3)


class Server:
    """Owns the engine, the sandbox and the shared-memory endpoints."""

    def __init__(self, spec: Mapping[str, Any], chan: ServerChannel) -> None:
        from rollout.contract.sections import ServerConfig
        from rollout.experience_maker import ExperienceMaker
        from rollout.prompts import PromptBuilder

        self.spec = spec
        self.chan = chan
        self.version = -1
        self.busy: str | None = None
        t0 = time.perf_counter()
        cfg = ServerConfig.from_spec(spec)  # cure-train's sections, rebuilt and re-validated
        self.rollout_cfg, self.eval_cfg = cfg.rollout, cfg.eval
        self.data_dir = cfg.data.data_dir  # where hub datasets are read/downloaded
        self.train = spec_problems(cfg.data.train, data_dir=self.data_dir,
                                   require_tests=not cfg.cure.label_free)
        self.splits = {"eval": cfg.data.eval}

        self.buffer = RolloutBuffer.attach(spec["buffer"])
        self.buffer.open_writer()
        self.channel = WeightChannel.attach(spec["channel"])

        engine_cfg = dict(spec["engine"])
        tiny = spec.get("random_policy")
        if tiny:
            from rollout.random_policy import ensure_random_policy_dir

            ensure_random_policy_dir(tiny["dir"], tiny["hf_config"], int(tiny.get("seed", 0)))
            engine_cfg["model"] = tiny["dir"]
        from rollout.engines import make_engine

        self.engine = make_engine(engine_cfg)
        tester = cfg.cure.tester
        self.tester = make_engine(tester.engine_spec(  # "" backend: the policy engine's
            str(engine_cfg.get("backend", cfg.rollout.engine)), int(engine_cfg.get("seed", 0))
        )) if tester.model_path else None
        from sandbox import Limits, Sandbox

        sb = cfg.sandbox
        self.sandbox = Sandbox(workers=sb.workers or None, limits=Limits(**sb.limits()),
                               isolation=sb.isolation)
        builder = PromptBuilder(cfg.rollout.prompts,
                                tokenizer=getattr(self.engine, "tokenizer", None))
        self.maker = ExperienceMaker(self.engine, self.sandbox, self.rollout_cfg, cfg.cure,
                                     builder, tester=self.tester)
        self.startup_s = time.perf_counter() - t0

    # ------------------------------------------------------------------ commands
    def rollout(self, cmd: Mapping[str, Any]) -> dict[str, Any]:
        step = int(cmd["step"])
        ids = [int(i) for i in cmd["problem_ids"]]
        bad = [i for i in ids if not 0 <= i < len(self.train)]
        if bad:
            raise ValueError(f"problem_ids: {bad[0]} is out of range (the training split has "
                             f"{len(self.train)} problems)")
        self._progress(cmd, "generate")
        arrays, stats, _ = self.maker.make([self.train[i] for i in ids], ids, step=step,
                                           version=self.version)
        self._progress(cmd, "write")
        t0 = time.perf_counter()
        schema.check_rows(arrays)
        seq = self.buffer.put(arrays, meta=stats, version=self.version,
                              timeout=float(self.spec.get("put_timeout_s", 600.0)))
        return {"seq": seq, "step": step, "version": self.version, "rows": len(arrays["kind"]),
                "write_s": time.perf_counter() - t0}

    def load_weights(self, cmd: Mapping[str, Any]) -> dict[str, Any]:
        from rollout.engines import push_from_channel

        want = int(cmd["version"])
        t0 = time.perf_counter()
        got = push_from_channel(self.engine, self.channel, min_version=want,
                                timeout=float(cmd.get("timeout_s", 60.0)))
        self.version = got
        return {"version": got, "load_s": time.perf_counter() - t0}

    def evaluate(self, cmd: Mapping[str, Any]) -> dict[str, Any]:
        """Held-out metrics on the first ``max_problems`` (0: all) problems of ``split``; with
        ``shard: [index, count]`` only this host's contiguous share of them
        (``rollout.contract.stats.shard_range``; possibly none), to be merged over the hosts
        with ``rollout.contract.stats.merge_eval_metrics``."""
        split = str(cmd.get("split", "eval"))
        if split not in self.splits:
            raise ValueError(f"evaluate: unknown split {split!r} (known: {sorted(self.splits)})")
        shard = cmd.get("shard")
        index, count = (0, 1) if shard is None else check_shard(shard)
        problems = spec_problems(self.splits[split], data_dir=self.data_dir)
        n = int(cmd.get("max_problems", 0))
        if n > 0:
            problems = problems[:n]
        problems = [problems[i] for i in shard_range(len(problems), index, count)]
        self._progress(cmd, "evaluate")
        t0 = time.perf_counter()
        metrics = self.maker.evaluate(problems, self.eval_cfg)
        return {"metrics": metrics, "version": self.version, "shard": [index, count],
                "eval_s": time.perf_counter() - t0}

    def _progress(self, cmd: Mapping[str, Any], phase: str) -> None:
        self.busy = phase
        self.chan.send({"type": "progress", "id": cmd.get("id"), "phase": phase})

    def close(self) -> None:
        for name in ("sandbox", "engine", "tester", "buffer", "channel"):
            obj = getattr(self, name, None)
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # noqa: BLE001 - best effort at exit
                    traceback.print_exc()


def _heartbeat(chan: ServerChannel, period: float, server_ref: list) -> None:
    while True:
        time.sleep(period)
        srv = server_ref[0] if server_ref else None
        try:
            chan.send({"type": "heartbeat", "t": time.time(),
                       "busy": getattr(srv, "busy", None)})
        except OSError:
            os._exit(4)  # cure-train is gone


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rollout.server")
    ap.add_argument("--spec", required=True, help="JSON file written by cure-train")
    ap.add_argument("--ctl-in", type=int, required=True)
    ap.add_argument("--ctl-out", type=int, required=True)
    args = ap.parse_args(argv)
    _die_with_parent()
    with open(args.spec, encoding="utf-8") as f:
        spec = json.load(f)
    chan = ServerChannel(args.ctl_in, args.ctl_out)
    ref: list = []
    threading.Thread(target=_heartbeat, args=(chan, float(spec.get("heartbeat_s", 0.5)), ref),
                     daemon=True, name="heartbeat").start()
    try:
        server = Server(spec, chan)
    except Exception as e:  # noqa: BLE001 - reported to cure-train as one line
        traceback.print_exc()
        chan.send({"type": "fatal", "message": f"start-up failed: {_one_line(e)}"})
        return 1
    ref.append(server)
    chan.send({"type": "ready", "pid": os.getpid(), "n_train": len(server.train),
               "startup_s": server.startup_s, "version": server.version})
    handlers = {"rollout": server.rollout, "load_weights": server.load_weights,
                "evaluate": server.evaluate}
    try:
        while True:
            cmd = chan.recv()
            if cmd is None:  # cure-train closed the pipe: it is gone or done
                return 0
            name = cmd.get("cmd")
            if name == "stop":
                chan.send({"type": "done", "id": cmd.get("id"), "cmd": "stop"})
                return 0
            handler = handlers.get(name)
            t0 = time.perf_counter()
            try:
                if handler is None:
                    raise ValueError(f"unknown command {name!r}")
                result = handler(cmd)
            except Exception as e:  # noqa: BLE001 - cure-train decides what an error means
                traceback.print_exc()
                chan.send({"type": "error", "id": cmd.get("id"), "cmd": name,
                           "message": _one_line(e)})
            else:
                result.update(type="done", id=cmd.get("id"), cmd=name,
                              seconds=time.perf_counter() - t0)
                chan.send(result)
            finally:
                server.busy = None
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
