"""Differential replay (``harness.judge.replay``): a distributed run's first optimizer steps done
again in one process, from rank 0's initial weights and the global batches the ranks drew."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.judge import replay
from harness.judge.protocol import CheckContext
from harness.ladder.climbing import climb
from harness.spec.job import load_job

ROOT = Path(__file__).resolve().parent.parent
FAULTS = ROOT / "tests" / "data" / "faults"

#: A correct DDP job whose model has dropout: its steps draw random numbers, which one process
#: cannot draw as four ranks drew them.
DROPOUT_JOB = """
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

dist.init_process_group("gloo")
g = torch.Generator().manual_seed(0)
x = torch.randn(128, 8, generator=g)
y = x.sum(1, keepdim=True)
dataset = TensorDataset(x, y)
sampler = DistributedSampler(dataset, shuffle=True, seed=0)
loader = DataLoader(dataset, batch_size=8, sampler=sampler)
torch.manual_seed(0)
layers = [torch.nn.Linear(8, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1)]
model = DistributedDataParallel(torch.nn.Sequential(*layers))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for features, target in loader:
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(features), target).backward()
    optimizer.step()
dist.destroy_process_group()
"""

#: A DDP job whose steps run their forward and backward inside ``optimizer.step(closure)`` (as
#: Lightning's automatic optimization does) and whose loop fetches the next batch before it
#: trains on this one (as accelerate's DataLoaderShard does): its first step consumed two
#: batches, every later step one. ``ALL_REDUCE`` adds an all_reduce of the gradients on top of
#: DDP's own inside the closure (the ddp_plus_manual_allreduce fault).
CLOSURE_JOB = """
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

ALL_REDUCE = {all_reduce}


def one_ahead(loader):
    iterator = iter(loader)
    current = next(iterator)
    for following in iterator:
        yield current
        current = following
    yield current


dist.init_process_group("gloo")
g = torch.Generator().manual_seed(0)
x = torch.randn(512, 8, generator=g)
y = x.sum(1, keepdim=True)
dataset = TensorDataset(x, y)
loader = DataLoader(dataset, batch_size=8, sampler=DistributedSampler(dataset, shuffle=True, seed=0))
torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for features, target in one_ahead(loader):
    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(features), target)
        loss.backward()
        if ALL_REDUCE:
            for p in model.parameters():
                dist.all_reduce(p.grad)
        return loss
    optimizer.step(closure)
dist.destroy_process_group()
"""


#: Correct DDP jobs whose ranks' samples one process cannot load alike: ``augment`` adds noise
#: from Python's ``random`` in the data set; ``pad`` pads each batch to its longest sequence (one
#: process pads the global batch, each rank its own share).
LOADED_OTHERWISE_JOBS = {
    "augment": """
import random
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class Noisy(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(128, 8, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i] + random.gauss(0.0, 0.01)
        return x, self.x[i].sum(0, keepdim=True)


dist.init_process_group("gloo")
random.seed(0)
dataset = Noisy()
loader = DataLoader(dataset, batch_size=8, sampler=DistributedSampler(dataset, shuffle=True, seed=0))
torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for features, target in loader:
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(features), target).backward()
    optimizer.step()
dist.destroy_process_group()
""",
    "pad": """
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, DistributedSampler

g = torch.Generator().manual_seed(0)
sequences = [torch.randn(int(n), 4, generator=g) for n in torch.randint(2, 12, (128,), generator=g)]
dataset = [(s, s.sum().reshape(1)) for s in sequences]


def collate(items):
    return pad_sequence([x for x, _ in items], batch_first=True), torch.stack([y for _, y in items])


dist.init_process_group("gloo")
loader = DataLoader(dataset, batch_size=8, collate_fn=collate, sampler=DistributedSampler(dataset, seed=0))
torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Linear(4, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for padded, target in loader:
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(padded).sum(1), target).backward()
    optimizer.step()
