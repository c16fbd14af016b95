"""Data parallelism for local engines: several replicas of one engine, sharing each call.

:class:`DataParallelEngine` starts ``replicas`` engines (rollout.engines.make_engine), each in
its own spawned process on its own group of ``tensor_parallel_size`` GPUs, and splits every
``generate`` call into contiguous shards served concurrently. Prompt ``i`` of a call keeps seed
``seed + i`` whichever replica serves it, so results do not depend on the replica count.
Samples come back as :class:`_Reply` (text, finish reason, response length): enough for
evaluation, which needs no token ids or log-probs.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["DataParallelEngine", "DataParallelError"]


class DataParallelError(RuntimeError):
    """A replica that cannot start, died or failed a call; ``str(err)`` is one line."""


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
            raise DataParallelError(f"engine_options.data_parallel_size: {replicas} replicas x "
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
                raise DataParallelError(f"data-parallel engine replica {r} died (exit code {proc.exitcode})")
            if waited > timeout_s:
                raise DataParallelError(f"data-parallel engine replica {r} did not answer in {timeout_s:g} s")
        try:
            status, payload = conn.recv()
        except EOFError:
            raise DataParallelError(f"data-parallel engine replica {r} died (exit code {proc.exitcode})") from None
        if status == "error":
            raise DataParallelError(f"data-parallel engine replica {r}: {payload}")
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
