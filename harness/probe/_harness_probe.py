"""The harness probe: what every Python process of a job received and did, with no change to
the user's code and no change to what it computes.

Loaded by ``sitecustomize`` in every Python process a rung starts (host, containers, SDK
rungs), where the harness itself is not installed, so it uses the standard library only and
imports nothing heavy: torch is instrumented when the job imports it, through an import hook.
It writes under ``HARNESS_PROBE_DIR``:

* ``processes/<host>-<pid>.json``: argv, cwd, environment (secrets redacted), parsed arguments,
  exit (code, exception) of each process;
* ``hosts/<host>/fingerprint.json``: Python, packages, CPUs, ``/dev/shm``, ulimits, and, once
  torch is imported, torch/CUDA/cuDNN/NCCL versions and GPUs (written once per host);
* ``ranks/rank-N.log``: the rank's own output, timestamped (a tee process outlives a crash);
* ``ranks/rank-N.jsonl``: events: ``dist_init``, ``collective`` (op, shapes, caller line),
  ``batch`` (digest of each batch consumed), ``params`` (digest of the parameters every
  ``HARNESS_PARAM_EVERY`` optimizer steps), ``args``;
  Events a crash or an ``os._exit`` must not lose (collectives, writes, parameters) are flushed
  at once, the others every second;
* ``ranks/rank-N.heartbeat``: progress counters, rewritten every second; on SIGUSR1 the rank
  dumps every thread's stack to ``ranks/rank-N.stacks.txt`` (the harness's hang detector).
"""

import atexit
import datetime
import faulthandler
import hashlib
import importlib.abc
import importlib.metadata
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time

DIR = os.environ.get("HARNESS_PROBE_DIR", "")
HOST = os.environ.get("HARNESS_HOST") or "host"
PARAM_EVERY = int(os.environ.get("HARNESS_PARAM_EVERY", "10"))
_SECRET = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|_KEY$|^AWS_ACCESS_KEY_ID$", re.I)
_RELEVANT_ENV = ("SM_", "MASTER_", "NCCL_", "GLOO_", "CUDA_", "OMP_", "RANK", "LOCAL_RANK", "WORLD_SIZE",
                 "TORCH", "PYTHON", "LD_PRELOAD", "FI_", "AWS_REGION", "TRAINING_JOB")
_COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter",
                "reduce_scatter_tensor", "reduce", "gather", "scatter", "all_to_all", "all_to_all_single",
                "barrier", "all_gather_object", "broadcast_object_list", "send", "recv")
_TEE = r"""
import datetime, os, re, sys
out = open(sys.argv[1], "ab", buffering=0)
passthrough = sys.stdout.buffer
pattern = re.compile(sys.argv[2], re.I)
secrets = [v.encode() for k, v in os.environ.items() if pattern.search(k) and len(v) >= 8]
for line in sys.stdin.buffer:
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
    recorded = line
    for secret in secrets:
        recorded = recorded.replace(secret, b"<redacted>")
    out.write(stamp.replace("+00:00", "Z").encode() + b" " + recorded)
    passthrough.write(line)
    passthrough.flush()
"""


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _secret_forms():
    """Each secret-looking variable's value (8 characters and up) as it appears in JSON text."""
    values = {v for k, v in os.environ.items() if _SECRET.search(k) and len(v) >= 8}
    return sorted({form for v in values for form in (v, json.dumps(v)[1:-1])}, key=len, reverse=True)


_SECRET_FORMS = _secret_forms()


def scrubbed(text):
    """``text`` with every secret value replaced: whatever the probe records (exception messages,
    arguments, events) passes through here, as log lines pass through the tee."""
    for secret in _SECRET_FORMS:
        if secret in text:
            text = text.replace(secret, "<redacted>")
    return text


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(scrubbed(json.dumps(data, indent=1, default=repr)))
    os.replace(tmp, path)


def redact(env):
    return {k: ("<redacted>" if _SECRET.search(k) else v) for k, v in env.items()}


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


class Process:
    """This process's record; rewritten when something worth keeping happens."""

    def __init__(self):
        self.pid = os.getpid()
        self.path = os.path.join(DIR, "processes", "%s-%d.json" % (HOST, self.pid))
        self.info = {
            "pid": self.pid, "ppid": os.getppid(), "host": HOST, "rank": os.environ.get("RANK"),
            "local_rank": os.environ.get("LOCAL_RANK"), "argv": [sys.executable, *sys.argv],
            "orig_argv": list(getattr(sys, "orig_argv", [])), "cwd": os.getcwd(), "started_at": now(),
            "env": redact(dict(os.environ)),
        }
        self.exit_code = 0
        self.save()

    def update(self, **fields):
        self.info.update(fields)
        self.save()

    def save(self):
        write_json(self.path, self.info)


