"""The processes of one job that torchrun started (on one machine, or on several through its
rendezvous, `srun` starting torchrun on each node): which one this is, the device it owns, and the
few messages they exchange.

torchrun is the launcher: it sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT in each process it starts, and stops them all when one of them dies. `Ranks.from_env`
reads them (a plain process is rank 0 of 1); `torchrun_group` opens the gloo process group the
ranks talk through, which needs no GPU. They exchange small Python objects only (a job id, whether
a step failed): the work itself is split so that no rank waits on another until the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch

T = TypeVar("T")

# How long a rank waits for the others at one exchange. A rank that dies is torchrun's to notice
# (it stops the whole job), so this bounds only the legitimate waits: the slowest rank's last
# model, and the first rank's full check of a large cache while the others wait for its verdict.
EXCHANGE_TIMEOUT = timedelta(hours=24)


class RankError(ValueError):
    """Another rank of this job failed a step; the message names it and says why, in one line
    (that rank reports its own error, with its traceback if it is a bug)."""


@dataclass(frozen=True)
class Ranks:
    """Where this process sits in its job: its global `rank` of `world_size`, and its
    `local_rank` of `local_world_size` on its machine (which device it owns)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls) -> Ranks:
        """This process's place from torchrun's environment; rank 0 of 1 outside torchrun (and
        in the processes Lightning's DDP starts itself, which set LOCAL_RANK but not RANK: they
        are Lightning's to coordinate)."""
        if "RANK" not in os.environ:
            return cls()
        values = {}
        for name, key, default in (
            ("rank", "RANK", 0),
            ("world_size", "WORLD_SIZE", 1),
            ("local_rank", "LOCAL_RANK", 0),
            ("local_world_size", "LOCAL_WORLD_SIZE", None),
        ):
            text = os.environ.get(key)
            try:
                values[name] = default if text is None else int(text)
            except ValueError:
                raise ValueError(
                    f"the environment variable {key}={text!r} is not a number; torchrun sets it "
                    "(unset it to run one process)"
                ) from None
        if values["local_world_size"] is None:
            values["local_world_size"] = values["world_size"]
        ranks = cls(**values)
        if not (0 <= ranks.rank < ranks.world_size and 0 <= ranks.local_rank < ranks.world_size):
            raise ValueError(
                f"RANK={ranks.rank}, LOCAL_RANK={ranks.local_rank} and WORLD_SIZE="
                f"{ranks.world_size} do not fit together; start the processes with torchrun"
            )
        return ranks

    @property
    def several(self) -> bool:
        """Whether this job has more than one process."""
        return self.world_size > 1

    @property
    def first(self) -> bool:
        """Whether this is the job's first process (global rank 0), the one that writes once."""
        return self.rank == 0

    @property
    def name(self) -> str:
        """How files and messages name this process: rank0, rank1, ..."""
        return f"rank{self.rank}"

    def device(self, device: str) -> str:
        """The device this rank runs on: a bare "cuda" becomes this rank's own GPU on its
        machine, cuda:LOCAL_RANK; anything else (cpu, or a GPU named by index) stays."""
        if self.several and device == "cuda":
            return f"cuda:{self.local_rank}"
        return device

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items of a list every rank holds alike: items rank, rank + N, ..."""
        return list(items[self.rank :: self.world_size])

    def broadcast(self, value: T) -> T:
        """The first rank's `value`, on every rank."""
        if not self.several:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def step(self, work: Callable[[], T]) -> T:
        """Run `work` on this rank, then learn whether it failed on any rank: its own error is
        raised as it was; another rank's is a `RankError` naming that rank. Every rank must call
        `step` the same number of times, as every collective."""
        try:
            result, error = work(), None
        except Exception as e:  # Ctrl-C and exits end the process: torchrun stops the rest
            result, error = None, e
        if not self.several:
            if error is not None:
                raise error
            return result
        messages: list[str | None] = [None] * self.world_size
        mine = None if error is None else " ".join(str(error).split()) or type(error).__name__
        torch.distributed.all_gather_object(messages, mine)
        if error is not None:
            raise error
        failed = [(rank, message) for rank, message in enumerate(messages) if message is not None]
        if failed:
            rank, message = failed[0]
            raise RankError(f"rank {rank} of this torchrun job stopped: {message}")
        return result


@contextmanager
def torchrun_group(ranks: Ranks) -> Iterator[Ranks]:
    """The gloo process group of a job of several ranks, for the length of the block (none for
    one process); one that is already open (a caller's own) is used and left open."""
    import torch.distributed as dist

    if not ranks.several or dist.is_initialized():
        yield ranks
        return
    if not dist.is_available():
        raise ValueError("this torch has no torch.distributed; run one process, or --shard K/N")
    missing = [key for key in ("MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={ranks.world_size} but {' and '.join(missing)} unset: start the "
            "processes with torchrun, which sets them"
        )
    dist.init_process_group(
        "gloo", rank=ranks.rank, world_size=ranks.world_size, timeout=EXCHANGE_TIMEOUT
    )
    try:
        yield ranks
    finally:
        dist.destroy_process_group()
