"""`cure-train --dry_run`: plan a run's memory before renting the machines it needs.

From the config alone, on the mesh it names (real devices, or fake CPU ones with
`--dry_run_devices`), it builds the learner with abstract parameters and optimizer state (no
weights are loaded or allocated), AOT-compiles the learner's device programs for the largest
micro-batch a step can feed (every row at the longest length the rollout side hands over) and
reads each executable's memory analysis. The per-device figure is

    parameters + optimizer state + reference policy + gradient accumulator
      + the largest temporaries of any one program

(the first four stay resident through a step; the programs run one after another). Host shared
memory is what the rollout-server source would create: the weight channel (two buffers of the
whole policy in `rollout.weights_dtype`) and the experience ring. Nothing starts, nothing is
written. Compiled on CPU, the temporaries are XLA CPU's; a GPU or TPU compiler fuses
differently, so treat them as an estimate and keep some headroom.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import jax
import numpy as np

from cure_jax.config import Config
from cure_jax.experience import ExperienceBatch
from cure_jax.learner import Learner
from rollout.contract import schema

GIB = float(1 << 30)


class DoesNotFit(RuntimeError):
    """The plan needs more memory per device than a device holds (cure-train exits 1)."""


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device (one learner device) and on the host; see the module docstring."""

    model: str
    parameters_count: int
    mesh: dict[str, int]
    platform: str
    attention: str
    micro_batch: tuple[int, int]          # rows x tokens of the largest micro-batch (global)
    params: int
    optimizer: int
    reference: int                        # 0 without a KL reference or when on the host
    reference_host: int                   # offload_reference: pinned host memory per device
    gradients: int
    temporaries: int                      # the largest temporaries of one program
    largest_program: str
    programs: dict[str, int]              # program -> its temporaries
    weight_channel: int
    ring_buffer: int

    @property
    def total(self) -> int:
        return self.params + self.optimizer + self.reference + self.gradients + self.temporaries


