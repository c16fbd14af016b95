"""The config of cure-train: :func:`load_config` turns an ml_collections config (or a dict)
into :class:`Config`, a frozen dataclass of typed sections, validated before any work starts.

Sections: ``model``, ``mesh``, ``learner``, ``train`` (defined here) and ``rollout``, ``cure``,
``data``, ``sandbox``, ``eval`` (defined in :mod:`rollout.contract.sections`, because the
rollout server rebuilds them from its spec). All are built by the one builder of
:mod:`rollout.contract.config`, so every problem is a ``ConfigError`` whose message is one line
naming the dotted field, e.g. ``config.learner.lr: must be > 0 (got -1.0)``.

The dataclass defaults are the one place default values live: :func:`default_config` is the
base every file in ``configs/`` derives from.
"""
from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any, ClassVar

from cure_jax import losses, placement
from rollout.contract.config import (
    ConfigError,
    Section,
    build,
    check,
    defaults,
    fail,
    one_of,
)
from rollout.contract.config import to_dict as _to_dict
from rollout.contract.sections import (
    DataConfig,
    EvalConfig,
    RewardConfig,
    RolloutConfig,
    SandboxConfig,
    SyntheticRolloutConfig,
)

__all__ = [
    "Config", "ConfigError", "LearnerConfig", "MeshConfig", "ModelConfig",
    "SyntheticRolloutConfig", "TrainConfig", "config_file", "config_module", "default_config", "load_config",
]

DTYPES = ("float32", "bfloat16", "float16")
LR_SCHEDULES = ("constant", "cosine", "linear")
OLD_LOGPROBS = ("recompute", "rollout")
ROLE_UPDATES = ("joint", "separate")
KL_REFERENCES = ("initial", "none")
MODEL_INITS = ("pretrained", "random")


@dataclasses.dataclass(frozen=True)
class MeshConfig(Section):
    """Mesh axis sizes; -1 means "all the devices left" (at most one axis). ``devices``: the
    learner's GPUs on this host, comma-separated indices ("" = every GPU not in
    ``rollout.devices``); cure-train applies it (:mod:`cure_jax.placement`).
    ``device_memory_gb``: what one learner device holds, for ``cure-train --dry_run``'s check
    (0 = what the device reports; CPUs report nothing). ``dcn``: slices joined by the
    data-centre network (TPU multi-slice; elsewhere one process per slice), spanned by the data
    axis (:func:`cure_jax.sharding.make_mesh`)."""

    _path: ClassVar[str] = "mesh"

    data: int = 1
    fsdp: int = -1
    tp: int = 1
    devices: str = ""
    device_memory_gb: float = 0.0
    dcn: int = 1

    def validate(self, p: str) -> None:
        check(self.dcn >= 1, f"{p}.dcn", f"must be >= 1 (got {self.dcn})")
        check(self.data == -1 or self.data % self.dcn == 0, f"{p}.dcn",
              f"must divide mesh.data = {self.data} (the data axis spans the slices)")
        check(self.device_memory_gb >= 0, f"{p}.device_memory_gb",
              f"must be >= 0, 0 = what the device reports (got {self.device_memory_gb})")
        for f in ("data", "fsdp", "tp"):
            v = getattr(self, f)
            check(v == -1 or v >= 1, f"{p}.{f}", f"must be >= 1 or -1 (got {v})")
        check(sum(getattr(self, f) == -1 for f in ("data", "fsdp", "tp")) <= 1, p,
              "at most one axis may be -1")
        placement.parse(self.devices, f"{p}.devices")


