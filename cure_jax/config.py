"""Validation of the learner-side config sections (`model`, `mesh`, `learner`, `train`,
`rollout.source` / `rollout.synthetic`) into frozen dataclasses.

Every problem is a `ConfigError` whose message is one line naming the dotted field, e.g.
``config.learner.lr: must be > 0 (got -1.0)``. Validation runs before any array is allocated.
Sections owned by other parts of the project (`cure`, `data`, `sandbox`, `eval`, the rest of
`rollout`) are accepted here and validated by their owners.
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from cure_jax import losses

TOP_LEVEL_KEYS = ("seed", "model", "mesh", "learner", "rollout", "cure", "data", "sandbox",
                  "train", "eval")
DTYPES = ("float32", "bfloat16", "float16")
LR_SCHEDULES = ("constant", "cosine", "linear")
OLD_LOGPROBS = ("recompute", "rollout")
KL_REFERENCES = ("initial", "none")
ROLLOUT_SOURCES = ("synthetic", "cure")  # "cure": the rollout server loop of cure_jax.driver


class ConfigError(ValueError):
    """A bad config field or value; the message is one line naming the dotted field."""


def _fail(path: str, msg: str) -> typing.NoReturn:
    raise ConfigError(f"{path}: {msg}")


def _check(cond: bool, path: str, msg: str) -> None:
    if not cond:
        _fail(path, msg)


# --------------------------------------------------------------------------------- sections
@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; -1 means "all the devices left" (at most one axis)."""
    data: int = 1
    fsdp: int = -1
    tp: int = 1

    def validate(self, p: str) -> None:
        for f in ("data", "fsdp", "tp"):
            v = getattr(self, f)
            _check(v == -1 or v >= 1, f"{p}.{f}", f"must be >= 1 or -1 (got {v})")
        _check(sum(getattr(self, f) == -1 for f in ("data", "fsdp", "tp")) <= 1, p,
               "at most one axis may be -1")


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """Optimizer, loss and step-structure settings of the policy-gradient learner."""
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
    micro_batch_size: int = 0       # rows per micro-batch (gradient accumulation); 0 = whole minibatch
    old_logprobs: str = "recompute"
    temperature: float = 1.0
    logprob_chunk: int = 1024       # sequence chunk of the log-prob head (no full logits)
    length_bucket: int = 64         # pad the batch length up to a multiple of this
    offload_reference: bool = False  # keep the frozen reference params in host memory

    def validate(self, p: str) -> None:
        _check(self.lr > 0, f"{p}.lr", f"must be > 0 (got {self.lr})")
        _check(self.lr_schedule in LR_SCHEDULES, f"{p}.lr_schedule",
               f"must be one of {LR_SCHEDULES} (got {self.lr_schedule!r})")
        _check(self.warmup_steps >= 0, f"{p}.warmup_steps", f"must be >= 0 (got {self.warmup_steps})")
        _check(self.decay_steps >= 0, f"{p}.decay_steps", f"must be >= 0 (got {self.decay_steps})")
        if self.lr_schedule != "constant":
            _check(self.decay_steps > 0, f"{p}.decay_steps",
                   f"must be > 0 for lr_schedule {self.lr_schedule!r}")
        _check(0 <= self.final_lr_ratio <= 1, f"{p}.final_lr_ratio", f"must be in [0, 1] (got {self.final_lr_ratio})")
        _check(0 <= self.b1 < 1, f"{p}.b1", f"must be in [0, 1) (got {self.b1})")
        _check(0 <= self.b2 < 1, f"{p}.b2", f"must be in [0, 1) (got {self.b2})")
        _check(self.eps > 0, f"{p}.eps", f"must be > 0 (got {self.eps})")
        _check(self.weight_decay >= 0, f"{p}.weight_decay", f"must be >= 0 (got {self.weight_decay})")
        _check(self.grad_clip >= 0, f"{p}.grad_clip", f"must be >= 0 (got {self.grad_clip})")
        _check(0 <= self.clip_low < 1, f"{p}.clip_low", f"must be in [0, 1) (got {self.clip_low})")
        _check(self.clip_high >= 0, f"{p}.clip_high", f"must be >= 0 (got {self.clip_high})")
        _check(self.dual_clip == 0 or self.dual_clip > 1, f"{p}.dual_clip",
               f"must be 0 (off) or > 1 (got {self.dual_clip})")
        _check(self.log_ratio_clamp > 0, f"{p}.log_ratio_clamp", f"must be > 0 (got {self.log_ratio_clamp})")
        _check(self.kl_coef >= 0, f"{p}.kl_coef", f"must be >= 0 (got {self.kl_coef})")
        _check(self.kl_estimator in losses.KL_ESTIMATORS, f"{p}.kl_estimator",
               f"must be one of {losses.KL_ESTIMATORS} (got {self.kl_estimator!r})")
        _check(self.kl_reference in KL_REFERENCES, f"{p}.kl_reference",
               f"must be one of {KL_REFERENCES} (got {self.kl_reference!r})")
        if self.kl_coef > 0:
            _check(self.kl_reference != "none", f"{p}.kl_reference", "is 'none' but kl_coef > 0")
        _check(self.entropy_coef >= 0, f"{p}.entropy_coef", f"must be >= 0 (got {self.entropy_coef})")
        _check(self.tis_cap >= 0, f"{p}.tis_cap", f"must be >= 0 (got {self.tis_cap})")
        _check(self.agg_mode in losses.AGG_MODES, f"{p}.agg_mode",
               f"must be one of {losses.AGG_MODES} (got {self.agg_mode!r})")
        if self.agg_mode == "seq-mean-token-sum-norm":
            _check(self.norm_constant > 0, f"{p}.norm_constant",
                   "must be > 0 for agg_mode 'seq-mean-token-sum-norm'")
        _check(self.ppo_epochs >= 1, f"{p}.ppo_epochs", f"must be >= 1 (got {self.ppo_epochs})")
        _check(self.minibatches >= 1, f"{p}.minibatches", f"must be >= 1 (got {self.minibatches})")
        _check(self.micro_batch_size >= 0, f"{p}.micro_batch_size", f"must be >= 0 (got {self.micro_batch_size})")
        _check(self.old_logprobs in OLD_LOGPROBS, f"{p}.old_logprobs",
               f"must be one of {OLD_LOGPROBS} (got {self.old_logprobs!r})")
        _check(self.temperature > 0, f"{p}.temperature", f"must be > 0 (got {self.temperature})")
        _check(self.logprob_chunk >= 1, f"{p}.logprob_chunk", f"must be >= 1 (got {self.logprob_chunk})")
        _check(self.length_bucket >= 1, f"{p}.length_bucket", f"must be >= 1 (got {self.length_bucket})")

    def loss_config(self) -> losses.PolicyLossConfig:
        """The loss hyper-parameters as the losses module takes them (0 means off -> None)."""
        return losses.PolicyLossConfig(
            clip_low=self.clip_low, clip_high=self.clip_high,
            dual_clip=self.dual_clip or None, log_ratio_clamp=self.log_ratio_clamp,
            kl_coef=self.kl_coef, kl_estimator=self.kl_estimator, entropy_coef=self.entropy_coef,
            tis_cap=self.tis_cap or None, agg_mode=self.agg_mode,
            norm_constant=self.norm_constant or None)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop, logging, evaluation and checkpoint cadence of cure-train (0 disables a cadence)."""
    steps: int = 100
    log_every: int = 1
    histogram_every: int = 10
    text_every: int = 10
    checkpoint_every: int = 10
    eval_every: int = 0             # CURE loop: evaluate on held-out problems every N steps
    keep_checkpoints: int = 3
    async_checkpoint: bool = True

    def validate(self, p: str) -> None:
        _check(self.steps >= 0, f"{p}.steps", f"must be >= 0 (got {self.steps})")
        for f in ("log_every", "histogram_every", "text_every", "checkpoint_every", "eval_every"):
            v = getattr(self, f)
            _check(v >= 0, f"{p}.{f}", f"must be >= 0, 0 disables (got {v})")
        _check(self.keep_checkpoints >= 1, f"{p}.keep_checkpoints", f"must be >= 1 (got {self.keep_checkpoints})")


@dataclasses.dataclass(frozen=True)
class SyntheticRolloutConfig:
    """Seeded experience source that samples from the policy itself and rewards a target token.

    Prompts are random token ids; each prompt gets `group_size` sampled responses of
    `response_len` tokens; reward = share of response tokens equal to `target_token`,
    z-scored within the group (population std; zero-std groups get advantage 0).
    """
    num_prompts: int = 4
    group_size: int = 4
    prompt_len: int = 8
    response_len: int = 8
    target_token: int = 3
    temperature: float = 1.0

    def validate(self, p: str) -> None:
        for f in ("num_prompts", "group_size", "prompt_len", "response_len"):
            v = getattr(self, f)
            _check(v >= 1, f"{p}.{f}", f"must be >= 1 (got {v})")
        _check(self.target_token >= 0, f"{p}.target_token", f"must be >= 0 (got {self.target_token})")
        _check(self.temperature > 0, f"{p}.temperature", f"must be > 0 (got {self.temperature})")


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Which policy to build: a shipped preset, a HF directory, or inline `arch` fields."""
    preset: str = ""
    hf_dir: str = ""
    arch: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    init_checkpoint: str = ""       # Orbax checkpoint from `cure-convert hf-to-orbax`; "" = random init
    param_dtype: str = "float32"
    dtype: str = "float32"
    attention_impl: str = "auto"
    remat_policy: str = "none"

    def validate(self, p: str) -> None:
        n = sum(bool(x) for x in (self.preset, self.hf_dir, self.arch))
        _check(n == 1, p, f"give exactly one of preset, hf_dir, arch (got {n})")
        _check(self.param_dtype in DTYPES, f"{p}.param_dtype", f"must be one of {DTYPES} (got {self.param_dtype!r})")
        _check(self.dtype in DTYPES, f"{p}.dtype", f"must be one of {DTYPES} (got {self.dtype!r})")

    def qwen_config(self, p: str = "config.model"):
        """Build and validate the QwenConfig (errors name config.model.* fields)."""
        from cure_jax.models.qwen import QwenConfig
        extra = {"attention_impl": self.attention_impl, "remat_policy": self.remat_policy}
        try:
            if self.preset:
                return QwenConfig.preset(self.preset, **extra)
            if self.hf_dir:
                return QwenConfig.from_hf_dir(self.hf_dir, **extra)
            known = {f.name for f in dataclasses.fields(QwenConfig)}
            for k in self.arch:
                _check(k in known, f"{p}.arch.{k}", f"unknown field (known: {', '.join(sorted(known))})")
            for f in dataclasses.fields(QwenConfig):
                if f.default is dataclasses.MISSING and f.name not in self.arch:
                    _fail(f"{p}.arch.{f.name}", "missing required field")
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
class Settings:
    """The validated learner-side view of a whole config."""
    seed: int
    model: ModelSection
    mesh: MeshConfig
    learner: LearnerConfig
    train: TrainConfig
    rollout_source: str
    synthetic: SyntheticRolloutConfig