class Rank:
    """Per-rank event stream and heartbeat; created when the process learns its rank."""

    def __init__(self, rank):
        self.rank = rank
        directory = os.path.join(DIR, "ranks")
        os.makedirs(directory, exist_ok=True)
        self.base = os.path.join(directory, "rank-%s" % rank)
        self.events = open(self.base + ".jsonl", "a", encoding="utf-8")
        self.lock = threading.Lock()
        self.counters = {"batches": 0, "collectives": 0, "steps": 0}
        self.stacks = open(self.base + ".stacks.txt", "a")
        faulthandler.register(signal.SIGUSR1, file=self.stacks, all_threads=True, chain=False)
        threading.Thread(target=self._beat, name="harness-heartbeat", daemon=True).start()

    def emit(self, kind, flush=False, **fields):
        line = scrubbed(json.dumps({"t": time.time(), "kind": kind, **fields}, default=repr))
        with self.lock:
            self.events.write(line + "\n")
            if flush:
                self.events.flush()

    def _beat(self):
        while True:
            try:
                write_json(self.base + ".heartbeat", {"pid": os.getpid(), "host": os.environ.get("HARNESS_HOST"),
                                                     "t": time.time(), **self.counters})
                with self.lock:
                    self.events.flush()
            except (OSError, ValueError):
                return
            time.sleep(1.0)

    def close(self):
        with self.lock:
            if not self.events.closed:
                self.events.flush()


PROCESS = None
RANK = None


def start_rank(rank):
    """Begin per-rank capture: the output tee and the event stream (once per process)."""
    global RANK
    if RANK is not None or not DIR:
        return
    tee_output(rank)
    RANK = Rank(rank)
    PROCESS.update(rank=str(rank))
    atexit.register(RANK.close)


def tee_output(rank):
    sys.stdout.flush()
    sys.stderr.flush()
    path = os.path.join(DIR, "ranks", "rank-%s.log" % rank)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tee = subprocess.Popen([sys.executable, "-S", "-c", _TEE, path, _SECRET.pattern], stdin=subprocess.PIPE,
                           close_fds=True)
    os.dup2(tee.stdin.fileno(), 1)
    os.dup2(tee.stdin.fileno(), 2)
    tee.stdin.close()


def fingerprint(extra=None):
    """The host's environment fingerprint; the first process of a host writes it."""
    path = os.path.join(DIR, "hosts", HOST, "fingerprint.json")
    if extra is None and os.path.exists(path):
        return
    data = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    if not data:
        data = base_fingerprint()
    data.update(extra or {})
    write_json(path, data)