@dataclasses.dataclass(frozen=True)
class LearnerConfig(Section):
    """Optimizer, loss and step-structure settings of the policy-gradient learner."""

    _path: ClassVar[str] = "learner"

    # optimizer (optax AdamW)
    lr: float = 1e-6
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int = 0            # cosine/linear: steps after warm-up to reach final_lr_ratio
    final_lr_ratio: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0          # global-norm clip; 0 disables
    # loss
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float = 0.0          # 0 disables; else > 1
    log_ratio_clamp: float = 20.0
    kl_coef: float = 0.01
    kl_estimator: str = "k3"
    kl_reference: str = "initial"   # frozen copy of the initial params, or none
    entropy_coef: float = 0.0
    tis_cap: float = 0.0            # truncated IS cap vs rollout log-probs; 0 disables
    agg_mode: str = "token-mean"
    norm_constant: float = 0.0      # for seq-mean-token-sum-norm (e.g. the max response length)
    # step structure
    ppo_epochs: int = 1
    minibatches: int = 1
    # "joint": codes and tests share the optimizer steps of a batch; "separate": the codes'
    # epochs x minibatches first, then the tests', each normalised over its own rows (CURE's
    # reference: two updates per RL step).
    role_updates: str = "joint"
    micro_batch_size: int = 0       # rows per micro-batch (gradient accumulation); 0 = whole minibatch
    old_logprobs: str = "recompute"
    temperature: float = 1.0
    logprob_chunk: int = 1024       # sequence chunk of the log-prob head (no full logits)
    length_bucket: int = 64         # pad the batch length up to a multiple of this
    # Run the responses of one prompt through the model as one packed sequence (the prompt
    # once; cure_jax.prompt_packing): fewer tokens when prompts are long and responses short.
    # Dense masks over the packed length: an attention that takes a mask (not cuDNN).
    share_prompts: bool = False
    offload_reference: bool = False  # keep the frozen reference params in host memory
    # On CPU from hidden size 256 up: YNNPACK fuses each matmul with its elementwise neighbours
    # (cure_jax.learner.compiler_options). Off in plans for accelerators on fake CPU devices.
    cpu_dot_fusion: bool = True
    # On CPU, for models from 16.7M parameters: glibc keeps the memory a step frees for the next
    # one (one arena, no mmap, no trimming; cure_jax.host_malloc), so a step does not page-fault
    # its temporaries in again (17% faster at 34.5M), for ~20% longer compiles and a process
    # that keeps its peak heap. Set by cure-train before JAX starts.
    cpu_keep_freed_memory: bool = True

    def validate(self, p: str) -> None:
        check(self.lr > 0, f"{p}.lr", f"must be > 0 (got {self.lr})")
        one_of(self.lr_schedule, LR_SCHEDULES, f"{p}.lr_schedule")
        check(self.warmup_steps >= 0, f"{p}.warmup_steps", f"must be >= 0 (got {self.warmup_steps})")
        check(self.decay_steps >= 0, f"{p}.decay_steps", f"must be >= 0 (got {self.decay_steps})")
        if self.lr_schedule != "constant":
            check(self.decay_steps > 0, f"{p}.decay_steps",
                  f"must be > 0 for lr_schedule {self.lr_schedule!r}")
        check(0 <= self.final_lr_ratio <= 1, f"{p}.final_lr_ratio",
              f"must be in [0, 1] (got {self.final_lr_ratio})")
        check(0 <= self.b1 < 1, f"{p}.b1", f"must be in [0, 1) (got {self.b1})")
        check(0 <= self.b2 < 1, f"{p}.b2", f"must be in [0, 1) (got {self.b2})")
        check(self.eps > 0, f"{p}.eps", f"must be > 0 (got {self.eps})")
        check(self.weight_decay >= 0, f"{p}.weight_decay", f"must be >= 0 (got {self.weight_decay})")
        check(self.grad_clip >= 0, f"{p}.grad_clip", f"must be >= 0 (got {self.grad_clip})")
        check(0 <= self.clip_low < 1, f"{p}.clip_low", f"must be in [0, 1) (got {self.clip_low})")
        check(self.clip_high >= 0, f"{p}.clip_high", f"must be >= 0 (got {self.clip_high})")
        check(self.dual_clip == 0 or self.dual_clip > 1, f"{p}.dual_clip",
              f"must be 0 (off) or > 1 (got {self.dual_clip})")
        check(self.log_ratio_clamp > 0, f"{p}.log_ratio_clamp",
              f"must be > 0 (got {self.log_ratio_clamp})")
        check(self.kl_coef >= 0, f"{p}.kl_coef", f"must be >= 0 (got {self.kl_coef})")
        one_of(self.kl_estimator, losses.KL_ESTIMATORS, f"{p}.kl_estimator")
        one_of(self.kl_reference, KL_REFERENCES, f"{p}.kl_reference")
        if self.kl_coef > 0:
            check(self.kl_reference != "none", f"{p}.kl_reference", "is 'none' but kl_coef > 0")
        check(self.entropy_coef >= 0, f"{p}.entropy_coef", f"must be >= 0 (got {self.entropy_coef})")
        check(self.tis_cap >= 0, f"{p}.tis_cap", f"must be >= 0 (got {self.tis_cap})")
        one_of(self.agg_mode, losses.AGG_MODES, f"{p}.agg_mode")
        if self.agg_mode == "seq-mean-token-sum-norm":
            check(self.norm_constant > 0, f"{p}.norm_constant",
                  "must be > 0 for agg_mode 'seq-mean-token-sum-norm'")
        check(self.ppo_epochs >= 1, f"{p}.ppo_epochs", f"must be >= 1 (got {self.ppo_epochs})")
        check(self.minibatches >= 1, f"{p}.minibatches", f"must be >= 1 (got {self.minibatches})")
        check(self.micro_batch_size >= 0, f"{p}.micro_batch_size",
              f"must be >= 0 (got {self.micro_batch_size})")
        one_of(self.old_logprobs, OLD_LOGPROBS, f"{p}.old_logprobs")
        one_of(self.role_updates, ROLE_UPDATES, f"{p}.role_updates")
        check(self.temperature > 0, f"{p}.temperature", f"must be > 0 (got {self.temperature})")
        check(self.logprob_chunk >= 1, f"{p}.logprob_chunk", f"must be >= 1 (got {self.logprob_chunk})")
        check(self.length_bucket >= 1, f"{p}.length_bucket", f"must be >= 1 (got {self.length_bucket})")

    def loss_config(self) -> losses.PolicyLossConfig:
        """The loss hyper-parameters as the losses module takes them (0 means off -> None)."""
        return losses.PolicyLossConfig(
            clip_low=self.clip_low, clip_high=self.clip_high,
            dual_clip=self.dual_clip or None, log_ratio_clamp=self.log_ratio_clamp,
            kl_coef=self.kl_coef, kl_estimator=self.kl_estimator, entropy_coef=self.entropy_coef,
            tis_cap=self.tis_cap or None, agg_mode=self.agg_mode,
            norm_constant=self.norm_constant or None)


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
    """Loop, logging, evaluation and checkpoint cadence of cure-train (0 disables a cadence)."""

    _path: ClassVar[str] = "train"

    steps: int = 100
    log_every: int = 1
    histogram_every: int = 10
    text_every: int = 10
    checkpoint_every: int = 10
    eval_every: int = 0             # evaluate on the held-out problems every N steps
    keep_checkpoints: int = 3
    async_checkpoint: bool = True

    def validate(self, p: str) -> None:
        check(self.steps >= 0, f"{p}.steps", f"must be >= 0 (got {self.steps})")
        for f in ("log_every", "histogram_every", "text_every", "checkpoint_every", "eval_every"):
            v = getattr(self, f)
            check(v >= 0, f"{p}.{f}", f"must be >= 0, 0 disables (got {v})")
        check(self.keep_checkpoints >= 1, f"{p}.keep_checkpoints",
              f"must be >= 1 (got {self.keep_checkpoints})")


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    """Which policy to build: a shipped preset, a HF directory, or inline `arch` fields (the
    QwenConfig fields); validating it builds the QwenConfig.

    Where the learner's initial parameters come from (:meth:`weights`): with ``init =
    "pretrained"`` (the default), ``init_checkpoint`` (an Orbax checkpoint), else the
    safetensors of ``hf_dir``, else those of ``rollout.model_path`` (the HF directory the engine
    serves), converted on the fly; a pretrained policy with none of the three, or a directory
    without safetensors weights, is a one-line ConfigError, never a silent random init. A seeded
    random init happens only with ``init = "random"``."""

    _path: ClassVar[str] = "model"

    preset: str = ""
    hf_dir: str = ""
    arch: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    init_checkpoint: str = ""       # Orbax checkpoint from `cure-convert hf-to-orbax` or a run
    init: str = "pretrained"        # "pretrained": weights as above (required); "random": seeded random init
    param_dtype: str = "float32"
    dtype: str = "float32"
    attention_impl: str = "auto"
    remat_policy: str = "none"
    scan_layers: bool = False       # decoder layers as one scan (see QwenConfig)

    def validate(self, p: str) -> None:
        n = sum(bool(x) for x in (self.preset, self.hf_dir, self.arch))
        check(n == 1, p, f"give exactly one of preset, hf_dir, arch (got {n})")
        one_of(self.param_dtype, DTYPES, f"{p}.param_dtype")
        one_of(self.dtype, DTYPES, f"{p}.dtype")
        one_of(self.init, MODEL_INITS, f"{p}.init")
        check(not (self.init == "random" and self.init_checkpoint), f"{p}.init",
              f"is 'random' but {p}.init_checkpoint is set: drop one of them")
        self.qwen_config(p)

    def weights(self, model_path: str = "", p: str = "config") -> tuple[str, str] | None:
        """The learner's initial weights: ``(field, path)`` with field ``model.init_checkpoint``,
        ``model.hf_dir`` or ``rollout.model_path`` (``model_path``, the engine's model), or None
        for a random init (``init = "random"``). A pretrained policy without any of them is a
        ConfigError naming ``{p}.model.init``."""
        if self.init == "random":
            return None
        for field, path in (("model.init_checkpoint", self.init_checkpoint),
                            ("model.hf_dir", self.hf_dir), ("rollout.model_path", model_path)):
            if path:
                return field, path
        fail(f"{p}.model.init", "'pretrained' (the default) needs weights: set "
             f"{p}.model.init_checkpoint, {p}.model.hf_dir or {p}.rollout.model_path, or "
             f"{p}.model.init=random to start from random weights")

    def qwen_config(self, p: str = "config.model"):
        """Build and validate the QwenConfig (errors name config.model.* fields)."""
        from cure_jax.models.qwen import QwenConfig
        extra = {"attention_impl": self.attention_impl, "remat_policy": self.remat_policy,
                 "scan_layers": self.scan_layers}
        try:
            if self.preset:
                return QwenConfig.preset(self.preset, **extra)
            if self.hf_dir:
                return QwenConfig.from_hf_dir(self.hf_dir, **extra)
            known = {f.name for f in dataclasses.fields(QwenConfig)}
            for k in self.arch:
                check(k in known, f"{p}.arch.{k}", f"unknown field (known: {', '.join(sorted(known))})")
            for f in dataclasses.fields(QwenConfig):
                if f.default is dataclasses.MISSING and f.name not in self.arch:
                    fail(f"{p}.arch.{f.name}", "missing required field")
            return QwenConfig(**{**dict(self.arch), **extra})
        except ConfigError:
            raise
        except (TypeError, ValueError, FileNotFoundError) as e:
            msg = str(e).replace("QwenConfig.attention_impl", f"{p}.attention_impl")
            msg = msg.replace("QwenConfig.remat_policy", f"{p}.remat_policy")
            msg = msg.replace("QwenConfig.", f"{p}.arch.")
            if not msg.startswith(p):
                msg = f"{p}: {msg}"
            raise ConfigError(msg.splitlines()[0]) from None