# --------------------------------------------------------------------------------- building
def _as_dict(section: Any, path: str) -> dict[str, Any]:
    if section is None:
        return {}
    if hasattr(section, "to_dict"):
        return section.to_dict()
    if isinstance(section, Mapping):
        return dict(section)
    _fail(path, f"must be a section (mapping), got {type(section).__name__}")


def _coerce(value: Any, typ: Any, path: str) -> Any:
    if typ is float or typ == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(path, f"must be a number (got {value!r})")
        return float(value)
    if typ is int or typ == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            _fail(path, f"must be an integer (got {value!r})")
        return value
    if typ is bool or typ == "bool":
        if not isinstance(value, bool):
            _fail(path, f"must be true or false (got {value!r})")
        return value
    if typ is str or typ == "str":
        if not isinstance(value, str):
            _fail(path, f"must be a string (got {value!r})")
        return value
    return value


def build_section(cls: type, section: Any, path: str, skip: tuple[str, ...] = (),
                  validate: bool = True):
    """Dataclass `cls` from a config section: unknown fields and bad types are ConfigErrors."""
    d = _as_dict(section, path)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key in skip:
            continue
        if key not in fields:
            _fail(f"{path}.{key}", f"unknown field (known: {', '.join(sorted(fields))})")
        kwargs[key] = _coerce(value, fields[key].type, f"{path}.{key}")
    obj = cls(**kwargs)
    if validate:
        obj.validate(path)
    return obj


