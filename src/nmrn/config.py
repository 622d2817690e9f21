"""Validated, frozen configuration: one dataclass per concern, checked on construction.

Every model's hyper-parameters live in a frozen dataclass derived from :class:`Config`. A field
says what it accepts with a *check* (:class:`Int`, :class:`Real`, :class:`Bool`, :class:`OneOf`,
...), so validation is declared next to the default instead of written out by hand, and every
refusal is a :class:`~nmrn.errors.ConfigError` naming the class, the field, the value and what
is allowed. Configs round-trip through plain dicts (:meth:`Config.to_dict` /
:meth:`Config.from_dict`, for checkpoints and config files); unknown keys fail loudly, with a
suggestion.

NMRN's configuration is nested (DESIGN §4): :class:`NMRNConfig` holds a :class:`ModelConfig`
(the architecture), a :class:`TrainConfig` (how it is trained) and a :class:`SamplerConfig` (the
negative sampler's options), plus the sampler's name, the device and the seed. Its flat field
names (``dim``, ``lr``, ``sampler``, ...) are unique across the sections, so ``NMRN(dim=32,
lr=0.1)`` and :meth:`NMRNConfig.replace` route each name to its section.

Examples
--------
>>> cfg = NMRNConfig.from_dict({"dim": 32, "memory_slots": 8, "epochs": 3})
>>> cfg.model.dim, cfg.train.epochs, cfg.model.addressing
(32, 3, 'dot')
>>> cfg.replace(lr=0.1).train.lr
0.1
>>> NMRNConfig.from_dict({"dim": 32, "memory_slot": 8})
Traceback (most recent call last):
...
nmrn.errors.ConfigError: unknown config key 'memory_slot'; did you mean 'memory_slots'?
>>> ModelConfig(dim=0)
Traceback (most recent call last):
...
nmrn.errors.ConfigError: ModelConfig.dim must be >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from nmrn.errors import ConfigError

__all__ = [
    "Bool",
    "Config",
    "Int",
    "Maybe",
    "ModelConfig",
    "NMRNConfig",
    "OneOf",
    "Real",
    "DEFAULT_RETRIEVAL",
    "RetrievalConfig",
    "SamplerConfig",
    "SeedConfig",
    "Sub",
    "Text",
    "TrainConfig",
    "check_keys",
    "option",
]

C = TypeVar("C", bound="Config")


# -- checks ----------------------------------------------------------------------------------------
class Check:
    """Validates (and normalises) one field's value; raises :class:`ConfigError`."""

    def __call__(self, where: str, value: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Check):
    """A whole number (``bool`` refused; numpy integers accepted) in ``[low, high]``."""

    low: int | None = None
    high: int | None = None

    def __call__(self, where: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{where} must be an int, got {type(value).__name__} {value!r}")
        value = int(value)
        if self.low is not None and value < self.low:
            raise ConfigError(f"{where} must be >= {self.low}, got {value}")
        if self.high is not None and value > self.high:
            raise ConfigError(f"{where} must be <= {self.high}, got {value}")
        return value


@dataclass(frozen=True)
class Real(Check):
    """A finite number (``bool`` refused) between ``low`` and ``high`` (each open or closed)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __call__(self, where: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{where} must be a number, got {type(value).__name__} {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be finite, got {value}")
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            raise ConfigError(f"{where} must be {'>' if self.low_open else '>='} {self.low}, "
                              f"got {value}")
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            raise ConfigError(f"{where} must be {'<' if self.high_open else '<='} {self.high}, "
                              f"got {value}")
        return value


@dataclass(frozen=True)
class Bool(Check):
    """``True`` or ``False`` (not 0/1)."""

    def __call__(self, where: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be a bool, got {type(value).__name__}")
        return value


@dataclass(frozen=True)
class OneOf(Check):
    """One of a fixed set of strings."""

    choices: tuple[str, ...]

    def __call__(self, where: str, value: Any) -> str:
        if not isinstance(value, str) or value not in self.choices:
            close = difflib.get_close_matches(str(value), self.choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{where} must be one of {', '.join(map(repr, self.choices))}, got {value!r}{hint}"
            )
        return value


@dataclass(frozen=True)
class Text(Check):
    """A non-empty string."""

    def __call__(self, where: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where} must be a non-empty string, got {value!r}")
        return value


@dataclass(frozen=True)
class Maybe(Check):
    """``None``, or what ``check`` accepts."""

    check: Check

    def __call__(self, where: str, value: Any) -> Any:
        return None if value is None else self.check(where, value)


@dataclass(frozen=True)
class Sub(Check):
    """A nested :class:`Config` of class ``cls``, given as one or as a mapping of its fields."""

    cls: type[Config]

    def __call__(self, where: str, value: Any) -> Config:
        if isinstance(value, self.cls):
            return value
        if isinstance(value, Mapping):
            return self.cls.from_dict(value)
        raise ConfigError(
            f"{where} must be a {self.cls.__name__} or a mapping of its fields, "
            f"got {type(value).__name__}"
        )


@dataclass(frozen=True)
class Device(Check):
    """A torch device string that torch can use on this machine."""

    def __call__(self, where: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where} must be a device string, got {value!r}")
        import torch  # only the models that run on torch have a device field

        try:
            dev = torch.device(value)
        except (RuntimeError, ValueError):
            raise ConfigError(f"{where} {value!r} is not a torch device string") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"{where} is {value!r} but CUDA is not available on this machine (use 'cpu')"
            )
        return value


def option(default: Any = dataclasses.MISSING, check: Check | None = None, **kwargs: Any) -> Any:
    """A dataclass field whose value ``check`` validates in :meth:`Config.__post_init__`."""
    return dataclasses.field(default=default, metadata={"check": check}, **kwargs)


# -- the base class --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """Base of every configuration: frozen, validated field by field, dict round trip.

    A subclass declares its fields with :func:`option` and may add cross-field rules in
    :meth:`_validate`.
    """

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is not None:
                value = check(f"{owner}.{f.name}", getattr(self, f.name))
                object.__setattr__(self, f.name, value)
        self._validate()

    def _validate(self) -> None:
        """Rules that involve several fields (raise :class:`ConfigError`)."""

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of every field, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (nested configs as dicts)."""
        return dataclasses.asdict(self)

    def to_params(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this configuration (``cls.from_dict``)."""
        return self.to_dict()

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        """The names :meth:`to_params` gives (the options a model built on this takes)."""
        return tuple(cls().to_params())

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
        """Build from a mapping; unknown keys raise :class:`~nmrn.errors.ConfigError`."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{cls.__name__} needs a mapping, got {type(values).__name__}")
        check_keys(values, cls.field_names(), what=cls._key_word)
        return cls(**dict(values))

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated; unknown names raise ConfigError)."""
        check_keys(changes, self.field_names(), what=self._key_word)
        return dataclasses.replace(self, **changes)

    @classmethod
    def build(cls: type[C], config: Any = None, options: Mapping[str, Any] | None = None) -> C:
        """The one constructor path of a model: ``config`` (an instance, a mapping or
        ``None``) with ``options`` applied on top. Every option given is applied."""
        options = dict(options or {})
        if config is None:
            return cls.from_dict(options)
        if isinstance(config, cls):
            return config.replace(**options) if options else config
        if isinstance(config, Mapping):
            return cls.from_dict({**config, **options})
        raise ConfigError(
            f"config must be a {cls.__name__} or a mapping of its fields, "
            f"got {type(config).__name__}"
        )

    _key_word: ClassVar[str] = "config key"


def check_keys(values: Mapping[str, Any], allowed: tuple[str, ...], *, what: str) -> None:
    """Raise :class:`~nmrn.errors.ConfigError` for the first key not in ``allowed``."""
    for key in values:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(allowed)}"
            raise ConfigError(f"unknown {what} {key!r}{hint}")


# -- NMRN ------------------------------------------------------------------------------------------
ADDRESSING = ("dot", "neg_dist")
OPTIMIZERS = ("adagrad", "sgd")
COLD_USER_INIT = ("random", "item_mean")
BASELINES = ("batch", "candidates")


@dataclass(frozen=True)
class ModelConfig(Config):
    """The architecture of NMRN's recommender D (DESIGN §1): what its tensors are and mean.

    Every option that departs from the paper is off by default, so ``ModelConfig()`` is the
    paper-faithful network.

    Parameters
    ----------
    dim
        d, the size of user/item embeddings and of memory rows.
    memory_slots
        H, the number of key/value memory slots.
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
    init_std
        Standard deviation of the normal initialisation of embeddings and memories.
    context_len
        L, the user's most recent items that join the memory's query (0: the paper's model, the
        query is the user vector alone). With L > 0 the query is
        ``q = u + sum_j context_decay**j v_{i_j}`` over the user's last L items ``i_0`` (the
        most recent), ``i_1``, ...: it addresses the read and the write (and is the personal
        offset), so the read changes as soon as the user acts, and a user with one event
        already reads a meaningful vector.
    context_decay
        gamma, the weight of the j-th most recent item is ``gamma**j``, in (0, 1].
    item_memory_len
        L_I, the size of an item-level memory (RUM, Chen et al., WSDM 2018): the vectors
        ``m_j`` of the user's last L_I items, read by the candidate item ``v`` itself,
        ``r(v) = sum_j softmax_j(a * v . m_j) m_j`` (a learned scale ``a``), and added to the
        memory read: the distance is ``||s + b * r(v) - v||`` (a learned weight ``b``). Items
        that co-occur with the user's recent ones can move towards them: item co-occurrence
        lives in the model. 0 (the default): off. Scoring every item costs ``N * L_I * d``
        more per user.
    """

    dim: int = option(64, Int(low=1))  # d
    memory_slots: int = option(20, Int(low=1))  # H
    addressing: str = option("dot", OneOf(ADDRESSING))
    temperature: float = option(1.0, Real(low=0.0, low_open=True))
    learn_temperature: bool = option(False, Bool())
    personal_offset: bool = option(False, Bool())
    item_bias: bool = option(False, Bool())
    squared_distance: bool = option(False, Bool())
    per_user_memory: bool = option(False, Bool())
    cold_user_init: str = option("random", OneOf(COLD_USER_INIT))
    init_std: float = option(0.1, Real(low=0.0, low_open=True))
    context_len: int = option(0, Int(low=0, high=1000))
    context_decay: float = option(0.5, Real(low=0.0, high=1.0, low_open=True))
    item_memory_len: int = option(0, Int(low=0, high=1000))


@dataclass(frozen=True)
class TrainConfig(Config):
    """How NMRN is trained: the loss, the candidates, the optimizer, the schedule.

    Parameters
    ----------
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
    optimizer
        ``"adagrad"`` (row-sparse for the tables) or ``"sgd"``.
    grad_clip
        Clip the global gradient norm to this value; ``None`` or ``0`` disables.
    max_norm
        Rows of the user/item tables, the keys and the initial value memory are clipped to
        ``||row|| <= max_norm`` after each step (as CML does).
    """

    margin: float = option(0.5, Real(low=0.0))  # m in the hinge
    n_candidates: int = option(10, Int(low=1))  # T
    lr: float = option(0.05, Real(low=0.0, low_open=True))
    batch_size: int = option(256, Int(low=1))
    epochs: int = option(10, Int(low=0))
    learn_passes: int = option(1, Int(low=1))
    optimizer: str = option("adagrad", OneOf(OPTIMIZERS))
    grad_clip: float | None = option(None, Maybe(Real(low=0.0)))
    max_norm: float = option(1.0, Real(low=0.0, low_open=True))


@dataclass(frozen=True)
class SamplerConfig(Config):
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

    _key_word: ClassVar[str] = "sampler option"

    beta: float = option(0.75, Real(low=0.0))
    n_candidates: int = option(0, Int(low=0))
    generator_dim: int = option(32, Int(low=1))
    hidden: int = option(32, Int(low=1))
    temperature: float = option(1.0, Real(low=0.0, low_open=True))
    lr: float = option(0.01, Real(low=0.0, low_open=True))
    entropy_weight: float = option(0.0, Real(low=0.0))
    baseline: str = option("batch", OneOf(BASELINES))
    warmup_steps: int = option(0, Int(low=0))
    pretrain_epochs: int = option(1, Int(low=0))
    adversarial_epochs: int = option(1, Int(low=0))
    init_std: float = option(0.1, Real(low=0.0, low_open=True))
    stats_window: int = option(1000, Int(low=1))


RETRIEVAL_MODES = ("auto", "exact", "ann")
RETRIEVAL_INDEXES = ("hnsw", "ivf")


@dataclass(frozen=True)
class RetrievalConfig(Config):
    """How ``recommend`` finds the top-k of an embedding model (NMRN, BPR): by scoring every
    item (``"exact"``) or from an approximate nearest-neighbour index whose candidates are then
    scored exactly (``"ann"``; needs ``pip install 'nmrn[ann]'``, i.e. faiss). ``score`` is
    always exact. See ``docs/serving.md``, "Approximate retrieval".

    Parameters
    ----------
    mode
        ``"auto"`` (the default): ANN from ``min_items`` known items on, when faiss is installed
        and the model's score is a distance to one query vector; exact otherwise.
        ``"exact"``: always score every item. ``"ann"``: always use the index (an error at
        construction if faiss is missing or the model's score does not allow it).
    candidates
        C, how many items the index returns per read (plus the user's seen items when they are
        excluded); they, and every item changed since the index was built, are scored exactly.
    min_items
        ``"auto"`` uses the index from this many items on. Below ~50,000 items scoring every
        item is as fast (BENCHMARKS.md, "ANN candidates"); between 10,000 and 50,000 the IVF
        defaults measured recall@10 0.96-0.99 for ``nmrn-faithful``'s read (cells coarser than
        the item clusters), so ``auto`` starts at 100,000, where they measured >= 0.995.
    index
        The faiss index: ``"hnsw"`` (a graph, ``IndexHNSWFlat``) or ``"ivf"`` (an inverted file
        of k-means cells, ``IndexIVFFlat``, searched in its ``nprobe`` nearest cells). HNSW's
        greedy search misses items when a read lies between clusters, far from every item (the
        shared-memory read of ``nmrn-faithful``), where IVF scans whole cells (BENCHMARKS.md,
        "ANN candidates").
    nlist
        IVF: the number of cells (``0``: ``4 sqrt(n_items)``).
    nprobe
        IVF: the cells searched per read.
    hnsw_m
        M of the HNSW graph (links per node; memory ``~8 M`` bytes per item on top of the
        vectors).
    ef_construction
        The beam width while building the graph (build time against graph quality).
    ef_search
        The beam width of a search (at least the number of candidates asked for).
    rebuild_fraction
        Rebuild the index once the items changed since its build exceed this share of the
        catalogue (they are scored exactly on every read meanwhile).
    background
        Build the index on a background thread (reads use the previous index, or the exact
        path for the very first build, until it is ready); ``False`` builds it inside the read
        that needs it.
    """

    _key_word: ClassVar[str] = "retrieval option"

    mode: str = option("auto", OneOf(RETRIEVAL_MODES))
    candidates: int = option(100, Int(low=1, high=100_000))
    min_items: int = option(100_000, Int(low=1))
    index: str = option("ivf", OneOf(RETRIEVAL_INDEXES))
    nlist: int = option(0, Int(low=0, high=1_000_000))
    nprobe: int = option(128, Int(low=1, high=1_000_000))
    hnsw_m: int = option(32, Int(low=2, high=256))
    ef_construction: int = option(80, Int(low=1, high=4096))
    ef_search: int = option(256, Int(low=1, high=100_000))
    rebuild_fraction: float = option(0.02, Real(low=0.0, high=1.0, low_open=True))
    background: bool = option(True, Bool())


DEFAULT_RETRIEVAL = RetrievalConfig()
"""The default :class:`RetrievalConfig` (one shared, frozen instance)."""


@dataclass(frozen=True)
class SeedConfig(Config):
    """The configuration of a model whose only option is its seed (the default of
    :attr:`nmrn.training.contract.Recommender.config_class`)."""

    seed: int = option(0, Int())


_SECTIONS: dict[str, type[Config]] = {"model": ModelConfig, "train": TrainConfig}


@dataclass(frozen=True)
class NMRNConfig(Config):
    """Everything that defines an NMRN recommender: ``model``, ``train``, the sampler, device
    and seed. ``NMRNConfig()`` is the paper-faithful model with uniform negatives.

    Parameters
    ----------
    model
        The architecture (:class:`ModelConfig`, or a mapping of its fields).
    train
        The training (:class:`TrainConfig`, or a mapping of its fields).
    sampler
        Negative sampler name (see :data:`nmrn.sampling.SAMPLERS`).
    sampler_options
        The sampler's options (:class:`SamplerConfig`, a mapping of its fields, or ``None``
        for the defaults).
    device
        Torch device of the tables (``"cpu"``, ``"cuda"``, ...).
    seed
        Seed of the model's private random generator.
    retrieval
        How ``recommend`` finds the top-k (:class:`RetrievalConfig`, a mapping of its fields,
        or ``None`` for the defaults: exact below the measured break-even catalogue size).

    Notes
    -----
    The flat names of the sections' fields are unique, so :meth:`from_dict` and
    :meth:`replace` accept them directly (``replace(dim=32)`` changes ``model.dim``);
    :meth:`to_params` gives that flat form, which is what a checkpoint records.
    """

    model: ModelConfig = option(check=Sub(ModelConfig), default_factory=ModelConfig)
    train: TrainConfig = option(check=Sub(TrainConfig), default_factory=TrainConfig)
    sampler: str = option("uniform", Text())
    sampler_options: SamplerConfig = option(
        check=Maybe(Sub(SamplerConfig)), default_factory=SamplerConfig
    )
    device: str = option("cpu", Device())
    seed: int = option(0, Int())
    retrieval: RetrievalConfig | None = option(None, Maybe(Sub(RetrievalConfig)))

    def _validate(self) -> None:
        if self.sampler_options is None:  # None means the defaults
            object.__setattr__(self, "sampler_options", SamplerConfig())

    @classmethod
    def flat_names(cls) -> tuple[str, ...]:
        """Every name :meth:`from_dict` and :meth:`replace` accept: the sections' fields, the
        sections themselves and the top-level fields."""
        names: list[str] = []
        for section in _SECTIONS.values():
            names += section.field_names()
        return (*names, *cls.field_names())

    @classmethod
    def _route(cls, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict]]:
        check_keys(values, cls.flat_names(), what="config key")
        top: dict[str, Any] = {}
        parts: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        for key, value in values.items():
            section = next((s for s, c in _SECTIONS.items() if key in c.field_names()), None)
            if section is None:
                top[key] = value
            else:
                parts[section][key] = value
        return top, parts

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> NMRNConfig:
        """Build from nested sections and/or flat field names (flat names win)."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"NMRNConfig needs a mapping, got {type(values).__name__}")
        top, parts = cls._route(values)
        for name, section in _SECTIONS.items():
            given = top.pop(name, None)
            base = Sub(section)(f"NMRNConfig.{name}", given) if given is not None else section()
            top[name] = base.replace(**parts[name]) if parts[name] else base
        return cls(**top)

    def replace(self, **changes: Any) -> NMRNConfig:
        """A copy with fields changed, by flat name or whole section (validated)."""
        top, parts = self._route(changes)
        for name in _SECTIONS:
            section = top.pop(name, getattr(self, name))
            section = Sub(_SECTIONS[name])(f"NMRNConfig.{name}", section)
            top[name] = section.replace(**parts[name]) if parts[name] else section
        return dataclasses.replace(self, **top)

    def to_params(self) -> dict[str, Any]:
        """The flat form: every section field by name, ``sampler_options`` as a dict (``None``
        when all are the defaults), ``sampler``, ``device`` and ``seed``."""
        out: dict[str, Any] = {}
        for name in _SECTIONS:
            out.update(getattr(self, name).to_dict())
        options = self.sampler_options
        out["sampler"] = self.sampler
        out["sampler_options"] = None if options == SamplerConfig() else options.to_dict()
        out["device"] = self.device
        out["seed"] = self.seed
        out["retrieval"] = None if self.retrieval is None else self.retrieval.to_dict()
        return out