@dataclasses.dataclass(frozen=True)
class Config(Section):
    """A whole, validated cure-train config (see the module docstring)."""

    _path: ClassVar[str] = "config"

    seed: int = 0
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    learner: LearnerConfig = dataclasses.field(default_factory=LearnerConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    cure: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    sandbox: SandboxConfig = dataclasses.field(default_factory=SandboxConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        # The evaluation protocol "auto" depends on the held-out data: resolved at the door.
        object.__setattr__(self, "eval", self.eval.resolved(self.data.eval, f"{self._path}.eval"))
        super().__post_init__()

    def validate(self, p: str) -> None:
        r = self.rollout
        if r.source == "cure" and self.model.preset and not (r.model_path or self.model.hf_dir):
            fail(f"{p}.rollout.model_path", "required with config.model.preset (the HF "
                 "directory or hub id the rollout engine serves)")
        self.model.weights(r.model_path, p)  # a pretrained policy names its initial weights
        # The GPU split, as far as it is known without the host (cure-train's placement.plan
        # checks the rest against this host's GPUs at the door).
        placement.check_lists(self.mesh.devices, r.devices, p)

    def to_dict(self) -> dict[str, Any]:
        """Every section as plain JSON-able dicts (written to <workdir>/config.json; the rollout
        server's spec carries the rollout-side sections)."""
        return _to_dict(self)


def load_config(config: Any) -> Config:
    """The validated Config of ``config`` (an ml_collections ConfigDict, a dict or a Config);
    raises ConfigError (one line naming the field) before any work."""
    return build(Config, config, "config")


def default_config():
    """The base ml_collections config: every field at its dataclass default (fields whose
    default is None are typed placeholders, so they can be set on the command line). It is
    not runnable by itself: a config picks the model (``model.preset``, ``hf_dir`` or ``arch``)."""
    import ml_collections
    from ml_collections import config_dict

    return ml_collections.ConfigDict(defaults(Config, none=config_dict.placeholder))


def config_module(path: str | pathlib.Path):
    """A config file (``configs/*.py``) loaded as a module, as ``--config=path`` loads it."""
    import importlib.util

    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(f"_cure_config_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def config_file(path: str | pathlib.Path, arg: str | None = None):
    """The ConfigDict of a config file: ``get_config(arg)``, or ``get_config()`` without an arg,
    as ``--config=path[:arg]`` gives it. Config files derive from each other through this."""
    mod = config_module(path)
    return mod.get_config(arg) if arg else mod.get_config()
