"""The distributed context of data-parallel training (``docs/scaling.md``), on torch.distributed.

A model consults :func:`context` at each step: ``None`` when no process group is initialised
or its world size is 1, and then the model runs its single-process code, unchanged (so a run
with one rank is the single-process run, bit for bit). Otherwise every rank holds a full
replica, takes its contiguous :func:`shard` of each global mini-batch, and :func:`exchange`
all-gathers the per-rank loss and the touched rows' summed gradients in rank order, so that
every rank applies the same optimizer step and the replicas stay identical.

Process groups come from the usual environment variables (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``: what ``torchrun`` sets) through :func:`init_from_env`, or
from :func:`launch`, which spawns N local ranks on a free loopback port. The backend follows the
device: gloo on CPU, NCCL for CUDA.
"""

from __future__ import annotations

import datetime
import math
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from nmrn.errors import DistributedError

#: Seconds a collective waits for the other ranks before it fails (a rank that died usually
#: closes its sockets and fails the others at once; this bounds the case where it hangs).
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Context:
    """This process's place in a data-parallel group of more than one rank."""

    rank: int
    world_size: int


def context() -> Context | None:
    """The data-parallel context, or ``None``: no process group, or a world of one rank."""
    if not dist.is_available() or not dist.is_initialized():
        return None
    world = dist.get_world_size()
    return None if world == 1 else Context(dist.get_rank(), world)