def without_inputs(config: Any) -> Any:
    """A copy of the ml_collections `config` as the dry run reads it: it loads neither the
    datasets nor the weights, so those fields need not point at anything yet (the embedded
    problems stand in for the datasets, a placeholder for `rollout.model_path`)."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.data.train, c.data.eval = "embedded:train", "embedded:eval"
        if not c.rollout.model_path:
            c.rollout.model_path = "(dry run: not read)"
    return c


def planned_config(cfg: Config, fake_devices: int) -> tuple[Config, str]:
    """The config the plan compiles, and the attention it plans with. On fake CPU devices
    standing in for accelerators: attention "auto" (cuDNN flash attention on a GPU with 16-bit
    compute, splash attention on TPU) or "splash" is planned as "chunked" (the same linear
    memory in the length), where XLA's attention on CPU would hold every L x L score matrix;
    and the layers are scanned, so FSDP gathers one layer's weights at a time as an
    accelerator's memory-aware scheduler does, where XLA's CPU schedule of unrolled layers
    gathers every layer's up front; and without the CPU-only matmul fusion
    (learner.cpu_dot_fusion)."""
    impl = cfg.model.attention_impl
    if not fake_devices:
        return cfg, impl
    changes = {"scan_layers": True}
    if impl in ("auto", "splash"):
        changes["attention_impl"], impl = "chunked", "chunked (standing in for flash attention)"
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changes),
                               learner=dataclasses.replace(cfg.learner, cpu_dot_fusion=False)), impl


def _per_device_bytes(tree: Any) -> int:
    """Bytes of one device's shard of every array of `tree` (ShapeDtypeStructs with shardings)."""
    out = 0
    for a in jax.tree.leaves(tree):
        out += math.prod(a.sharding.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
    return out


def worst_case_batch(cfg: Config, learner: Learner, processes: int) -> ExperienceBatch:
    """This process's rows of the largest step the config allows, every row at the longest
    length, each with its own prompt (nothing for prompt sharing to save), half codes and
    half tests."""
    from cure_jax.sources.rollout_server import longest_row, rows_per_step
    r = cfg.rollout
    if r.source == "cure":
        rows, length = rows_per_step(cfg, processes), longest_row(cfg, learner.model_cfg)
    else:
        s = r.synthetic
        rows, length = -(-s.num_prompts // processes) * s.group_size, s.prompt_len + s.response_len
    vocab = learner.model_cfg.vocab_size
    tokens = np.ones((rows, length), np.int32)
    tokens[:, 0], tokens[:, 1] = np.arange(rows) // vocab % vocab, np.arange(rows) % vocab
    kind = np.where(np.arange(rows) % 2 == 0, schema.KIND_CODE, schema.KIND_TEST)
    zeros = np.zeros(rows, np.float32)
    return ExperienceBatch(tokens=tokens, prompt_len=np.full(rows, 2), response_len=np.full(rows, length - 2),
                           rollout_logprobs=np.zeros((rows, length), np.float32), advantage=zeros,
                           kind=kind, problem_id=np.arange(rows), policy_version=np.zeros(rows, np.int64),
                           reward=zeros)


def plan_memory(cfg: Config, learner: Learner, attention: str = "") -> MemoryPlan:
    """Compile `learner`'s programs for the config's largest step and add up one device's memory."""
    from cure_jax.sources.rollout_server import slot_bytes
    from cure_jax.weight_export import weights_capacity
    from rollout.contract.ring_buffer import RolloutBuffer
    from rollout.contract.weight_channel import WeightChannel

    processes = jax.process_count()
    batch = worst_case_batch(cfg, learner, processes)
    lowered = learner.step_programs(batch)
    programs = {}
    for name, low in lowered.items():
        # Temporaries only: the arguments are the resident state (counted below) and one
        # micro-batch of token ids and masks (small beside them).
        programs[name] = int(low.compile().memory_analysis().temp_size_in_bytes)
    state = learner.abstract_state()
    params = _per_device_bytes(state.params)
    ref = ref_host = 0
    if cfg.learner.kl_coef > 0 and cfg.learner.kl_reference == "initial":
        if learner.ref_memory_kind:
            ref_host = params
        else:
            ref = params
    largest = max(programs, key=programs.get)
    tokens = lowered["accumulate gradients"].args_info[0][3]["tokens"].shape
    return MemoryPlan(
        model=cfg.model.preset or pathlib.Path(cfg.model.hf_dir).name or "inline arch",
        parameters_count=sum(math.prod(a.shape) for a in jax.tree.leaves(state.params)),
        mesh=dict(learner.mesh.shape), platform=jax.devices()[0].platform,
        attention=attention or cfg.model.attention_impl,
        micro_batch=(int(tokens[0]), int(tokens[1])), params=params,
        optimizer=_per_device_bytes(state.opt_state), reference=ref, reference_host=ref_host,
        gradients=params, temporaries=programs[largest], largest_program=largest, programs=programs,
        weight_channel=(WeightChannel.segment_bytes(weights_capacity(learner.model_cfg,
                                                                     cfg.rollout.weights_dtype))
                        if cfg.rollout.source == "cure" else 0),
        ring_buffer=(RolloutBuffer.segment_bytes(cfg.rollout.max_staleness + 1,
                                                 slot_bytes(cfg, learner.model_cfg, processes))
                     if cfg.rollout.source == "cure" else 0))


def device_limit(cfg: Config) -> tuple[float | None, str]:
    """Bytes one learner device holds and where that figure comes from (None: unknown)."""
    if cfg.mesh.device_memory_gb > 0:
        return cfg.mesh.device_memory_gb * GIB, "mesh.device_memory_gb"
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return float(stats["bytes_limit"]), f"reported by {jax.local_devices()[0].device_kind}"
    return None, "unknown"


def report(plan: MemoryPlan, limit: float | None, source: str) -> str:
    """The plan as the lines cure-train prints."""
    def g(b: float) -> str:
        return f"{b / GIB:.3g}"
    mesh = " ".join(f"{k}={v}" for k, v in plan.mesh.items())
    lines = [
        (f"dry run: {plan.model} ({plan.parameters_count / 1e9:.3f}B parameters) on a "
         f"{math.prod(plan.mesh.values())}-device {plan.platform} mesh ({mesh})"),
        (f"largest micro-batch: {plan.micro_batch[0]} rows x {plan.micro_batch[1]} tokens, "
         f"attention {plan.attention}; programs' temporaries (GiB): "
         + ", ".join(f"{k} {g(v)}" for k, v in plan.programs.items())),
        (f"per-device memory (GiB): parameters {g(plan.params)} + optimizer state "
         f"{g(plan.optimizer)} + reference policy {g(plan.reference)} + gradient accumulator "
         f"{g(plan.gradients)} + temporaries {g(plan.temporaries)} ({plan.largest_program}) "
         f"= total {g(plan.total)} GiB"),
    ]
    if plan.reference_host:
        lines.append(f"reference policy in pinned host memory: {g(plan.reference_host)} GiB "
                     f"per device")
    if limit is None:
        lines.append("device memory: unknown (this platform reports none; set "
                     "mesh.device_memory_gb to check the plan against a device)")
    else:
        lines.append(f"device memory: {g(limit)} GiB ({source}); the plan uses "
                     f"{100 * plan.total / limit:.0f}%")
    lines.append(f"host shared memory (/dev/shm, per host): weight channel "
                 f"{g(plan.weight_channel)} GiB + experience ring {g(plan.ring_buffer)} GiB = "
                 f"{g(plan.weight_channel + plan.ring_buffer)} GiB")
    return "\n".join(lines)


def dry_run(cfg: Config, fake_devices: int = 0) -> MemoryPlan:
    """Plan on this process's devices (`fake_devices`: that many fake CPU devices were set up),
    print the report, and check it: DoesNotFit (one line) when a device would not hold it."""
    from cure_jax.train import build_learner
    cfg, attention = planned_config(cfg, fake_devices)
    plan = plan_memory(cfg, build_learner(cfg), attention)
    limit, source = device_limit(cfg)
    print(report(plan, limit, source), flush=True)
    check_fits(plan, limit, source)
    return plan


def check_fits(plan: MemoryPlan, limit: float | None, source: str) -> None:
    """DoesNotFit (one line) when the plan needs more than `limit` bytes per device."""
    if limit is not None and plan.total > limit:
        raise DoesNotFit(f"config.mesh: the plan needs {plan.total / GIB:.2f} GiB per device, "
                         f"more than the {limit / GIB:.2f} GiB a device holds ({source}); use more "
                         f"devices (mesh), a smaller learner.micro_batch_size, a remat policy "
                         f"(model.remat_policy) or learner.offload_reference")