def base_fingerprint():
    try:
        shm = os.statvfs("/dev/shm")
        shm_bytes = shm.f_frsize * shm.f_blocks
    except OSError:
        shm_bytes = None
    limits = {}
    try:
        import resource
        for name in ("RLIMIT_MEMLOCK", "RLIMIT_STACK", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_AS"):
            if hasattr(resource, name):
                limits[name[7:].lower()] = [(-1 if v == resource.RLIM_INFINITY else v)
                                            for v in resource.getrlimit(getattr(resource, name))]
    except ImportError:
        pass
    packages = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages[name.lower()] = dist.version
    return {
        "python": sys.version.split()[0], "implementation": platform.python_implementation(),
        "executable": sys.executable, "platform": platform.platform(), "machine": platform.machine(),
        "hostname": platform.node(), "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "dev_shm_bytes": shm_bytes, "ulimits": limits, "packages": dict(sorted(packages.items())),
        "env": {k: v for k, v in sorted(redact(dict(os.environ)).items()) if k.startswith(_RELEVANT_ENV)},
    }


def torch_fingerprint(torch):
    info = {"torch": torch.__version__, "cuda": getattr(torch.version, "cuda", None),
            "cuda_available": False, "gpus": []}
    try:
        info["cudnn"] = torch.backends.cudnn.version()
        if torch.cuda.is_available():
            info["cuda_available"] = True
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    except Exception as exc:  # a broken CUDA setup is itself a finding, not a crash
        info["cuda_error"] = repr(exc)
    return {"torch": info}


def caller():
    """The user's line that issued a call: the first frame outside torch and this probe."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if "torch" not in filename and "_harness_probe" not in filename:
            return "%s:%d" % (filename, frame.f_lineno)
        frame = frame.f_back
    return None


def digest_tensor(tensor, hasher):
    """Cheap, exact for small tensors: shape, dtype and up to 1 MiB of the data's bytes."""
    hasher.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
    flat = tensor.detach().reshape(-1)
    if flat.device.type != "cpu":
        flat = flat[: 1 << 18].cpu()
    data = flat.contiguous().view(-1)
    limit = (1 << 20) // max(1, data.element_size())
    try:
        hasher.update(data[:limit].numpy().tobytes())
    except (TypeError, RuntimeError):  # dtypes numpy cannot view (bfloat16): hash a float copy
        hasher.update(data[:limit].float().numpy().tobytes())


def digest(obj, hasher):
    if hasattr(obj, "detach") and hasattr(obj, "shape"):
        digest_tensor(obj, hasher)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            digest(item, hasher)
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            hasher.update(str(key).encode())
            digest(obj[key], hasher)
    else:
        hasher.update(repr(obj).encode())


def batch_size(batch):
    """Samples in a batch: the first dimension of its first tensor."""
    while isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    if isinstance(batch, dict) and batch:
        return batch_size(next(iter(batch.values())))
    shape = getattr(batch, "shape", None)
    return int(shape[0]) if shape else None


def instrument_distributed(c10d):
    original_init = c10d.init_process_group

    def init_process_group(*args, **kwargs):
        result = original_init(*args, **kwargs)
        rank = c10d.get_rank()
        start_rank(rank)
        import torch
        fingerprint(torch_fingerprint(torch))
        RANK.emit("dist_init", flush=True, backend=str(c10d.get_backend()), world_size=c10d.get_world_size(),
                  rank=rank, init_method=kwargs.get("init_method") or (args[1] if len(args) > 1 else None),
                  master_addr=os.environ.get("MASTER_ADDR"), master_port=os.environ.get("MASTER_PORT"),
                  caller=caller())
        return result

    c10d.init_process_group = init_process_group
    for name in _COLLECTIVES:
        if hasattr(c10d, name):
            setattr(c10d, name, _wrap_collective(name, getattr(c10d, name)))


def _wrap_collective(name, function):
    def collective(*args, **kwargs):
        if RANK is not None:
            RANK.counters["collectives"] += 1
            shapes = [list(a.shape) for a in args if hasattr(a, "shape")]
            lists = [[list(t.shape) for t in a] for a in args if isinstance(a, list) and a and hasattr(a[0], "shape")]
            RANK.emit("collective", flush=True, seq=RANK.counters["collectives"], op=name,
                      shapes=shapes or lists, caller=caller())
        return function(*args, **kwargs)

    collective.__wrapped__ = function
    collective.__name__ = name
    return collective


def instrument_dataloader(module):
    base = module._BaseDataLoaderIter
    original_next = base.__next__

    def __next__(self):
        batch = original_next(self)
        if RANK is not None:
            hasher = hashlib.blake2b(digest_size=12)
            digest(batch, hasher)
            RANK.counters["batches"] += 1
            RANK.emit("batch", n=RANK.counters["batches"], digest=hasher.hexdigest(), size=batch_size(batch))
        return batch

    base.__next__ = __next__


def instrument_optimizer(module):
    def after_step(optimizer, args, kwargs):
        if RANK is None:
            return
        step = RANK.counters["steps"]
        RANK.counters["steps"] += 1
        if step % PARAM_EVERY:
            return
        import torch
        with torch.no_grad():
            params = [p for group in optimizer.param_groups for p in group["params"]]
            total = sum(float(p.double().sum()) for p in params)
            absolute = sum(float(p.double().abs().sum()) for p in params)
            hasher = hashlib.blake2b(digest_size=12)
            for p in params:
                digest_tensor(p, hasher)
        RANK.emit("params", flush=True, step=step, sum=total, abs_sum=absolute, digest=hasher.hexdigest())

    module.register_optimizer_step_post_hook(after_step)


def instrument_serialization(module):
    """torch.save writes through C++, past Python's audit hooks: record its target here."""
    original_save = module.save

    def save(obj, f, *args, **kwargs):
        if RANK is not None and isinstance(f, (str, os.PathLike)):
            _record_write(os.path.abspath(os.fspath(f)))
        return original_save(obj, f, *args, **kwargs)

    save.__wrapped__ = original_save
    module.save = save


#: module name → instrumentation applied right after the module is executed (before anyone
#: can bind its names), so ``from torch.distributed import all_reduce`` gets the wrapper too.
_HOOKS = {
    "torch.distributed.distributed_c10d": instrument_distributed,
    "torch.utils.data.dataloader": instrument_dataloader,
    "torch.optim.optimizer": instrument_optimizer,
    "torch.serialization": instrument_serialization,
}


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _HOOKS:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader, _HOOKS[name])
                return spec
        return None