def backend_for(device: str | torch.device = "cpu") -> str:
    """``"nccl"`` for a CUDA device, ``"gloo"`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(
    device: str | torch.device = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S
) -> Context | None:
    """Join the process group described by ``RANK``/``WORLD_SIZE``/``MASTER_*`` (torchrun's).

    Returns ``None`` without a group when ``WORLD_SIZE`` is unset or 1, so that the caller runs
    the single-process path. Idempotent: a group already initialised is kept.
    """
    if dist.is_available() and dist.is_initialized():
        return context()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: start the ranks with "
            "torchrun or nmrn train --nproc N"
        )
    dist.init_process_group(
        backend_for(device), timeout=datetime.timedelta(seconds=timeout_s)
    )
    return context()


def shutdown() -> None:
    """Leave the process group (a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_writer() -> bool:
    """Whether this process writes files and prints results: rank 0, or no group."""
    ctx = context()
    return ctx is None or ctx.rank == 0


def shard(n: int, ctx: Context) -> tuple[int, int]:
    """The contiguous slice ``[lo, hi)`` of a global batch of ``n`` events for ``ctx.rank``."""
    return ctx.rank * n // ctx.world_size, (ctx.rank + 1) * n // ctx.world_size


def all_gather(ctx: Context, tensor: torch.Tensor, what: str) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (the same shape and dtype on all), in rank order; a rank that
    died or hangs fails this one with :class:`~nmrn.errors.DistributedError` naming ``what``."""
    out = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    try:
        dist.all_gather(out, tensor)
    except Exception as err:  # gloo raises RuntimeError or DistBackendError subclasses
        raise DistributedError(
            f"rank {ctx.rank} of {ctx.world_size}: all-gather of {what} failed: another rank "
            f"exited or did not answer within the group's timeout ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    return out


def exchange(
    ctx: Context,
    loss: float,
    parts: Sequence[tuple[torch.Tensor, torch.Tensor]],
    capacities: Sequence[int],
    what: str = "gradients",
) -> tuple[list[float], list[tuple[torch.Tensor, torch.Tensor]]]:
    """All-gather each rank's loss and sparse ``(rows [n], values [n, k])`` parts.

    Returns the losses in rank order and, per part, every rank's rows and values concatenated
    in rank order (the same tensors on every rank). ``capacities[p]`` bounds part ``p``'s rows on
    any rank (every rank passes the same, e.g. from the largest slice of the batch), so that
    one all-gather of a fixed-size byte buffer carries everything: the row counts and indices
    (int64), then the loss and the values (float32; the loss is a float32 sum, so exact).
    gloo gathers equal sizes only; one padded collective measured faster than a header
    collective plus two exact-size ones (a round trip costs more than the padding's bytes).
    """
    widths = [values.shape[1] for _, values in parts]
    n_int = len(parts) + sum(capacities)
    n_flt = 1 + sum(c * w for c, w in zip(capacities, widths, strict=True))
    ints = torch.zeros(n_int, dtype=torch.int64)
    flts = torch.zeros(n_flt, dtype=torch.float32)
    flts[0] = loss
    i_at, f_at = len(parts), 1
    for p, ((rows, values), cap, w) in enumerate(zip(parts, capacities, widths, strict=True)):
        if len(rows) > cap:
            raise ValueError(f"exchange: part {p} has {len(rows)} rows, capacity {cap}")
        ints[p] = len(rows)
        ints[i_at : i_at + len(rows)] = rows
        flts[f_at : f_at + values.numel()] = values.reshape(-1)
        i_at, f_at = i_at + cap, f_at + cap * w
    buf = torch.cat([ints.view(torch.uint8), flts.view(torch.uint8)])
    gathered = all_gather(ctx, buf, what)
    losses: list[float] = []
    out: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = [([], []) for _ in parts]
    for g in gathered:
        g_ints = g[: n_int * 8].view(torch.int64)
        g_flts = g[n_int * 8 :].view(torch.float32)
        losses.append(float(g_flts[0]))
        i_at, f_at = len(parts), 1
        for p, (cap, w) in enumerate(zip(capacities, widths, strict=True)):
            c = int(g_ints[p])
            out[p][0].append(g_ints[i_at : i_at + c])
            out[p][1].append(g_flts[f_at : f_at + c * w].view(c, w))
            i_at, f_at = i_at + cap, f_at + cap * w
    return losses, [(torch.cat(r), torch.cat(v)) for r, v in out]


def sum_rows(rows: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct ``rows`` (sorted) and the sum of ``values``' entries of each, in order: how a
    rank sums its per-event row gradients, and every rank the ranks' parts of a row."""
    uniq, inv = torch.unique(rows, return_inverse=True)
    return uniq, values.new_zeros((len(uniq), *values.shape[1:])).index_add_(0, inv, values)


def non_finite_ranks(losses: Sequence[float]) -> list[int]:
    """The ranks whose loss is NaN or infinite."""
    return [r for r, x in enumerate(losses) if not math.isfinite(x)]


# -- local launcher ----------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on the loopback interface now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child(
    target: Callable[..., Any], rank: int, world: int, port: int, timeout_s: float,
    args: tuple[Any, ...],
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
    )
    init_from_env(timeout_s=timeout_s)
    try:
        code = target(*args)
    finally:
        shutdown()
    raise SystemExit(code if isinstance(code, int) else 0)


def launch(
    target: Callable[..., Any],
    nproc: int,
    args: tuple[Any, ...] = (),
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    grace_s: float = 10.0,
    deadline_s: float | None = None,
) -> list[int]:
    """Run ``target(*args)`` on ``nproc`` local ranks (spawned processes, gloo on loopback).

    Each rank joins the group before ``target`` runs and leaves it after. Returns the exit
    codes in rank order (``target``'s int result, 0, or 1 after an exception). When a rank
    fails, the others get ``grace_s`` seconds to fail on their own (their next collective
    does), then are terminated by PID; so are all ranks still running after ``deadline_s``
    (``None``: no limit). ``target`` must be importable (spawn start method).
    """
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    spawn = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [
        spawn.Process(target=_child, args=(target, r, nproc, port, timeout_s, args),
                      name=f"nmrn-rank-{r}")
        for r in range(nproc)
    ]
    for p in procs:
        p.start()
    failed_at: float | None = None
    started = time.monotonic()
    try:
        while any(p.is_alive() for p in procs):
            if deadline_s is not None and time.monotonic() - started > deadline_s:
                break
            if failed_at is None and any(p.exitcode not in (None, 0) for p in procs):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                break
            time.sleep(0.05)
    finally:
        for p in procs:  # only ours, by PID
            if p.is_alive():
                p.terminate()
                p.join(5.0)
            if p.is_alive():
                p.kill()
            p.join()
    return [int(p.exitcode) if p.exitcode is not None else -9 for p in procs]


def run_ranks(main: Callable[[list[str]], int], argv: Sequence[str], nproc: int) -> int:
    """Run the command line ``main(argv)`` on ``nproc`` local ranks (``nmrn train --nproc``).

    Each rank sees the group's environment and so runs as one rank of it; the ranks print their
    own errors. Returns 0, or the first failing rank's exit status (1 for a signal).
    """
    codes = launch(main, nproc, (list(argv),))
    for rank, code in enumerate(codes):
        if code != 0:
            print(f"nmrn: error: rank {rank} of {nproc} exited with status {code}",
                  file=sys.stderr)
            return code if code > 0 else 1
    return 0
