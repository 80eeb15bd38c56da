"""The probe inside one Python process, started here with and without it: the same stdout, the
same stderr (each on its own pipe), the same exit code; and what the probe records of it.

Faster than a rung (tests/test_probe_transparency.py runs whole jobs): each program is a few
lines that reach one hook the way a library does (accelerate's ``[TensorInformation, False]``
broadcast, a keyword collective, a batch the probe cannot digest, a forked child waited for, a
spawned child and a helper that inherit ``RANK``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from harness.backends.hosts import PROBE_DIR
from harness.record.run_record import read_events

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # real interpreters with torch, a few seconds each

#: A world of one rank on gloo, as torchrun would start it (RANK in the environment).
PRELUDE = """
import os, sys, tempfile
import torch
import torch.distributed as dist
dist.init_process_group("gloo", init_method="file://" + os.path.join(tempfile.mkdtemp(), "store"), rank=0,
                        world_size=1)
"""


def program(body: str) -> str:
    """``body`` (indented as in a test) after the prelude."""
    return PRELUDE + textwrap.dedent(body)


def run(code: str, tmp: Path, *, probe: bool, env: dict[str, str | None] | None = None, timeout: float = 120):
    """``code`` in a fresh interpreter, with the probe (``HARNESS_PROBE_DIR`` under ``tmp``) or
    without it; stdout and stderr captured apart. ``env``: variables to set (None: to unset)."""
    record = tmp / ("on" if probe else "off")
    record.mkdir(parents=True, exist_ok=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HARNESS_")}
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", **(env or {})}.items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    if probe:
        environment.update(
            {
                "HARNESS_PROBE_DIR": str(record),
                "HARNESS_HOST": "algo-1",
                "PYTHONPATH": os.pathsep.join(p for p in (str(PROBE_DIR), os.environ.get("PYTHONPATH")) if p),
            }
        )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp,
        timeout=timeout,
    )


def processes(tmp: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((tmp / "on" / "processes").glob("*.json"))]


def events(tmp: Path, rank: int = 0) -> list[dict[str, Any]]:
    return list(read_events(tmp / "on" / "ranks" / f"rank-{rank}.jsonl"))


def without_probe_frames(text: str) -> str:
    """A traceback without the probe's frames (the one difference the probe documents), where
    torch prefixes each line with ``[rankN]:`` or not."""
    out, skipping = [], False
    for line in text.splitlines():
        bare = re.sub(r"^\[rank\d+\]: ?", "", line)
        if bare.lstrip().startswith('File "') and "_harness_probe.py" in bare:
            skipping = True
            continue
        if skipping and bare.startswith("    "):
            continue
        skipping = False
        out.append(line)
    return "\n".join(out)


def assert_same(tmp: Path, code: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    on, off = run(code, tmp, probe=True, **kwargs), run(code, tmp, probe=False, **kwargs)
    assert (on.returncode, on.stdout) == (off.returncode, off.stdout), (on.stderr, off.stderr)
    assert without_probe_frames(on.stderr) == without_probe_frames(off.stderr)
    return on


def probe_errors(tmp: Path) -> list[str]:
    return [e for p in processes(tmp) for e in p.get("probe_errors", [])]


def test_an_exception_the_jobs_signal_handler_raises_in_the_probes_work_reaches_the_job(tmp_path: Path) -> None:
    """torchrun's and the elastic agent's workers turn SIGTERM into ``SignalException``; where the
    signal lands while the probe is at work, the probe kept it as its own error and the worker
    went on (a corpus run under load: the agent's SIGTERM during the probe's wait for its tee)."""
    code = textwrap.dedent("""
    import os, signal
    import _harness_probe

    class SignalException(Exception):
        pass

    def handler(signum, frame):
        raise SignalException(f"Process {os.getpid()} got signal: {signum}")

    signal.signal(signal.SIGTERM, handler)
    try:
        _harness_probe._quietly("work", os.kill, os.getpid(), signal.SIGTERM)
    except SignalException:
        print("the job's handler reached the job", flush=True)
    """)
    on = run(code, tmp_path, probe=True)
    assert on.returncode == 0 and "the job's handler reached the job" in on.stdout, on.stderr
    assert not probe_errors(tmp_path)


def test_a_list_whose_first_element_has_a_shape_is_no_tensor_list(tmp_path: Path) -> None:
    """accelerate's DataLoaderDispatcher broadcasts ``[TensorInformation(shape, dtype), False]``:
    the probe measured every element because the first had ``.shape``, and raised into the job."""
    code = program("""
    from collections import namedtuple
    Info = namedtuple("Info", "shape dtype")
    info = [Info(torch.Size([8]), torch.int64), False]
    dist.broadcast_object_list(info, src=0)
    print(info, flush=True)
    print(dist.all_reduce(tensor=torch.ones(2)), flush=True)
    print("stderr stays stderr", file=sys.stderr, flush=True)
    dist.destroy_process_group()
    """)
    on = assert_same(tmp_path, code)
    assert "stderr stays stderr" in on.stderr and "stderr stays stderr" not in on.stdout
    assert not probe_errors(tmp_path)
    calls = [e for e in events(tmp_path) if e["kind"] == "collective"]
    assert [c["op"] for c in calls] == ["broadcast_object_list", "all_reduce"]  # the inner broadcasts: not calls
    assert calls[0]["objects"] == 2 and calls[1]["shapes"] == [[2]] and calls[1]["dtypes"] == ["float32"]
    log = (tmp_path / "on" / "ranks" / "rank-0.log").read_text()
    assert "stderr stays stderr" in log and "Info(shape=" in log


def test_what_the_probe_cannot_measure_stays_with_the_probe(tmp_path: Path) -> None:
    """A batch whose repr raises: the job goes on, the probe notes its own failure."""
    code = program("""
    class Opaque:
        def __repr__(self):
            raise RuntimeError("no repr for you")
    loader = torch.utils.data.DataLoader(range(4), batch_size=2, collate_fn=lambda items: Opaque())
    print(sum(1 for _ in loader), "batches", flush=True)
    dist.destroy_process_group()
    """)
    assert_same(tmp_path, code)
    errors = probe_errors(tmp_path)
    assert len(errors) == 2 and all("no repr for you" in e for e in errors)


def test_wrappers_look_like_what_they_wrap(tmp_path: Path) -> None:
    code = """
    import argparse, inspect, pickle, sys
    import torch
    import torch.distributed as dist
    from torch.distributed import distributed_c10d
    from torch.utils.data import dataloader
    print(pickle.loads(pickle.dumps(dist.all_reduce)) is dist.all_reduce)
    print(pickle.loads(pickle.dumps(torch.save)) is torch.save)
    print(dist.all_reduce.__name__, dist.all_reduce.__qualname__, dist.all_reduce.__module__)
    print(inspect.signature(dist.broadcast_object_list))
    print(inspect.signature(torch.save))
    print(inspect.signature(dataloader._BaseDataLoaderIter.__next__))
    parse = argparse.ArgumentParser.parse_known_args
    print(parse.__qualname__, inspect.signature(parse))
    print(type(distributed_c10d.__loader__).__name__, type(distributed_c10d.__spec__.loader).__name__)
    print(inspect.getsource(dist.barrier).splitlines()[0])
    print(sys.excepthook is sys.__excepthook__, sys.exit.__name__)
    print(dist.P2POp(dist.isend, torch.ones(1), 0).op is dist.isend)
    """
    assert_same(tmp_path, code)


def test_a_failing_collective_fails_alike(tmp_path: Path) -> None:
    code = program("""
    dist.all_reduce(torch.ones(2), group="not a group")
    """)
    on = assert_same(tmp_path, code)
    assert on.returncode == 1 and "Traceback" in on.stderr
    (record,) = [p for p in processes(tmp_path) if p.get("rank") == "0"]
    assert record["exit_code"] == 1 and record["exception"].startswith(("TypeError", "ValueError", "AttributeError"))


def test_exit_codes_and_sys_exit(tmp_path: Path) -> None:
    assert_same(tmp_path, program("print('leaving', flush=True)\nsys.exit(3)\n"))
    (record,) = [p for p in processes(tmp_path) if p.get("rank") == "0"]
    assert record["exit_code"] == 3 and "exception" not in record


def test_a_job_that_waits_for_every_child_never_waits_for_the_tee(tmp_path: Path) -> None:
    code = program("""
    child = os.fork()
    if child == 0:
        os._exit(5)
    codes = []
    while True:
        try:
            codes.append(os.waitstatus_to_exitcode(os.wait()[1]))
        except ChildProcessError:
            break
    print("children", codes, flush=True)
    dist.destroy_process_group()
    """)
    on = assert_same(tmp_path, code, timeout=60)
    assert on.stdout == "children [5]\n"


def test_children_that_inherit_rank_are_not_the_rank(tmp_path: Path) -> None:
    """A spawned multiprocessing child and a Python helper inherit RANK; neither tees into the
    rank's log, writes its events or claims the rank; the helper's streams stay apart."""
    code = """
    import multiprocessing, os, subprocess, sys, tempfile
    import torch.distributed as dist
    def child():
        print("spawned child", flush=True)
    if __name__ == "__main__":  # the spawned child imports this file again: it must not join the world
        dist.init_process_group("gloo", init_method="file://" + os.path.join(tempfile.mkdtemp(), "store"), rank=0,
                                world_size=1)
        process = multiprocessing.get_context("spawn").Process(target=child)
        process.start()
        process.join()
        helper = subprocess.run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"],
                                capture_output=True, text=True)
        print(process.exitcode, repr(helper.stdout), repr(helper.stderr), flush=True)
        dist.barrier()
        dist.destroy_process_group()
    """
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(code))
    on = assert_same(tmp_path, f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')")
    assert "0 'out\\n' 'err\\n'" in on.stdout
    records = processes(tmp_path)
    assert [p["pid"] for p in records if p.get("rank") == "0"] == [min(p["pid"] for p in records)]
    assert len([p for p in records if p.get("inherited_rank") == "0"]) >= 2  # the spawned child, the helper
    beat = json.loads((tmp_path / "on" / "ranks" / "rank-0.heartbeat").read_text())
    assert beat["pid"] == min(p["pid"] for p in records)
    assert [e["op"] for e in events(tmp_path) if e["kind"] == "collective"] == ["barrier"]


def test_a_crashed_multiprocessing_child_records_its_exception(tmp_path: Path) -> None:
    code = """
    import multiprocessing, traceback
    def crash():
        raise ValueError("shard 3 is empty")
    def handled():
        try:
            raise KeyError("expected")
        except KeyError:
            traceback.print_exc()
    if __name__ == "__main__":
        for target in (crash, handled):
            process = multiprocessing.get_context("fork").Process(target=target)
            process.start()
            process.join()
            print(target.__name__, process.exitcode, flush=True)
    """
    assert_same(tmp_path, code, env={"RANK": None})
    children = {p["mp_target"]: p for p in processes(tmp_path) if p.get("mp_target")}
    assert children["crash"]["exit_code"] == 1 and children["crash"]["exception"] == "ValueError: shard 3 is empty"
    assert children["handled"]["exit_code"] == 0 and "exception" not in children["handled"]


def test_point_to_point_events_name_their_peer(tmp_path: Path) -> None:
    code = """
    import os, sys, tempfile
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    def rank(me, store):
        dist.init_process_group("gloo", init_method="file://" + store, rank=me, world_size=2)
        other = 1 - me
        work = dist.isend(torch.full((3,), float(me)), dst=other)
        into = torch.zeros(3)
        dist.recv(into, src=other)
        work.wait()
        box = torch.zeros(2)
        ops = [dist.P2POp(dist.isend, torch.ones(2), other), dist.P2POp(dist.irecv, box, other)]
        for request in dist.batch_isend_irecv(ops):
            request.wait()
        for turn in range(2):
            if turn == me:
                print(me, into.tolist(), box.tolist(), flush=True)
            dist.barrier()
        dist.destroy_process_group()
    if __name__ == "__main__":
        mp.spawn(rank, args=(os.path.join(tempfile.mkdtemp(), "store"),), nprocs=2)
    """
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(code))
    on = assert_same(
        tmp_path, f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')", env={"RANK": None}
    )
    assert on.stdout.splitlines() == ["0 [1.0, 1.0, 1.0] [1.0, 1.0]", "1 [0.0, 0.0, 0.0] [1.0, 1.0]"]
    # Each rank learnt its rank at init_process_group, with gloo's threads running: its tee is a
    # new interpreter, not a fork, and copies the rank's lines all the same.
    assert "1 [0.0, 0.0, 0.0] [1.0, 1.0]" in (tmp_path / "on" / "ranks" / "rank-1.log").read_text()
    calls = [e for e in events(tmp_path, 1) if e["kind"] == "collective"]
    assert [(c["op"], c.get("dir"), c.get("peer")) for c in calls] == [
        ("isend", "send", 0),
        ("recv", "recv", 0),
        ("batch_isend_irecv", None, None),
        ("barrier", None, None),
        ("barrier", None, None),
    ]
    assert [(op["dir"], op["peer"], op["shape"]) for op in calls[2]["ops"]] == [("send", 0, [2]), ("recv", 0, [2])]


def test_the_ledgers_record_what_each_step_drew_computed_and_wrapped(tmp_path: Path) -> None:
    """The data ledger holds exactly the indices the sampler handed out per epoch (an iterator's
    exhaustion closes the epoch, a loop left early leaves it unfinished), the loss ledger the
    value ``backward()`` ran on and the gradient norm, the model ledger the wrapped model."""
    code = program(
        """
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data import DataLoader, TensorDataset
        torch.manual_seed(0)
        data = TensorDataset(torch.randn(50, 3), torch.randn(50, 1))
        loader = DataLoader(data, batch_size=8, shuffle=True)
        model = DistributedDataParallel(torch.nn.Linear(3, 1))
        model.register_buffer("scale", torch.ones(1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for epoch in range(2):
            for x, y in loader:
                optimizer.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                optimizer.step()
        for x, y in loader:
            break
        print(round(loss.item(), 4), flush=True)
        """
    )
    on = assert_same(tmp_path, code)
    assert not probe_errors(tmp_path)
    recorded = events(tmp_path)
    epochs = [e for e in recorded if e["kind"] == "data_epoch"]
    assert [(e["epoch"], e["finished"], e["batches"], e["samples"]) for e in epochs] == [
        (0, True, 7, 50),
        (1, True, 7, 50),
        (2, False, 1, 8),
    ]
    import base64
    import zlib

    bits = int.from_bytes(zlib.decompress(base64.b64decode(epochs[0]["bitmap"])), "little")
    assert bits == (1 << 50) - 1 and epochs[0]["shuffle"] is True and epochs[0]["sampler"] == "RandomSampler"
    assert epochs[0]["order"] != epochs[1]["order"]
    (steps,) = [e for e in recorded if e["kind"] == "steps"]  # written at exit: fewer than 64
    assert steps["step"] == list(range(14)) and steps["backwards"] == [1] * 14 and steps["lr"] == [0.1] * 14
    assert all(norm > 0 for norm in steps["grad_norm"]) and steps["samples"][:7] == [8] * 6 + [2]
    assert round(steps["loss"][-1], 4) == float(on.stdout.split()[-1])
    (model,) = [e for e in recorded if e["kind"] == "model"]
    assert model["wrapper"] == "DistributedDataParallel" and model["entries"][:2] == [
        ["weight", [1, 3], "float32", "cpu", True],
        ["bias", [1], "float32", "cpu", True],
    ]


def test_the_rank_state_a_wrapper_never_synchronises_is_recorded(tmp_path: Path) -> None:
    """What the ranks must hold alike and no wrapper synchronises: tensors kept as plain module
    attributes, loss modules' weights and settings, a communication hook, optimizer tensors no
    wrapper holds (a tensor stepped beside the model here) and the order a partitioning optimizer
    holds its parameters in."""
    code = program(
        """
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
        from torch.nn.parallel import DistributedDataParallel
        torch.manual_seed(0)
        class Features(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.projection = torch.randn(3, 4)  # neither parameter nor buffer
                self.head = torch.nn.Linear(4, 1)
            def forward(self, x):
                return self.head(x @ self.projection)
        model = DistributedDataParallel(Features())
        model.register_comm_hook(state=None, hook=default_hooks.fp16_compress_hook)
        stray = torch.zeros(5, requires_grad=True)
        from torch.distributed.optim import ZeroRedundancyOptimizer
        optimizer = ZeroRedundancyOptimizer([*model.parameters(), stray], optimizer_class=torch.optim.SGD, lr=0.1)
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([3.0]))
        for _ in range(2):
            optimizer.zero_grad()
            loss = loss_fn(model(torch.randn(8, 3)).squeeze(1), torch.ones(8))
            loss.backward()
            optimizer.step()
        print(round(loss.item(), 4), flush=True)
        """
    )
    assert_same(tmp_path, code)
    assert not probe_errors(tmp_path)
    recorded = events(tmp_path)
    (model,) = [e for e in recorded if e["kind"] == "model"]
    assert model["unregistered"]["names"] == ["projection"] and model["unregistered"]["count"] == 1
    (hook,) = [e for e in recorded if e["kind"] == "comm_hook"]
    line = next(n for n, text in enumerate(code.splitlines(), 1) if "register_comm_hook" in text)
    assert hook["hook"] == "fp16_compress_hook" and hook["caller"] == f"<string>:{line}"
    (first,) = [e for e in recorded if e["kind"] == "first_step"]
    assert (first["stepped"], first["outside_wrappers"], first["outside_shapes"]) == (3, 1, [[5]])
    assert first["partitioned_order"] == ["module.head.weight", "module.head.bias", "?"]
    (loss,) = first["losses"]
    assert loss["type"] == "BCEWithLogitsLoss" and loss["shown"] == {"pos_weight": [3.0], "reduction": "mean"}


def test_groups_epochs_and_parameters_unfrozen_after_the_wrap_are_recorded_as_the_job_ran_them(tmp_path: Path) -> None:
    """``new_group`` before the group exists; the epoch the sampler was told; parameters frozen at
    DDP's wrap that train later, said once, and never for a model wrapped again after unfreezing."""
    code = program(
        """
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
        pair = dist.new_group([0])
        everyone = dist.new_group(use_local_synchronization=True)
        data = TensorDataset(torch.arange(16.0).reshape(8, 2), torch.zeros(8, 1))
        sampler = DistributedSampler(data, shuffle=False)
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        net[0].requires_grad_(False)
        model = DistributedDataParallel(net)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        for epoch in (5, 6):
            sampler.set_epoch(epoch)
            if epoch == 6:
                net[0].requires_grad_(True)
                if os.environ.get("WRAP_AGAIN"):
                    model = DistributedDataParallel(net)
            for x, y in DataLoader(data, batch_size=1, sampler=sampler):
                optimizer.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                optimizer.step()
        print(round(sum(float(p.sum()) for p in net.parameters()), 4))
        """
    )
    assert_same(tmp_path / "once", code)
    seen = events(tmp_path / "once")
    assert [(e["ranks"], e["local_synchronization"]) for e in seen if e["kind"] == "new_group"] == [
        ([0], False),
        (None, True),
    ]
    assert [e.get("sampler_epoch") for e in seen if e["kind"] == "epoch_start"] == [5, 6]
    (unfrozen,) = [e for e in seen if e["kind"] == "trainable_after_wrap"]
    assert (unfrozen["step"], unfrozen["names"], unfrozen["count"]) == (10, ["0.weight", "0.bias"], 2)
    assert_same(tmp_path / "again", code, env={"WRAP_AGAIN": "1"})
    assert not [e for e in events(tmp_path / "again") if e["kind"] == "trainable_after_wrap"]
