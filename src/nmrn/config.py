"""Validated, frozen configuration of the NMRN recommender.

:class:`NMRNConfig` is the single source of truth for every hyper-parameter of
:class:`nmrn.training.nmrn.NMRN`. It is frozen (hashable, safe to share), checked on
construction (:class:`~nmrn.errors.ConfigError` names the field, the value and what is allowed),
and round-trips through plain dicts (:meth:`NMRNConfig.to_dict` / :meth:`NMRNConfig.from_dict`)
for checkpoints and config files. Unknown keys fail loudly, with a suggestion.

Examples
--------
>>> cfg = NMRNConfig(dim=32, memory_slots=8)
>>> cfg.dim, cfg.addressing
(32, 'dot')
>>> NMRNConfig.from_dict({"dim": 32, "memory_slot": 8})
Traceback (most recent call last):
...
nmrn.errors.ConfigError: unknown config key 'memory_slot'; did you mean 'memory_slots'?
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nmrn.errors import ConfigError


def _check_device(device: str) -> None:
    """A clear error for a device torch cannot use here (instead of an AssertionError later)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"NMRNConfig.device {device!r} is not a torch device string") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"NMRNConfig.device is {device!r} but CUDA is not available on this machine "
            f"(use device='cpu')"
        )

ADDRESSING = ("dot", "neg_dist")
OPTIMIZERS = ("adagrad", "sgd")
COLD_USER_INIT = ("random", "item_mean")
BASELINES = ("batch", "candidates")