dist.destroy_process_group()
""",
}


def _ladder(job_yaml: Path, records: Path) -> Any:
    return climb(load_job(job_yaml), records, rungs=["single", "local"])


@pytest.mark.slow
def test_gradients_summed_without_dividing_depart_from_one_process_at_step_0(tmp_path: Path) -> None:
    result = _ladder(FAULTS / "grad_sum_no_divide" / "job.yaml", tmp_path)
    first = result.verdict.findings[0]
    assert (first.cause, first.step) == ("replay-differs", 0), [f.title for f in result.verdict.findings]
    assert "ratio 4" in first.evidence[0]  # four ranks' gradients summed, not averaged
    assert "learning-differs" in first.explains


@pytest.mark.slow
def test_the_reference_job_agrees_with_one_process_at_every_replayed_step(tmp_path: Path) -> None:
    result = _ladder(ROOT / "scenarios" / "ddp_csv" / "job.yaml", tmp_path)
    assert result.verdict.outcome == "parity"
    local = result.records[-1]
    [note] = replay.check_run(local, CheckContext())
    assert note.severity == "note"
    assert note.title == "replay: the first 8 optimizer steps agree with one process drawing the same global batches"
    # its ranks leave through os._exit, which runs no exit handler: their ledgers lose no step all the same
    ledgers = {
        r: [s for e in events if e["kind"] == "steps" for s in e["step"]] for r, events in local.rank_events().items()
    }
    assert ledgers == {rank: list(range(64)) for rank in range(4)}  # 4 epochs of 16 steps


@pytest.mark.slow
def test_steps_that_draw_random_numbers_are_left_out_never_a_divergence(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(DROPOUT_JOB)
    (tmp_path / "job.yaml").write_text(
        "name: dropout\nsource_dir: src\nentry_point: train.py\ndistribution: torchrun\n"
        "instance_count: 2\nprocesses_per_host: 2\n"
    )
    result = _ladder(tmp_path / "job.yaml", tmp_path / "records")
    assert result.verdict.outcome == "parity"
    [note] = replay.check_run(result.records[-1], CheckContext())
    assert note.title == "replay: nothing compared"
    assert "step 0 and after: the step drew random numbers" in note.evidence[-1]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("mine", "ranks", "sums", "left_out"),
    [
        (2.0, [1.0, 3.0], False, None),  # a mean loss: one process's over both halves is their mean
        (4.0, [1.0, 3.0], False, "is not the ranks' mean"),  # summed: compared only where told the global batch
        (4.0, [1.0, 3.0], True, None),
        (8.0, [1.0, 3.0], True, "is not the ranks' mean"),  # another function of the samples
        (None, [1.0, 3.0], False, "no loss to compare"),
    ],
)
def test_gradients_compare_only_where_the_loss_is_a_mean_or_a_sum_of_the_global_batch(
    mine: float | None, ranks: list[float], sums: bool, left_out: str | None
) -> None:
    shares = [{"loss": loss, "indices": [[0, 1, 2, 3]]} for loss in ranks]
    said = replay._loss_not_a_mean({"loss": mine}, shares, sums=sums)
    assert said is None if left_out is None else left_out in (said or "")


def _job(tmp_path: Path, source: str) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(source)
    (tmp_path / "job.yaml").write_text(
        "name: replayed\nsource_dir: src\nentry_point: train.py\ndistribution: torchrun\n"
        "instance_count: 2\nprocesses_per_host: 2\n"
    )
    return tmp_path / "job.yaml"


@pytest.mark.slow
def test_steps_taken_in_a_closure_from_a_loader_fetching_one_ahead_are_replayed(tmp_path: Path) -> None:
    """The step's loss and gradients are read once its closure has run (not before: they would
    be the previous step's), and the batches are handed out in the order the ranks drew them."""
    result = _ladder(_job(tmp_path, CLOSURE_JOB.format(all_reduce=False)), tmp_path / "records")
    assert result.verdict.outcome == "parity", [f.title for f in result.verdict.findings]
    [note] = replay.check_run(result.records[-1], CheckContext())
    assert note.title == "replay: the first 8 optimizer steps agree with one process drawing the same global batches"


@pytest.mark.slow
def test_an_all_reduce_inside_the_closure_departs_from_one_process_at_step_0(tmp_path: Path) -> None:
    result = _ladder(_job(tmp_path, CLOSURE_JOB.format(all_reduce=True)), tmp_path / "records")
    first = result.verdict.findings[0]
    assert (first.cause, first.step) == ("replay-differs", 0), [f.title for f in result.verdict.findings]
    assert "ratio 4" in first.evidence[0]


@pytest.mark.unit
def test_a_replay_whose_processes_recorded_as_one_is_left_out() -> None:
    """A job that starts its ranks itself (a trainer told devices=2) before any rank variable is
    set runs several processes on the single rung, recorded as one: nothing of it is compared."""
    replayed = [
        {"kind": "dist_init", "world_size": 2, "rank": 1},
        {"kind": "dist_init", "world_size": 2, "rank": 0},
        {"kind": "replay", "weights": "loaded"},
        {"kind": "replay", "loader": 1},
        {"kind": "replay", "draw": 0, "data": "equal"},
    ]
    said = replay._left_out(replayed, 0, {"loaders": [1]})
    assert said is not None and "2 processes of the job recorded as one" in said
    alone = [e for e in replayed if e["kind"] != "dist_init"]
    assert replay._left_out(alone, 0, {"loaders": [1]}) is None
    assert "another loader" in (replay._left_out(alone, 0, {"loaders": [0]}) or "")
    assert "drew no replayed batch" in (replay._left_out(alone, 1, {"loaders": [1]}) or "")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LOADED_OTHERWISE_JOBS))
def test_samples_one_process_loads_otherwise_by_chance_or_padding_are_left_out(name: str, tmp_path: Path) -> None:
    # Randomness while loading, or shapes that depend on the batch, are no evidence that the ranks'
    # data set differs from one process's: never a divergence.
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(LOADED_OTHERWISE_JOBS[name])
    (tmp_path / "job.yaml").write_text(
        f"name: {name}\nsource_dir: src\nentry_point: train.py\ndistribution: torchrun\n"
        "instance_count: 2\nprocesses_per_host: 2\n"
    )
    result = _ladder(tmp_path / "job.yaml", tmp_path / "records")
    assert result.verdict.outcome == "parity", [f.title for f in result.verdict.findings]
    [note] = replay.check_run(result.records[-1], CheckContext())
    assert note.title == "replay: nothing compared"
    assert "step 0 and after: the samples differ when drawn again" in note.evidence[-1]