def validate_config(config: Any) -> Settings:
    """Validate the learner-side sections of `config`; raise ConfigError naming the field."""
    top = _as_dict(config, "config")
    for key in top:
        _check(key in TOP_LEVEL_KEYS, f"config.{key}",
               f"unknown section (known: {', '.join(TOP_LEVEL_KEYS)})")
    seed = _coerce(top.get("seed", 0), int, "config.seed")
    model_d = _as_dict(top.get("model"), "config.model")
    arch = model_d.pop("arch", {}) or {}
    model = build_section(ModelSection, model_d, "config.model", validate=False)
    model = dataclasses.replace(model, arch=_as_dict(arch, "config.model.arch"))
    model.validate("config.model")
    model.qwen_config("config.model")
    mesh = build_section(MeshConfig, top.get("mesh"), "config.mesh")
    learner = build_section(LearnerConfig, top.get("learner"), "config.learner")
    train = build_section(TrainConfig, top.get("train"), "config.train")
    rollout = _as_dict(top.get("rollout"), "config.rollout")
    source = _coerce(rollout.get("source", "synthetic"), str, "config.rollout.source")
    _check(source in ROLLOUT_SOURCES, "config.rollout.source",
           f"must be one of {ROLLOUT_SOURCES} (got {source!r})")
    synthetic = build_section(SyntheticRolloutConfig, rollout.get("synthetic"), "config.rollout.synthetic")
    return Settings(seed=seed, model=model, mesh=mesh, learner=learner, train=train,
                    rollout_source=source, synthetic=synthetic)