@dataclass(frozen=True)
class NMRNConfig:
    """Hyper-parameters of NMRN (the recommender D of the paper) and of its training.

    Every option of the model that departs from the paper is off by default, so
    ``NMRNConfig()`` is the paper-faithful model (DESIGN §1).

    Parameters
    ----------
    dim
        d, the size of user/item embeddings and of memory rows.
    memory_slots
        H, the number of key/value memory slots.
    margin
        m, the margin of the hinge loss.
    n_candidates
        T, how many negative candidates are drawn per positive event; the hardest one enters the
        hinge, and the count of violators estimates the rank weight.
    lr
        Learning rate of the optimizer.
    batch_size
        Events per mini-batch (gradients flow through memory writes within a mini-batch).
    epochs
        Passes over the history in :meth:`~nmrn.training.nmrn.NMRN.fit`.
    learn_passes
        Gradient passes over each :meth:`~nmrn.training.nmrn.NMRN.learn` call's events (the
        memory state still evolves exactly once per event).
    sampler
        Negative sampler name (see :data:`nmrn.sampling.SAMPLERS`).
    max_norm
        Rows of the user/item tables, the keys and the initial value memory are clipped to
        ``||row|| <= max_norm`` after each step (as CML does).
    grad_clip
        Clip the global gradient norm to this value; ``None`` or ``0`` disables.
    optimizer
        ``"adagrad"`` (row-sparse for the tables) or ``"sgd"``.
    init_std
        Standard deviation of the normal initialisation of embeddings and memories.
    addressing
        ``"dot"`` (``u . k_i``, DKVMN, the default) or ``"neg_dist"`` (``-||u - k_i||``).
    temperature
        Softmax temperature of the address (``softmax(logits / temperature)``).
    learn_temperature
        Learn the temperature (initialised at ``temperature``, kept positive via its log).
    personal_offset
        Score with ``s + u`` instead of ``s`` (a personal offset added to the memory read).
    item_bias
        Add a learned per-item bias ``b_v`` to the distance (``score = -d - b_v``).
    squared_distance
        Use ``||s - v||^2`` instead of ``||s - v||``.
    per_user_memory
        Each user keeps their own value memory (``H x d`` floats per user, i.e.
        ``4 * H * d`` bytes: 5 KiB at H=20, d=64), initialised from the learned global initial
        memory when the user is first seen; otherwise one memory is shared by all users.
    cold_user_init
        ``"random"`` (default) or ``"item_mean"``: a user first seen in ``learn`` starts at the
        mean of the vectors of the items of their first events (clipped to ``max_norm``).
    device
        Torch device of the tables (``"cpu"``, ``"cuda"``, ...).
    seed
        Seed of the model's private random generator.
    sampler_options
        Options of the negative sampler (a :class:`SamplerConfig` or a mapping of its fields;
        ``None``: the defaults).
    """

    dim: int = 64  # d
    memory_slots: int = 20  # H
    margin: float = 0.5  # m in the hinge
    n_candidates: int = 10  # T
    lr: float = 0.05
    batch_size: int = 256
    epochs: int = 10
    learn_passes: int = 1
    sampler: str = "uniform"
    max_norm: float = 1.0
    grad_clip: float | None = None
    optimizer: str = "adagrad"
    init_std: float = 0.1
    addressing: str = "dot"
    temperature: float = 1.0
    learn_temperature: bool = False
    personal_offset: bool = False
    item_bias: bool = False
    squared_distance: bool = False
    per_user_memory: bool = False
    cold_user_init: str = "random"
    device: str = "cpu"
    seed: int = 0
    sampler_options: SamplerConfig | None = None

    def __post_init__(self) -> None:
        for name in ("dim", "memory_slots", "n_candidates", "batch_size", "learn_passes"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("epochs", self.epochs, low=0)
        _check_int("seed", self.seed, low=None)
        for name in ("lr", "max_norm", "temperature", "init_std"):
            _check_float(name, getattr(self, name), positive=True)
        _check_float("margin", self.margin, positive=False)
        if self.margin < 0:
            raise ConfigError(f"NMRNConfig.margin must be >= 0, got {self.margin}")
        if self.grad_clip is not None:
            _check_float("grad_clip", self.grad_clip, positive=False)
            if self.grad_clip < 0:
                raise ConfigError(
                    f"NMRNConfig.grad_clip must be >= 0 or None, got {self.grad_clip}"
                )
        for name, allowed in (
            ("addressing", ADDRESSING),
            ("optimizer", OPTIMIZERS),
            ("cold_user_init", COLD_USER_INIT),
        ):
            _check_choice(name, getattr(self, name), allowed)
        for name in (
            "learn_temperature",
            "personal_offset",
            "item_bias",
            "squared_distance",
            "per_user_memory",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"NMRNConfig.{name} must be a bool, got {type(getattr(self, name)).__name__}"
                )
        if not isinstance(self.sampler, str) or not self.sampler:
            raise ConfigError(f"NMRNConfig.sampler must be a sampler name, got {self.sampler!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"NMRNConfig.device must be a device string, got {self.device!r}")
        _check_device(self.device)
        options = self.sampler_options
        if isinstance(options, Mapping):
            object.__setattr__(self, "sampler_options", SamplerConfig.from_dict(options))
        elif options is not None and not isinstance(options, SamplerConfig):
            raise ConfigError(
                "NMRNConfig.sampler_options must be a SamplerConfig, a mapping or None, "
                f"got {type(options).__name__}"
            )

    # -- dict round trip -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of every field, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> NMRNConfig:
        """Build from a mapping; unknown keys raise :class:`~nmrn.errors.ConfigError`."""
        check_keys(values, cls.field_names(), what="config key")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> NMRNConfig:
        """A copy with some fields changed (validated; unknown names raise ConfigError)."""
        check_keys(changes, self.field_names(), what="config key")
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class SamplerConfig:
    """Options of the negative samplers (DESIGN §2); each sampler reads the fields it uses.

    The paper leaves these open; the defaults are documented in ``docs/sampling.md``.

    Parameters
    ----------
    beta
        Popularity sampler: item ``i`` is drawn with probability proportional to
        ``max(count_i, 1) ** beta`` (0 is uniform, 1 is proportional to popularity).
    n_candidates
        Adversarial: how many uniform candidates G chooses among (0: the recommender's
        ``n_candidates`` T). The recommender's rank estimate uses all of them.
    generator_dim
        Adversarial: size of G's own user/item embeddings E, F.
    hidden
        Adversarial: width of the hidden layer of G's distance MLP.
    temperature
        Adversarial: ``P_G(v') ∝ exp(-d_G(u, v') / temperature)`` over the T candidates.
    lr
        Adversarial: learning rate of G's Adagrad optimizer.
    entropy_weight
        Adversarial: weight of the entropy bonus of ``P_G`` in G's objective (0 disables).
    baseline
        Adversarial: the REINFORCE baseline. ``"batch"`` (the paper's): the mean reward of the
        previous mini-batch. ``"candidates"``: per event, the expected reward under ``P_G`` of
        its own T candidates (whose rewards D computes anyway); it removes the between-user
        spread of rewards from G's gradient.
    warmup_steps
        Adversarial: joint mini-batches, counted from G's first joint step, during which D
        still trains on the hardest of the T uniform candidates while G already learns.
    pretrain_epochs
        Adversarial: passes of G over the history against the frozen D in ``fit``.
    adversarial_epochs
        Adversarial: how many of D's last ``fit`` epochs are joint (D on G's negatives); the
        epochs before them pre-train D on uniform negatives. Capped at ``epochs``.
    init_std
        Adversarial: standard deviation of the normal initialisation of G.
    stats_window
        How many per-step diagnostics a sampler keeps (the oldest are dropped).

    Examples
    --------
    >>> SamplerConfig(temperature=0.5).temperature
    0.5
    >>> SamplerConfig.from_dict({"temprature": 0.5})
    Traceback (most recent call last):
    ...
    nmrn.errors.ConfigError: unknown sampler option 'temprature'; did you mean 'temperature'?
    """

    beta: float = 0.75
    n_candidates: int = 0
    generator_dim: int = 32
    hidden: int = 32
    temperature: float = 1.0
    lr: float = 0.01
    entropy_weight: float = 0.0
    baseline: str = "batch"
    warmup_steps: int = 0
    pretrain_epochs: int = 1
    adversarial_epochs: int = 1
    init_std: float = 0.1
    stats_window: int = 1000

    def __post_init__(self) -> None:
        for name in ("generator_dim", "hidden", "stats_window"):
            _check_int(name, getattr(self, name), low=1, owner="SamplerConfig")
        for name in ("n_candidates", "warmup_steps", "pretrain_epochs", "adversarial_epochs"):
            _check_int(name, getattr(self, name), low=0, owner="SamplerConfig")
        for name in ("temperature", "lr", "init_std"):
            _check_float(name, getattr(self, name), positive=True, owner="SamplerConfig")
        for name in ("beta", "entropy_weight"):
            _check_float(name, getattr(self, name), positive=False, owner="SamplerConfig")
            if getattr(self, name) < 0:
                raise ConfigError(f"SamplerConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.baseline not in BASELINES:
            raise ConfigError(
                f"SamplerConfig.baseline must be one of {', '.join(map(repr, BASELINES))}, "
                f"got {self.baseline!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SamplerConfig:
        """Build from a mapping; unknown keys raise :class:`~nmrn.errors.ConfigError`."""
        check_keys(values, tuple(f.name for f in dataclasses.fields(cls)), what="sampler option")
        return cls(**dict(values))


def check_keys(values: Mapping[str, Any], allowed: tuple[str, ...], *, what: str) -> None:
    """Raise :class:`~nmrn.errors.ConfigError` for the first key not in ``allowed``."""
    for key in values:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(allowed)}"
            raise ConfigError(f"unknown {what} {key!r}{hint}")


def _check_int(name: str, value: Any, *, low: int | None, owner: str = "NMRNConfig") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{owner}.{name} must be an int, got {type(value).__name__} {value!r}")
    if low is not None and value < low:
        raise ConfigError(f"{owner}.{name} must be >= {low}, got {value}")


def _check_float(name: str, value: Any, *, positive: bool, owner: str = "NMRNConfig") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{owner}.{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ConfigError(f"{owner}.{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ConfigError(f"{owner}.{name} must be > 0, got {value}")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"NMRNConfig.{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}{hint}"
        )
