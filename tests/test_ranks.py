"""Extraction under torchrun: the ranks' places from its environment, and two CPU processes (gloo)
on the tiny suite writing the bytes one process writes, also after one of them is killed."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emergence_model.cache import ARGMAX_FILE, LOGPROBS_FILE, PREFIXES_FILE, open_cache
from emergence_model.extract import ExtractConfig, extract_suite, length_batches, tokenize_prefixes
from emergence_model.files import LOCK_FILE
from emergence_model.lm import load_tokenizer
from emergence_model.ranks import Ranks, torchrun_group

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def no_torchrun(monkeypatch):
    for key in (*TORCHRUN_ENV, "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_a_plain_process_is_rank_0_of_1_and_keeps_its_device(no_torchrun):
    ranks = Ranks.from_env()
    assert ranks == Ranks() and not ranks.several and ranks.first
    assert ranks.device("cuda") == "cuda" and ranks.share([1, 2, 3]) == [1, 2, 3]
    # Lightning's own DDP processes set LOCAL_RANK and WORLD_SIZE, not RANK: not torchrun's job
    no_torchrun.setenv("LOCAL_RANK", "1")
    no_torchrun.setenv("WORLD_SIZE", "2")
    assert Ranks.from_env() == Ranks()


def test_a_torchrun_rank_owns_its_local_gpu_and_every_nth_batch(no_torchrun):
    for key, value in zip(TORCHRUN_ENV, ("3", "4", "1", "2"), strict=True):
        no_torchrun.setenv(key, value)
    ranks = Ranks.from_env()
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.local_world_size) == (3, 4, 1, 2)
    assert ranks.several and not ranks.first and ranks.name == "rank3"
    assert ranks.device("cuda") == "cuda:1" and ranks.device("cpu") == "cpu"
    assert ranks.device("cuda:0") == "cuda:0"  # a GPU the user named stays
    assert ranks.share(list(range(10))) == [3, 7]


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not a number"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "do not fit together"),
    ],
)
def test_a_broken_torchrun_environment_is_one_line(no_torchrun, env, message):
    for key, value in env.items():
        no_torchrun.setenv(key, value)
    with pytest.raises(ValueError, match=message):
        Ranks.from_env()


def test_several_ranks_without_torchrun_s_address_are_refused(no_torchrun):
    with pytest.raises(ValueError, match="MASTER_ADDR and MASTER_PORT unset: start the processes"):
        with torchrun_group(Ranks(rank=0, world_size=2)):
            pass


def test_one_rank_steps_alone(no_torchrun):
    ranks = Ranks()
    assert ranks.step(lambda: 7) == 7 and ranks.broadcast("job") == "job"
    with pytest.raises(KeyError):
        ranks.step(lambda: {}["missing"])


def torchrun(script: Path | str, argv, env_extra=None) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2 SCRIPT ARGV` on the CPU, as a user starts it."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(PYTHONPATH=str(ROOT), **(env_extra or {}))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--standalone", str(script), *map(str, argv)]  # on a free port
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def extraction(tiny_suite, tmp_path) -> list:
    """cache_features.py's arguments for the tiny suite as the tiny_cache fixture was made."""
    txt = tmp_path / "p.txt"
    txt.write_text("\n".join(tiny_suite.prefixes) + "\n")
    return ["--models", ",".join(tiny_suite.model_ids), "--dataset", txt, "--batch-size", 5,
            "--device", "cpu", "--no-progress", "--threads", 1]  # fmt: skip


def assert_same_bytes(path: Path, reference: Path) -> None:
    for name in (LOGPROBS_FILE, ARGMAX_FILE, PREFIXES_FILE):
        assert (path / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.slow
def test_two_torchrun_ranks_write_the_bytes_of_one_process(extraction, tiny_cache, tmp_path):
    out = tmp_path / "c"
    run = torchrun(ROOT / "cache_features.py", [*extraction, "--out", out])
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote ") == 1  # the first rank speaks for the job
    assert_same_bytes(out, tiny_cache.path)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("done")) == ["done.npy"]
    assert not (out / LOCK_FILE).exists()
    assert open_cache(out, full_check=True).meta["check"]["status"] == "passed"


# Rank 1 of an extraction killed (SIGKILL: no cleanup) as it starts its first batch of the second
# model, when its rows of the first model are committed; torchrun then stops rank 0.
KILLED_RANK = """
import os, signal, sys
from emergence_model import extract
from emergence_model.cli import exit_on_user_error
from emergence_model.commands.extract import main

real, calls = extract.batch_logprobs, []

def killed_in_the_second_model(*args, **kwargs):
    calls.append(1)
    if os.environ["RANK"] == "1" and len(calls) == 3:  # 24 prefixes, batch 5: 2 batches a model
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

extract.batch_logprobs = killed_in_the_second_model
exit_on_user_error(lambda: main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_torchrun_job_with_a_killed_rank_resumes_to_the_same_bytes(
    extraction, tiny_suite, tiny_cache, tmp_path
):
    out, script = tmp_path / "c", tmp_path / "killed_rank.py"
    script.write_text(KILLED_RANK)
    run = torchrun(script, [*extraction, "--out", out])
    assert run.returncode != 0
    # rank 1's rows of the first model are committed in its own part, the rest is not
    tokenizer = load_tokenizer(tiny_suite.model_ids[-1])
    lengths = [len(ids) for ids in tokenize_prefixes(tokenizer, tiny_suite.prefixes)]
    rank1_rows = np.concatenate(length_batches(lengths, 5)[1::2])
    part = np.load(out / "done.rank1.npy")
    assert np.flatnonzero(part[0]).tolist() == sorted(rank1_rows.tolist())
    assert not part[1:].any()
    # one process resumes the job: it merges the part, and computes the rest in the same batches
    config = ExtractConfig(device="cpu", batch_size=5, progress=False)
    cache = extract_suite(tiny_suite.model_ids, tiny_suite.prefixes, out, config)
    assert_same_bytes(out, tiny_cache.path)
    assert not list(out.glob("done.*.npy")) and cache.meta["check"]["status"] == "passed"
