"""Rank functions of tests/training/test_distributed.py (importable by spawned processes)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from nmrn.errors import NMRNError
from nmrn.training import distributed


def stream(n: int = 3000, n_users: int = 60, n_items: int = 300, seed: int = 0) -> list[Any]:
    """A time-ordered synthetic log: each user has a preferred block of items."""
    rng = np.random.default_rng(seed)
    users = rng.integers(n_users, size=n)
    items = (users * 5 + rng.integers(40, size=n)) % n_items
    return [(f"u{u}", f"i{i}", t) for t, (u, i) in enumerate(zip(users, items, strict=True))]


def model_arrays(model: Any) -> dict[str, np.ndarray]:
    """Every piece of a model's state that training changes (tables, optimizer, generator)."""
    arrays, meta = model._state()
    out = {k: np.asarray(v) for k, v in arrays.items()}
    out["step"] = np.asarray(meta["step"])
    if hasattr(model, "last_loss"):  # BPR's
        out["last_loss"] = np.asarray(model.last_loss)
    return out


def train(out: str, model_name: str, options: dict[str, Any], n_fit: int) -> int:
    """Fit on the first ``n_fit`` events, learn the rest; save this rank's state."""
    from nmrn.models import make_model

    torch.set_num_threads(1)
    events = stream()
    model = make_model(model_name, **options)
    model.fit(events[:n_fit]).learn(events[n_fit:])
    rank = dist.get_rank() if dist.is_initialized() else 0
    np.savez(Path(out) / f"rank{rank}.npz", **model_arrays(model))
    return 0


def small_calls(events: list[Any], n_fit: int) -> list[list[Any]]:
    """Learn calls smaller than the world: one event at a time, then three, then the rest."""
    tail = events[n_fit:]
    return [[e] for e in tail[:4]] + [tail[4:7], tail[7:]]


def train_small_calls(out: str, model_name: str, options: dict[str, Any], n_fit: int) -> int:
    """:func:`train`, with the stream learned in the calls of :func:`small_calls`."""
    from nmrn.models import make_model

    torch.set_num_threads(1)
    events = stream(n=n_fit + 40)
    model = make_model(model_name, **options).fit(events[:n_fit])
    for call in small_calls(events, n_fit):
        model.learn(call)
    np.savez(Path(out) / f"rank{dist.get_rank()}.npz", **model_arrays(model))
    return 0


def train_world_of_one(out: str, model_name: str, options: dict[str, Any], n_fit: int) -> int:
    """:func:`train` inside an initialised gloo group of world size 1."""
    port = distributed.free_port()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        return train(out, model_name, options, n_fit)
    finally:
        dist.destroy_process_group()


def _item_table(model: Any) -> torch.Tensor:
    return model.item_emb if hasattr(model, "item_emb") else model.network.item_emb.data


def _user_table(model: Any) -> torch.Tensor:
    return model.user_emb if hasattr(model, "user_emb") else model.network.user_emb.data


def nan_on_rank(out: str, options: dict[str, Any], bad_rank: int, model_name: str = "bpr") -> int:
    """Fit, then poison this rank's user table (if ``bad_rank``) and learn: record the error."""
    from nmrn.models import make_model

    events = stream()
    model = make_model(model_name, **options).fit(events[:2000])
    before = _item_table(model).clone()
    if dist.get_rank() == bad_rank:
        _user_table(model)[:] = float("nan")
    try:
        model.learn(events[2000:])
    except NMRNError as err:
        unchanged = bool(torch.equal(_item_table(model)[: len(before)], before))
        Path(out, f"rank{dist.get_rank()}.txt").write_text(f"{unchanged}\n{err}")
        return 3
    return 0


def killed_rank(out: str, options: dict[str, Any], victim: int) -> int:
    """Learn in a loop; rank ``victim`` SIGKILLs itself after a few calls; the others record
    the error their next collective raises."""
    from nmrn.models import make_model

    events = stream()
    model = make_model("bpr", **options).fit(events[:1000])
    Path(out, f"pid{dist.get_rank()}").write_text(str(os.getpid()))
    for call in range(10_000):
        if dist.get_rank() == victim and call == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            model.learn(events[1000 + call % 1000 : 1000 + call % 1000 + 256])
        except NMRNError as err:
            Path(out, f"rank{dist.get_rank()}.txt").write_text(f"{type(err).__name__}: {err}")
            return 4
    return 0