class _Loader(importlib.abc.Loader):
    def __init__(self, loader, hook):
        self.loader, self.hook = loader, hook

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        try:
            self.hook(module)
        except Exception as exc:  # the probe must never break the job
            sys.stderr.write("harness probe: could not instrument %s: %r\n" % (module.__name__, exc))


def record_arguments():
    """What the script's argument parser made of the command line (compared with the job's
    hyperparameters by the harness)."""
    import argparse

    original = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self, args=None, namespace=None):
        result = original(self, args, namespace)
        if PROCESS is not None and args is None:  # the script's own command line
            PROCESS.update(parsed_args=_jsonable(vars(result[0])), argv_parsed=sys.argv[1:])
        return result

    argparse.ArgumentParser.parse_known_args = parse_known_args


def record_exit():
    original_excepthook = sys.excepthook
    original_exit = sys.exit

    def excepthook(kind, value, tb):
        PROCESS.exit_code = 1
        PROCESS.update(exception="%s: %s" % (kind.__name__, value))
        original_excepthook(kind, value, tb)

    def exit(code=0):
        PROCESS.exit_code = code if isinstance(code, int) else (0 if code is None else 1)
        original_exit(code)

    sys.excepthook = excepthook
    sys.exit = exit
    atexit.register(lambda: PROCESS.update(ended_at=now(), exit_code=PROCESS.exit_code))


def record_multiprocessing_children():
    """Children started by multiprocessing (fork or spawn) report their own exit code, so a
    parent that never checks its children cannot hide their crash."""
    import multiprocessing.process as mp

    original = mp.BaseProcess._bootstrap

    def _bootstrap(self, *args, **kwargs):
        global PROCESS, RANK
        if PROCESS is None or PROCESS.pid != os.getpid():  # a forked child: a record of its own
            PROCESS, RANK = Process(), None
        PROCESS.update(mp_target=getattr(self._target, "__qualname__", repr(self._target)), mp_name=self.name)
        code = original(self, *args, **kwargs)
        PROCESS.update(ended_at=now(), exit_code=code)
        return code

    mp.BaseProcess._bootstrap = _bootstrap


_WRITES = {"seen": set(), "contract": (), "ignored": ()}


def _record_write(path):
    if path in _WRITES["seen"] or path.startswith(_WRITES["ignored"]):
        return
    _WRITES["seen"].add(path)
    RANK.emit("write", flush=True, path=path, contract=path.startswith(_WRITES["contract"]), caller=caller())


def record_writes():
    """Files each rank opens for writing: several ranks writing one model file, or files written
    where SageMaker keeps nothing, are findings of their own."""
    roots = [os.environ.get(k) for k in ("SM_MODEL_DIR", "SM_OUTPUT_DIR", "SM_OUTPUT_DATA_DIR")]
    _WRITES["contract"] = tuple(p for p in [*roots, "/opt/ml/model", "/opt/ml/output", "/opt/ml/checkpoints"] if p)
    _WRITES["ignored"] = ("/tmp", "/var/tmp", "/dev", "/proc", "/sys", DIR)

    def audit(event, args):
        if event != "open" or RANK is None or not isinstance(args[0], str):
            return
        mode, flags = args[1] or "r", args[2] or 0
        if ("w" in mode or "a" in mode or "x" in mode or "+" in mode) or flags & (os.O_WRONLY | os.O_RDWR):
            _record_write(os.path.abspath(args[0]))

    sys.addaudithook(audit)


def install():
    global PROCESS
    if not DIR:
        return
    PROCESS = Process()
    fingerprint()
    record_exit()
    record_arguments()
    record_multiprocessing_children()
    record_writes()
    sys.meta_path.insert(0, _Finder())
    if os.environ.get("RANK") is not None:
        start_rank(os.environ["RANK"])
