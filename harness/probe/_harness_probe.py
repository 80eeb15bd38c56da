"""The harness probe: what every Python process of a job received and did, with no change to
the user's code and no change to what it computes.

Loaded by ``sitecustomize`` in every Python process a rung starts (host, containers, SDK
rungs), where the harness itself is not installed, so it uses the standard library only and
imports nothing heavy: torch is instrumented when the job imports it, through an import hook.
It writes under ``HARNESS_PROBE_DIR``:

* ``processes/<host>-<pid>.json``: argv, cwd, environment (secrets redacted), parsed arguments,
  exit (code, exception) of each process, the variables it read and set (:func:`record_environ`),
  and ``probe_errors`` (what went wrong in the probe itself, which the job never sees);
* ``hosts/<host>/fingerprint.json``: Python, packages, CPUs, ``/dev/shm``, ulimits, and, once
  torch is imported: torch/CUDA/cuDNN/NCCL versions and GPUs (written once per host);
* ``ranks/rank-N.log``: the rank's own output, timestamped (a tee process outlives a crash);
* ``ranks/rank-N.jsonl``: events: ``dist_init``, ``collective`` (op, shapes, dtypes, group,
  peer for point-to-point, caller line), ``batch`` (digest of each batch consumed), ``params``
  (digest of the parameters every ``HARNESS_PARAM_EVERY`` optimizer steps), ``write``.
  Events a crash must not lose (collectives, writes, parameters) are flushed at once, the
  others every second and before ``os._exit`` (which runs no exit handler);
* ``ranks/rank-N.heartbeat``: progress counters, rewritten every second; on SIGUSR1 the rank
  dumps every thread's stack to ``ranks/rank-N.stacks.txt`` (the harness's hang detector).

Transparency: a job with the probe does what it does without it: same exit status, same lines
on stdout and on stderr, same files. The rules that hold it (tests/test_probe_transparency.py):

* every hook calls the original exactly once with the caller's own arguments and hands back its
  result or exception untouched; the probe's own work around the call runs under
  :func:`_quietly`, so a failure of the probe (an object it cannot measure, a full disk) is
  written to the process record (``probe_errors``), never raised into the job nor printed;
* wrappers keep the wrapped function's name, qualified name, module, docs and signature
  (``functools.wraps``), so that pickling, ``inspect`` and identity checks against the module's
  own attribute see what they would see; imported modules keep their own loader;
* a rank's stdout and stderr stay apart (one tee pipe per stream, or one for both where they
  already went to one place), bytes pass through as they come (no waiting for a newline), and
  the tee is nobody's child (it detaches at once), so ``os.wait()`` in the job never meets it;
* processes multiprocessing starts for its own ends (spawned children, the forkserver, the
  resource tracker) are recorded but never take over their parent's rank; a forked child gets a
  record of its own and never writes into its parent's;
* nothing is printed; CUDA is never initialised by the probe (GPU names are read once the job
  initialised CUDA itself), and SIGUSR1 chains to a handler the job installed before.

What stays visible, by construction: a traceback through a hooked call shows one frame of this
file (``File ".../_harness_probe.py", line N, in ...`` and its source line); a rank has one
more daemon thread (``harness-heartbeat``); its stdout/stderr are pipes to the tee (as they are
under every launcher the harness runs), a process forked from the rank before the job's code ran
(so it shows the rank's command line) and re-parented to init; ``sys.meta_path[0]`` is the
probe's import hook.
"""

import array
import atexit
import collections
import contextlib
import datetime
import faulthandler
import functools
import hashlib
import importlib.abc
import itertools
import json
import os
import platform
import re
import selectors
import signal
import sys
import threading
import time
import weakref

DIR = os.environ.get("HARNESS_PROBE_DIR", "")
HOST = os.environ.get("HARNESS_HOST") or "host"
PARAM_EVERY = int(os.environ.get("HARNESS_PARAM_EVERY", "10") or 10)
_SECRET = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|_KEY$|^AWS_ACCESS_KEY_ID$", re.I)
_RELEVANT_ENV = (
    "SM_",
    "MASTER_",
    "NCCL_",
    "GLOO_",
    "CUDA_",
    "OMP_",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "TORCH",
    "PYTHON",
    "LD_PRELOAD",
    "FI_",
    "AWS_REGION",
    "TRAINING_JOB",
)
#: Collectives every rank of a group issues alike, in the same order.
_COLLECTIVES = (
    "all_reduce",
    "broadcast",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "reduce",
    "gather",
    "scatter",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "monitored_barrier",
    "all_reduce_coalesced",
    "all_gather_coalesced",
    "all_gather_object",
    "broadcast_object_list",
    "gather_object",
    "scatter_object_list",
)
#: Point-to-point calls: they pair up across ranks (a send with a recv), no rank issues them alike.
_SENDS = ("send", "isend", "send_object_list")
_RECVS = ("recv", "irecv", "recv_object_list")
_POINT_TO_POINT = _SENDS + _RECVS + ("batch_isend_irecv",)
#: Collectives whose result only their root (``dst``) receives: on the other ranks the output is
#: left as it was, or half-reduced.
_ROOTED_RESULTS = ("reduce", "gather", "gather_object")
#: Arguments that legitimately differ between ranks of one collective (only the root holds the
#: list; objects are anything), so they are not part of what ranks must agree on.
_ASYMMETRIC = frozenset(
    (
        "gather_list",
        "scatter_list",
        "object_gather_list",
        "scatter_object_input_list",
        "obj",
        "output_split_sizes",
        "input_split_sizes",
        "p2p_op_list",
    )
)
#: Object lists: only their length must agree.
_OBJECT_LISTS = frozenset(("object_list", "scatter_object_output_list"))


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
    """``data`` at ``path`` whole or not at all. Compact: with an indent, ``json`` encodes in
    Python, not C, five times slower (1.8 ms for a process's record with 330 variables read),
    and that record is rewritten several times in a process's life."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(scrubbed(json.dumps(data, separators=(",", ":"), default=repr)))
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


# ---- the probe's own failures stay with the probe ---------------------------------------------

_MAX_ERRORS = 20


def _quietly(what, function, *args, **kwargs):
    """``function(*args, **kwargs)`` for the probe's own work: whatever it raises is written to
    the process record (``probe_errors``) and goes no further, so the job never sees it. What
    the environment is asked meanwhile is the probe's own question, not the job's
    (:func:`_probe_busy`)."""
    _OWN.depth = getattr(_OWN, "depth", 0) + 1
    try:
        return function(*args, **kwargs)
    except Exception as exc:
        if _raised_by_a_signal_handler(exc):
            raise
        _probe_error(what, exc)
        return None
    finally:
        _OWN.depth -= 1


#: The signals whose handlers :func:`_raised_by_a_signal_handler` knows.
_HANDLED_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
)


def _raised_by_a_signal_handler(exc):
    """Whether ``exc`` came from a Python signal handler that ran while the probe was at work
    (torch's elastic agent and torchrun turn SIGTERM into ``SignalException`` so): the job's
    exception, which must reach the job, not the probe's failure."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    for signum in _HANDLED_SIGNALS:
        handler = signal.getsignal(signum)
        if getattr(getattr(handler, "__func__", handler), "__code__", None) is tb.tb_frame.f_code:
            return True
    return False


#: Per thread: how deep the probe is in work of its own (:func:`_quietly`).
_OWN = threading.local()


def _probe_busy():
    return getattr(_OWN, "depth", 0) > 0


def _probe_error(what, exc):
    try:
        process = _process()
        if process is None:
            return
        errors = process.info.setdefault("probe_errors", [])
        if len(errors) < _MAX_ERRORS:
            errors.append("%s: %s: %s" % (what, type(exc).__name__, exc))
            process.save()
    except Exception:
        pass


def _hook(function, before=None, after=None):
    """``function`` as the probe sees it: ``before(args, kwargs)`` and ``after(result, token)``
    (``token`` is what ``before`` returned) run quietly around the call; the call itself gets the
    caller's arguments, and its result or exception goes back unchanged."""

    @functools.wraps(function)
    def hooked(*args, **kwargs):
        token = _quietly(function.__name__, before, args, kwargs) if before is not None else None
        result = function(*args, **kwargs)
        if after is not None:
            _quietly(function.__name__, after, result, token)
        return result

    return hooked


# ---- processes and ranks ----------------------------------------------------------------------


def _command_line():
    """The interpreter's own argv (``sys.orig_argv``; before 3.10, ``/proc/self/cmdline``)."""
    argv = getattr(sys, "orig_argv", None)
    if argv:
        return list(argv)
    try:
        with open("/proc/self/cmdline", "rb") as handle:
            return [part.decode("utf-8", "replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def _multiprocessing_helper(argv):
    """A process multiprocessing started for itself: a spawned child (``--multiprocessing-fork``),
    the forkserver or the resource tracker (``-c "from multiprocessing..."``). It inherits its
    parent's ``RANK`` but is not that rank."""
    if "--multiprocessing-fork" in argv:
        return True
    return any(
        a == "-c" and i + 1 < len(argv) and argv[i + 1].lstrip().startswith("from multiprocessing")
        for i, a in enumerate(argv)
    )


def _inherited_rank(rank):
    """Whether ``RANK`` only came down from the rank's own process: a helper the rank started
    (``subprocess.run([sys.executable, ...])``, torch's compile workers) inherits ``RANK`` but is
    not the rank. Its parent's record says so: a Python process that held the same ``RANK``.
    A launcher's children (torchrun's workers, a script's spawned ranks) have a parent without
    it, or one that is no Python process at all (``bash -c``)."""
    path = os.path.join(DIR, "processes", "%s-%d.json" % (HOST, os.getppid()))
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle).get("rank") == rank
    except (OSError, ValueError):
        return False


class Process:
    """This process's record; rewritten when something worth keeping happens. ``own_rank``:
    whether ``RANK`` in the environment is this process's own (else it is recorded as
    ``inherited_rank``: a DataLoader worker, a helper the rank started)."""

    def __init__(self, own_rank=True):
        self.pid = os.getpid()
        self.path = os.path.join(DIR, "processes", "%s-%d.json" % (HOST, self.pid))
        try:
            cwd = os.getcwd()
        except OSError:
            cwd = None
        self.info = {
            "pid": self.pid,
            "ppid": os.getppid(),
            "host": HOST,
            "rank": (os.environ.get("RANK") or None) if own_rank else None,
            "local_rank": os.environ.get("LOCAL_RANK"),
            "argv": [sys.executable, *sys.argv],
            "orig_argv": list(getattr(sys, "orig_argv", [])),
            "cwd": cwd,
            "started_at": now(),
            "env": redact(dict(os.environ)),
        }
        if not own_rank and os.environ.get("RANK"):
            self.info["inherited_rank"] = os.environ["RANK"]
        self.exit_code = 0
        self.lock = threading.RLock()
        self.saving = False
        self.save()

    def update(self, **fields):
        self.info.update(fields)
        self.save()

    def save(self, wait=True):
        """Write the record, with the environment variables read and set so far. Saves never
        overlap: one asked for during another of the same thread (a signal handler) is left to
        the one under way, and with ``wait=False`` one asked for while another thread saves is
        skipped (the next save writes it). Returns whether it wrote."""
        if not self.lock.acquire(blocking=wait):
            return False
        try:
            if self.saving:
                return False
            self.saving = True
            try:
                write_json(self.path, {**self.info, **_environ_fields()})
            finally:
                self.saving = False
        finally:
            self.lock.release()
        return True


class Rank:
    """Per-rank event stream and heartbeat; created when the process learns its rank."""

    def __init__(self, rank):
        self.rank = rank
        self.pid = os.getpid()
        directory = os.path.join(DIR, "ranks")
        os.makedirs(directory, exist_ok=True)
        self.base = os.path.join(directory, "rank-%s" % rank)
        self.events = open(self.base + ".jsonl", "a", encoding="utf-8")
        self.lock = threading.Lock()
        self.counters = {"batches": 0, "collectives": 0, "steps": 0}
        self.unwritten = []  # batches not yet written (:meth:`batch`)
        self.stacks = open(self.base + ".stacks.txt", "a")
        # A handler the job installed already keeps running after the dump (chain); the default
        # action (terminate) is not chained: the dump replaces it.
        previous = signal.getsignal(signal.SIGUSR1)
        chain = previous not in (signal.SIG_DFL, signal.SIG_IGN, None)
        faulthandler.register(signal.SIGUSR1, file=self.stacks, all_threads=True, chain=chain)
        threading.Thread(target=self._beat, name="harness-heartbeat", daemon=True).start()

    def emit(self, kind, flush=False, **fields):
        line = scrubbed(json.dumps({"t": time.time(), "kind": kind, **fields}, default=repr))
        with self.lock:
            self._write_batches()  # the batches before this event go before it
            self.events.write(line + "\n")
            if flush:
                self.events.flush()

    def batch(self, row):
        """A batch with nothing to say beyond :data:`BATCH_COLUMNS`: kept, and written before
        the next event, by the heartbeat, or every :data:`_BATCHES_PER_EVENT` batches, as one
        ``batches`` event (an event per batch was the probe's largest cost per step)."""
        with self.lock:
            self.unwritten.append(row)
            if len(self.unwritten) >= _BATCHES_PER_EVENT:
                self._write_batches()

    def _write_batches(self):
        if self.unwritten:
            rows, self.unwritten = self.unwritten, []
            event = {"t": time.time(), "kind": "batches", "columns": BATCH_COLUMNS, "rows": rows}
            self.events.write(json.dumps(event) + "\n")

    def _beat(self):
        while True:
            try:
                write_json(
                    self.base + ".heartbeat",
                    {"pid": os.getpid(), "host": os.environ.get("HARNESS_HOST"), "t": time.time(), **self.counters},
                )
                with self.lock:
                    self._write_batches()
                    self.events.flush()
            except (OSError, ValueError):
                return
            if _ENVIRON["dirty"]:
                _quietly("environ", _save_environ, False)
            if _ABANDONED:
                _quietly("data ledger", close_abandoned)
            if _STEP["pending"]:
                _quietly("loss ledger", flush_steps)
            time.sleep(1.0)

    def close(self):
        if self.pid != os.getpid():
            return
        with self.lock:
            if not self.events.closed:
                self._write_batches()
                self.events.flush()


PROCESS = None
RANK = None
#: What a ``batches`` event holds of each batch, a row per batch: the rank's count of batches,
#: the batch's samples, its loader, the loader's pass, its place in the pass, and the rank's
#: optimizer steps before it. The record's reader makes a ``batch`` event of each row.
BATCH_COLUMNS = ("n", "size", "loader", "epoch", "i", "step")
_BATCHES_PER_EVENT = 256


def _process():
    """This process's record; a forked child gets one of its own on first use, so that it never
    writes into its parent's."""
    global PROCESS
    if not DIR:
        return None
    if PROCESS is None or PROCESS.pid != os.getpid():
        PROCESS = Process(own_rank=PROCESS is None)
    return PROCESS


def _rank():
    """This process's rank stream, or None (not a rank, or a forked child of one)."""
    rank = RANK
    return rank if rank is not None and rank.pid == _PID[0] else None


#: This process's pid, kept current in a forked child: ``os.getpid()`` is a system call, and
#: :func:`_rank` is asked several times a step.
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def start_rank(rank):
    """Begin per-rank capture: the output tee and the event stream (once per process)."""
    global RANK
    if _rank() is not None or not DIR:
        return
    _quietly("tee", tee_output, rank)
    RANK = Rank(rank)
    _process().update(rank=str(rank))
    atexit.register(RANK.close)


def _same_destination(a, b):
    try:
        x, y = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)


def _flush_streams():
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.flush()


def tee_output(rank):
    """Copy fds 1 and 2 into ``ranks/rank-N.log`` on their way to where they went: each stream
    through its own pipe (one pipe where both went to one place already, to keep their order).
    At exit the rank gives its fds back and waits (2 s at most) for the tee to pass its last
    lines on, so that they come before whatever the launcher prints about the rank's end.
    The tee is a fork of this process, made before the job has imported anything: a new
    interpreter (``python -S``) cost each rank some 20 ms of CPU and 30 ms of its start."""
    _flush_streams()
    try:
        os.fstat(1)
    except OSError:  # no stdout at all: nothing to copy
        return
    path = os.path.join(DIR, "ranks", "rank-%s.log" % rank)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    streams = [1] if _same_destination(1, 2) else [1, 2]
    pipes = {fd: os.pipe() for fd in streams}  # fd -> (read, write)
    done_read, done_write = os.pipe()
    try:
        routes = {read: fd for fd, (read, _) in pipes.items()}
        if _one_thread():
            first = os.fork()
            if first == 0:
                _tee_process(path, done_write, routes)  # never returns
            os.waitpid(first, 0)  # the tee's first process leaves at once; the tee itself runs on, detached
        else:  # a fork of a process with threads may hang on a lock one held: a new interpreter
            import subprocess

            arguments = [os.path.dirname(_PROBE_FILE), path, str(done_write), *("%d:%d" % r for r in routes.items())]
            subprocess.run(
                [sys.executable, "-S", "-c", _TEE_IN_NEW_INTERPRETER, *arguments],
                stdin=subprocess.DEVNULL,
                pass_fds=[done_write, *routes],
                check=False,
            )
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        os.dup2(pipes[1][1], 1)
        os.dup2(pipes[2][1] if 2 in pipes else pipes[1][1], 2)
    except BaseException:
        os.close(done_read)
        raise
    finally:
        os.close(done_write)
        for read, write in pipes.values():
            os.close(read)
            os.close(write)
    _TEE_STATE.update(pid=os.getpid(), saved=saved, done=done_read)
    atexit.register(_quietly, "tee", _untee)


_TEE_STATE = {}
#: The tee started where this process has threads already (its rank was learnt late, at
#: ``init_process_group``): the probe's directory, the log, ``done``, then pipe:fd pairs.
_TEE_IN_NEW_INTERPRETER = """
import sys
sys.path.insert(0, sys.argv[1])
import _harness_probe
routes = dict(tuple(int(n) for n in pair.split(":")) for pair in sys.argv[4:])
_harness_probe._tee_process(sys.argv[2], int(sys.argv[3]), routes)
"""


def _one_thread():
    """Whether this process runs a single thread (Python's or native), so that a fork is safe."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _tee_process(path, done, routes):
    """The forked child: it forks again and leaves, so that the tee is nobody's child and a
    job's ``os.wait()`` never meets it; the tee keeps only its pipes, ``done`` and the streams'
    destinations (fds 1 and 2), and never returns into the job's code."""
    try:
        if os.fork():
            os._exit(0)
        keep = {1, 2, done, *routes}
        try:
            open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
        except OSError:
            open_fds = range(3, 1024)
        for fd in open_fds:
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if 0 not in keep:  # a rank started without stdin may have a pipe there
            null = os.open(os.devnull, os.O_RDONLY)
            if null != 0:
                os.dup2(null, 0)
                os.close(null)
        _tee(path, routes)
    finally:
        os._exit(0)


def _tee(path, routes):
    """Pass each pipe's bytes on to where its stream went (``routes``: pipe -> fd) as they come,
    and write its lines, timestamped and with secret values redacted, to ``path``. Ends when
    every writer has closed its end; signals that end the job do not end it first, so the job's
    last words pass."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    try:
        log = [open(path, "ab", buffering=0)]
    except OSError:
        log = [None]
    secrets = [v.encode() for k, v in os.environ.items() if _SECRET.search(k) and len(v) >= 8]
    pending = dict.fromkeys(routes, b"")
    broken = set()
    selector = selectors.DefaultSelector()
    for fd in routes:
        selector.register(fd, selectors.EVENT_READ)

    def record(line):
        if log[0] is None:
            return
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
        for secret in secrets:
            line = line.replace(secret, b"<redacted>")
        try:
            log[0].write(stamp.replace("+00:00", "Z").encode() + b" " + line)
        except OSError:
            log[0] = None

    def forward(target, data):
        view = memoryview(data)
        while view and target not in broken:
            try:
                view = view[os.write(target, view) :]
            except InterruptedError:
                continue
            except OSError:  # the reader went away: keep draining, as a closed pipe would not block
                broken.add(target)

    while routes:
        for key, _ in selector.select():
            fd = key.fd
            try:
                data = os.read(fd, 1 << 16)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:
                if pending[fd]:
                    record(pending[fd] + b"\n")
                selector.unregister(fd)
                del routes[fd]
                continue
            forward(routes[fd], data)
            lines = (pending[fd] + data).split(b"\n")
            pending[fd] = lines.pop()
            if len(pending[fd]) > 1 << 16:  # a progress bar redrawn with \r, never a newline
                lines.append(pending[fd])
                pending[fd] = b""
            for line in lines:
                record(line + b"\n")


def _untee():
    """Give fds 1 and 2 back to where they went before the tee, then wait for the tee to end."""
    if _TEE_STATE.get("pid") != os.getpid():
        return
    _flush_streams()
    for fd, copy in _TEE_STATE.pop("saved").items():
        os.dup2(copy, fd)
        os.close(copy)
    import select

    done = _TEE_STATE.pop("done")
    try:
        poll = select.poll()
        poll.register(done, select.POLLIN | select.POLLHUP)
        poll.poll(2000)
    except Exception as exc:
        # A signal the job's handler turns into an exception during this wait, which only the
        # probe adds: without the probe the process would be gone, and at exit Python would only
        # print the exception (the exit status stays), so it is dropped.
        if not _raised_by_a_signal_handler(exc):
            raise
    finally:
        os.close(done)


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
                limits[name[7:].lower()] = [
                    (-1 if v == resource.RLIM_INFINITY else v) for v in resource.getrlimit(getattr(resource, name))
                ]
    except ImportError:
        pass
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "dev_shm_bytes": shm_bytes,
        "ulimits": limits,
        "packages": _packages(),
        "env": {k: v for k, v in sorted(redact(dict(os.environ)).items()) if k.startswith(_RELEVANT_ENV)},
    }


def _packages():
    """{name: version} of every installed distribution on ``sys.path``, the first of a name as
    ``importlib.metadata.version`` answers, from the header lines of its metadata (a
    ``.dist-info``'s ``METADATA``, an ``.egg-info``'s ``PKG-INFO``). Read here rather than with
    ``importlib.metadata``: importing it took 32 ms of the process's start (email, zipfile, csv),
    the listing itself 5 ms."""
    packages = {}
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:  # not a directory (a zip, a path that is gone)
            continue
        for name in names:
            if name.endswith(".dist-info"):
                path = os.path.join(entry, name, "METADATA")
            elif name.endswith(".egg-info"):
                path = os.path.join(entry, name)
                path = os.path.join(path, "PKG-INFO") if os.path.isdir(path) else path
            else:
                continue
            package, version = _metadata_header(path)
            if package and package.lower() not in packages:
                packages[package.lower()] = version
    return dict(sorted(packages.items()))


def _metadata_header(path):
    """(Name, Version) from a metadata file's headers: the lines before the first blank one."""
    name = version = None
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    break
                if line.startswith("Name:"):
                    name = line[5:].strip()
                elif line.startswith("Version:"):
                    version = line[8:].strip()
    except OSError:
        pass
    return name, version


_GPUS = {"named": False}


def torch_fingerprint(torch):
    """Versions and devices, without initialising CUDA: the device count from NVML (where torch
    can ask it), GPU names only once the job initialised CUDA itself (:func:`_name_gpus`), so that
    a job that forks after ``init_process_group`` can still use CUDA in its children and no rank
    opens a context on a GPU it does not use."""
    info = {
        "torch": torch.__version__,
        "cuda": getattr(torch.version, "cuda", None),
        "cuda_available": False,
        "gpus": [],
    }
    try:
        info["cudnn"] = torch.backends.cudnn.version()
        if not torch.version.cuda:
            _GPUS["named"] = True  # a build without CUDA: no GPU to name
            return {"torch": info}
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        if torch.cuda.is_initialized():
            info["cuda_available"] = True
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            _GPUS["named"] = True
        else:
            count = torch.cuda._device_count_nvml()
            info["cuda_available"] = count > 0 if count >= 0 else None
            _GPUS["named"] = count == 0
    except Exception as exc:  # a broken CUDA setup is itself a finding, not a crash
        info["cuda_error"] = repr(exc)
        _GPUS["named"] = True
    return {"torch": info}


def _name_gpus():
    """GPU names for the fingerprint, once CUDA is initialised (by the job, never by the probe)."""
    if _GPUS["named"]:
        return
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return
    _GPUS["named"] = True
    fingerprint(torch_fingerprint(torch))


_TORCH_DIR = {"path": None}
_PROBE_FILE = os.path.splitext(os.path.abspath(__file__))[0]
#: The probe's directory (this file, sitecustomize): reads from there are the probe's own.
_PROBE_DIR = os.path.dirname(_PROBE_FILE) + os.sep
_LIBRARY = re.compile(r"[/\\](?:site-packages|dist-packages)[/\\]|[/\\]lib[/\\]python\d[\d.]*[/\\]|^<frozen")


@functools.lru_cache(maxsize=None)
def _library_file(filename):
    """Whether code in ``filename`` is an installed package's, the standard library's or Python's
    own (``<frozen ...>``, ``<string>``): asked for every frame of every stack the probe walks,
    so answered once per file."""
    return filename.startswith("<") or _LIBRARY.search(filename) is not None


def _frames():
    """The caller's stack, innermost first, without the probe's own frames."""
    frame = sys._getframe(1)
    while frame is not None:
        if not frame.f_code.co_filename.startswith(_PROBE_FILE):
            yield frame
        frame = frame.f_back


def caller():
    """The line that issued a call: the first frame outside torch and this probe (a library's
    line where a library issued it: accelerate, Lightning)."""
    torch_dir = _TORCH_DIR["path"]
    for frame in _frames():
        filename = frame.f_code.co_filename
        if torch_dir is None or not filename.startswith(torch_dir):
            return "%s:%d" % (filename, frame.f_lineno)
    return None


def user_line():
    """The job's own line nearest the call: the first frame outside installed packages and the
    standard library (None where only libraries are on the stack)."""
    for frame in _frames():
        filename = frame.f_code.co_filename
        if not _library_file(filename):
            return "%s:%d" % (filename, frame.f_lineno)
    return None


def digest_tensor(tensor, hasher):
    """Cheap, exact for small tensors: shape, dtype and up to 1 MiB of the data's bytes."""
    hasher.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
    tensor = tensor.detach()
    if tensor.device.type == "cpu" and tensor.is_contiguous() and tensor.numel() * tensor.element_size() <= 1 << 20:
        try:  # the bytes in place, as the copy below would hold them (most batches)
            hasher.update(tensor.numpy())
            return
        except (TypeError, RuntimeError, ValueError):
            pass
    flat = tensor.reshape(-1)
    if flat.device.type != "cpu":
        flat = flat[: 1 << 18].cpu()
    data = flat.contiguous().view(-1)
    limit = (1 << 20) // max(1, data.element_size())
    try:
        hasher.update(data[:limit].numpy().tobytes())
    except (TypeError, RuntimeError):  # dtypes numpy cannot view (bfloat16): hash a float copy
        hasher.update(data[:limit].float().numpy().tobytes())


def _is_tensor(obj):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def digest(obj, hasher):
    if _is_tensor(obj):
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


def shapes(obj):
    """The shapes of a batch's tensors in the order :func:`digest` reads them ("8x8|8x1"): what
    tells a share padded to another length from one holding other values."""
    found = []

    def walk(item):
        if _is_tensor(item):
            found.append("x".join(str(n) for n in item.shape))
        elif isinstance(item, (list, tuple)):
            for part in item:
                walk(part)
        elif isinstance(item, dict):
            for key in sorted(item, key=str):
                walk(item[key])

    walk(obj)
    return "|".join(found)


def batch_size(batch):
    """Samples in a batch: the first dimension of its first tensor (or array)."""
    while isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    if isinstance(batch, dict) and batch:
        return batch_size(next(iter(batch.values())))
    shape = batch.shape if _is_tensor(batch) else getattr(type(batch), "shape", None) and batch.shape
    try:
        return int(shape[0]) if shape is not None and len(shape) else None
    except (TypeError, ValueError, IndexError):
        return None


# ---- torch.distributed ------------------------------------------------------------------------


def instrument_distributed(c10d):
    _TORCH_DIR["path"] = os.path.dirname(os.path.dirname(os.path.abspath(c10d.__file__)))

    def after_init(result, token):
        rank = c10d.get_rank()
        start_rank(rank)
        import torch

        _quietly("rendezvous", _rendezvous_joined, rank, c10d.get_world_size())
        fingerprint(torch_fingerprint(torch))
        args, kwargs = token
        _rank().emit(
            "dist_init",
            flush=True,
            backend=str(c10d.get_backend()),
            world_size=c10d.get_world_size(),
            rank=rank,
            init_method=kwargs.get("init_method") or (args[1] if len(args) > 1 else None),
            master_addr=os.environ.get("MASTER_ADDR"),
            master_port=os.environ.get("MASTER_PORT"),
            caller=caller(),
        )

    def before_init(args, kwargs):
        _quietly("rendezvous", _rendezvous_started, args, kwargs)
        return args, kwargs

    c10d.init_process_group = _hook(c10d.init_process_group, before=before_init, after=after_init)
    for name in _COLLECTIVES + _POINT_TO_POINT:
        if callable(getattr(c10d, name, None)):
            setattr(c10d, name, _wrap_collective(c10d, name, getattr(c10d, name)))
    if callable(getattr(c10d, "new_group", None)):
        c10d.new_group = _wrap_new_group(c10d.new_group)


def _wrap_new_group(function):
    """Every process group the rank creates, before creating it (a creation that never returns is
    on record): ``new_group`` must be entered by every rank of the job for every group, in the
    same order, unless ``use_local_synchronization`` lets only the members enter it."""

    @functools.wraps(function)
    def new_group(*args, **kwargs):
        if _rank() is not None:
            _quietly("new_group", _record_new_group, function, args, kwargs)
        return function(*args, **kwargs)

    return new_group


def _record_new_group(function, args, kwargs):
    bound = _bind(function, args, kwargs)
    members = bound.get("ranks")
    if members is not None:
        members = [int(r) for r in members]
        if bound.get("sort_ranks", True):
            members.sort()
    event = {"ranks": members, "local_synchronization": bool(bound.get("use_local_synchronization", False))}
    event["caller"] = caller()
    user = user_line()
    if user is not None and user != event["caller"]:
        event["user"] = user
    _rank().emit("new_group", flush=True, **event)


def _endpoint(args, kwargs):
    """Where ``init_process_group(*args, **kwargs)`` meets its peers: ``tcp://`` or ``env://``
    (``MASTER_ADDR``/``MASTER_PORT`` as they are now, after anything the job set), or a
    ``TCPStore``'s host and port; None for file and other stores."""
    method = kwargs.get("init_method") or (args[1] if len(args) > 1 else None)
    store = kwargs.get("store") or (args[5] if len(args) > 5 else None)
    if store is not None:
        host, port = getattr(store, "host", None), getattr(store, "port", None)
        return {"via": "store", "addr": host, "port": port} if host is not None else None
    if method is None or str(method).startswith("env://"):
        return {"via": "env://", "addr": os.environ.get("MASTER_ADDR"), "port": os.environ.get("MASTER_PORT")}
    import urllib.parse  # only once a job rendezvous

    parsed = urllib.parse.urlsplit(str(method))
    if parsed.scheme != "tcp":
        return None
    return {"via": "tcp://", "addr": parsed.hostname, "port": parsed.port}


def _rendezvous_started(args, kwargs):
    """Written before the call blocks, so that a rendezvous that never completes is on record
    (the rung's watchdog reads it while the job runs): which ranks came, where they went."""
    # init_process_group(backend, init_method, timeout, world_size, rank, store, ...)
    world = kwargs.get("world_size", args[3] if len(args) > 3 else -1)
    rank = kwargs.get("rank", args[4] if len(args) > 4 else -1)
    method = kwargs.get("init_method") or (args[1] if len(args) > 1 else None)
    _process().update(
        rendezvous={
            "endpoint": _endpoint(args, kwargs),
            "file": str(method)[len("file://") :] if str(method).startswith("file://") else None,
            "rank": int(os.environ.get("RANK", -1)) if rank in (None, -1) else int(rank),
            "world_size": int(os.environ.get("WORLD_SIZE", -1)) if world in (None, -1) else int(world),
            "caller": user_line() or caller(),
            "started_at": now(),
        }
    )


def _rendezvous_joined(rank, world_size):
    process = _process()
    rendezvous = dict(process.info.get("rendezvous") or {})
    rendezvous.update(rank=rank, world_size=world_size, joined_at=now())
    process.update(rendezvous=rendezvous)


_CALLS = threading.local()


def _wrap_collective(c10d, name, function):
    """One event per call the job makes: a collective that others call inside (an object
    collective's broadcasts, ``batch_isend_irecv``'s ``isend``) is recorded once, as the outer."""

    @functools.wraps(function)
    def collective(*args, **kwargs):
        depth = getattr(_CALLS, "depth", 0)
        if depth == 0 and _rank() is not None:
            _quietly(name, _record_collective, c10d, name, function, args, kwargs)
        _CALLS.depth = depth + 1
        try:
            return function(*args, **kwargs)
        finally:
            _CALLS.depth = depth

    return collective


_SIGNATURES = {}


def _bind(function, args, kwargs):
    """The call's arguments by parameter name."""
    import inspect

    signature = _SIGNATURES.get(function)
    if signature is None:
        signature = _SIGNATURES[function] = inspect.signature(function)
    bound = signature.bind_partial(*args, **kwargs)
    return dict(bound.arguments)


def _layout(value):
    """Shapes and dtypes of a tensor, or of a (nested) list of tensors; None for anything else."""
    if _is_tensor(value):
        return list(value.shape), [str(value.dtype).replace("torch.", "")]
    if isinstance(value, (list, tuple)) and value:
        parts = [_layout(v) for v in value]
        if all(p is not None for p in parts):
            return [p[0] for p in parts], sorted({d for p in parts for d in p[1]})
    return None


def _group(c10d, group):
    """Global ranks of a process group other than the default one; None for the default."""
    if group is None or group is getattr(c10d.GroupMember, "WORLD", None):
        return None
    try:
        if group is c10d._get_default_group():
            return None
    except Exception:
        pass
    return [int(r) for r in c10d.get_process_group_ranks(group)]


def _record_collective(c10d, name, function, args, kwargs):
    bound = _bind(function, args, kwargs)
    group = bound.get("group")
    if group is not None and c10d._rank_not_in_group(group):
        return  # torch returns at once: a rank outside the group takes no part
    rank = _rank()
    rank.counters["collectives"] += 1
    event = {"seq": rank.counters["collectives"], "op": name}
    shapes, dtypes = [], set()
    uneven = name in ("all_to_all", "all_to_all_single")  # per-rank sizes may differ: counts only
    for key, value in bound.items():
        if key in _ASYMMETRIC or key in ("group", "async_op", "op", "tag"):
            continue
        if key in _OBJECT_LISTS and isinstance(value, list):
            event["objects"] = len(value)
            continue
        layout = _layout(value)
        if layout is not None:
            shapes.append(
                len(layout[0]) if uneven and isinstance(value, (list, tuple)) else (None if uneven else layout[0])
            )
            dtypes.update(layout[1])
    event["shapes"], event["dtypes"] = shapes, sorted(dtypes)
    ranks = _group(c10d, group)
    if ranks is not None:
        event["group"] = ranks
    if name in _ROOTED_RESULTS:
        root = bound.get("dst")
        if root is None and bound.get("group_dst") is not None and ranks is not None:
            root = ranks[int(bound["group_dst"])]
        event["root"] = None if root is None else int(root)
    if name in _SENDS or name in _RECVS:
        event.update(_peer(c10d, name, bound, group, ranks))
    elif name == "batch_isend_irecv":
        event["ops"] = [
            {
                "dir": "send" if getattr(p.op, "__name__", "") in _SENDS else "recv",
                "peer": getattr(p, "peer", None),
                "tag": getattr(p, "tag", 0),
                "shape": list(p.tensor.shape),
                "group": _group(c10d, getattr(p, "group", None)),
            }
            for p in bound.get("p2p_op_list") or []
        ]
    event["caller"] = caller()
    user = user_line()
    if user is not None and user != event["caller"]:
        event["user"] = user
    rank.emit("collective", flush=True, **event)
    _name_gpus()


def _peer(c10d, name, bound, group, ranks):
    """Direction, global peer rank (None: any source), tag of a point-to-point call."""
    direction = "send" if name in _SENDS else "recv"
    peer = bound.get("dst" if direction == "send" else "src")
    local = bound.get("group_dst" if direction == "send" else "group_src")
    if peer is None and local is not None and ranks is not None:
        peer = ranks[int(local)]
    elif peer is None and local is not None:
        peer = local
    return {"dir": direction, "peer": None if peer is None else int(peer), "tag": bound.get("tag", 0)}


# ---- data, optimizer, checkpoints -------------------------------------------------------------


def instrument_dataloader(module):
    """The data ledger: every batch a rank consumes (a digest), and per epoch of each
    ``DataLoader`` which samples it drew, in what order (:class:`_Epoch`). An epoch is one pass
    of a sampler iterator (``iter(loader)``, or a persistent-workers iterator's reset); it is
    closed when the iterator is exhausted, when the next pass of the same loader starts, or at
    exit (then marked unfinished)."""
    base = module._BaseDataLoaderIter
    next_batch, next_index = base.__next__, base._next_index

    @functools.wraps(next_batch)
    def __next__(self):
        try:
            batch = next_batch(self)
        except StopIteration:
            _quietly("data ledger", _epoch_ended, self)
            raise
        _quietly("data ledger", _batch_consumed, self, batch)
        return batch

    @functools.wraps(next_index)
    def _next_index(self):
        indices = next_index(self)  # drawn even where replayed: the job's random draws stay its own
        _quietly("data ledger", _indices_drawn, self, indices)
        if REPLAY_FROM:
            replayed = _quietly("replay", _replayed_indices, self, indices)
            return indices if replayed is None else replayed
        return indices

    base.__next__, base._next_index = __next__, _next_index
    loader = module.DataLoader
    loader.__init__ = _hook(loader.__init__, before=_loader_site, after=_loader_created)


#: Per sampler object of a DataLoader (its batch sampler, or its sampler without one): which
#: loader of the process it is, and where the job created it.
_LOADERS = None
_LOADER_ORDINALS = itertools.count()
#: Per DataLoader iterator: the epoch it is drawing now.
_EPOCHS = None
#: Map-style datasets up to this many samples get an exact bitmap of the samples drawn (2 MiB
#: raw at the bound, far less compressed); larger ones are ledgered by counts and order only.
_BITMAP_LIMIT = 1 << 24
#: Indices drawn are folded into the ledger in bulk, this many at a time; up to this many, in
#: Python (a pass of a small dataset), more with torch.
_FOLD_EVERY = 1 << 16
_FOLD_IN_PYTHON = 1 << 12
#: The bytes 0 and 1 as the digits "0" and "1".
_BINARY_DIGITS = bytes.maketrans(b"\x00\x01", b"01")
#: Samples of an iterable dataset are ledgered by content digest; beyond this many, a
#: consistent subsample (the same on every rank: by the digest's value) is kept.
_DIGEST_LIMIT = 1 << 16


def _loader_site(args, kwargs):
    """Where the loader is made: the job's own line, and the library's line that made it where a
    library did (accelerate's ``prepare``, a test suite's helpers), so that loaders one line of
    the job makes through different library code stay apart."""
    mine, made = user_line(), caller()
    return args[0] if args else None, mine if made in (None, mine) else "%s via %s" % (mine, made)


def _loader_created(result, token):
    loader, site = token or (None, None)
    if loader is not None:
        _loader_of(loader._index_sampler, site)


def _loader_of(sampler, site=None):
    """Ordinal and creation site of the loader whose sampler is ``sampler`` (its batch sampler,
    or its sampler without one: the one object every pass of a loader shares)."""
    global _LOADERS
    import weakref

    if _LOADERS is None:
        _LOADERS = weakref.WeakKeyDictionary()
    info = _LOADERS.get(sampler)
    if info is None:
        info = {"loader": next(_LOADER_ORDINALS), "site": site or user_line(), "epochs": 0}
        _LOADERS[sampler] = info
    return info


def _sampler_shuffles(sampler):
    """Whether the loader's sampler draws a new order (RandomSampler, DistributedSampler with
    ``shuffle``); None where the sampler does not say."""
    inner = getattr(sampler, "sampler", sampler)  # a BatchSampler's sampler
    name = type(inner).__name__
    if name == "RandomSampler":
        return True
    if name == "SequentialSampler":
        return False
    shuffle = getattr(inner, "shuffle", None)
    return shuffle if isinstance(shuffle, bool) else None


class _Epoch:
    """One pass of one loader on one rank: the batches, the samples drawn (an exact bitmap of
    dataset indices for a map-style dataset, content digests for an iterable one), samples drawn
    twice, the first indices and a digest of the order."""

    def __init__(self, iterator, info):
        info["epochs"] += 1
        self.loader, self.site, self.epoch = info["loader"], info["site"], info["epochs"] - 1
        # The how-manieth pass made at this site (a library that makes every loader on one line
        # makes the evaluation's and the training's there): what a replay finds its loader by.
        site = _user_site(self.site)
        self.nth = _SITE_PASSES.get(site, 0)
        _SITE_PASSES[site] = self.nth + 1
        self.sampler_iter = iterator._sampler_iter
        self.iterable = iterator._dataset_kind != 0  # _DatasetKind.Map
        sampler = iterator._index_sampler
        inner = getattr(sampler, "sampler", sampler)
        self.sampler = type(inner).__name__
        self.shuffle = _sampler_shuffles(sampler)
        self.replacement = bool(getattr(inner, "replacement", False))
        self.length, self.through = None, None
        if not self.iterable:
            self.length, self.through = _base_dataset(iterator._dataset)
        # Indices are buffered as they are drawn (C speed) and folded into the mask in bulk.
        self.buffer, self.mask, self.indexed = array.array("q"), None, not self.iterable
        if self.length and self.length <= _BITMAP_LIMIT:
            self.mask = bytearray(self.length)  # a byte a sample: 1 once drawn
        self.digests, self.keep = set(), 0  # iterable: sample digests, kept where digest % 2**keep == 0
        self.batches = self.samples = self.repeats = 0
        self.repeated, self.first = [], []
        self.order = hashlib.blake2b(digest_size=12)
        rank = _rank()
        self.steps_at_start = rank.counters["steps"] if rank is not None else 0
        self.closed = False
        if rank is not None:  # a rank that hangs in this epoch never closes it: its loader is named here
            fields = self.describe()
            told = getattr(inner, "epoch", None)  # DistributedSampler.set_epoch's: every rank must say the same
            if isinstance(told, int) and not isinstance(told, bool):
                fields["sampler_epoch"] = told
            rank.emit("epoch_start", flush=True, loader=self.loader, site=self.site, epoch=self.epoch, **fields)

    def describe(self):
        return {
            "dataset": "iterable" if self.iterable else "map",
            "length": self.length,
            "sampler": self.sampler,
            "shuffle": self.shuffle,
            "replacement": self.replacement,
        }

    def drew(self, indices):
        if not self.indexed:
            return
        if not isinstance(indices, list):
            indices = [indices]
        self.samples += len(indices)
        try:
            self.buffer.extend(indices)
        except (TypeError, OverflowError):  # keys that are no integers: counted, not ledgered
            self.indexed = False
            return
        if len(self.buffer) >= _FOLD_EVERY:
            self.fold()

    def fold(self):
        """The buffered indices into the order digest and the mask: repeats within this rank."""
        buffer, self.buffer = self.buffer, array.array("q")
        if not buffer:
            return
        self.order.update(buffer.tobytes())
        if len(self.first) < 8:
            self.first.extend(buffer[: 8 - len(self.first)].tolist())
        if self.mask is None:
            return
        if self.through is None and len(buffer) <= _FOLD_IN_PYTHON:
            self._fold_few(buffer)
            return
        import torch

        mask = torch.frombuffer(self.mask, dtype=torch.bool)  # the bytearray itself
        drawn = torch.frombuffer(buffer, dtype=torch.int64)
        if self.through is not None:  # positions in a Subset: the dataset's own indices
            drawn = self.through[drawn[(drawn >= 0) & (drawn < len(self.through))]]
        drawn = drawn[(drawn >= 0) & (drawn < self.length)]
        unique = torch.unique(drawn)
        again = unique[mask[unique]]
        self.repeats += int(drawn.numel() - unique.numel()) + int(again.numel())
        if len(self.repeated) < 5 and again.numel():
            self.repeated.extend(again[: 5 - len(self.repeated)].tolist())
        mask[unique] = True

    def _fold_few(self, buffer):
        """:meth:`fold` of a short pass, in Python: torch's fixed cost per call would outweigh it."""
        mask, length, unique, again = self.mask, self.length, set(), []
        for index in buffer:
            if not 0 <= index < length:
                continue
            if index in unique:
                self.repeats += 1
                continue
            unique.add(index)
            if mask[index]:
                again.append(index)
        self.repeats += len(again)
        if len(self.repeated) < 5 and again:
            self.repeated.extend(sorted(again)[: 5 - len(self.repeated)])
        for index in unique:
            mask[index] = 1

    def bitmap(self):
        """The mask packed eight samples a byte (sample i: byte i // 8, bit i % 8), compressed:
        the bytes read as the binary digits of one number, sample 0 its lowest bit."""
        import base64
        import zlib

        digits = bytes(self.mask).translate(_BINARY_DIGITS)[::-1] or b"0"
        packed = int(digits, 2).to_bytes((len(self.mask) + 7) // 8, "little")
        return base64.b64encode(zlib.compress(packed, 6)).decode()

    def consumed(self, batch):
        self.batches += 1
        if not self.iterable:
            return
        for sample in _samples(batch):
            hasher = hashlib.blake2b(digest_size=8)
            digest(sample, hasher)
            value = int.from_bytes(hasher.digest(), "big")
            self.samples += 1
            self.order.update(hasher.digest())
            if value % (1 << self.keep):
                continue
            if value in self.digests:
                self.repeats += 1
            self.digests.add(value)
            while len(self.digests) > _DIGEST_LIMIT:
                self.keep += 1
                self.digests = {d for d in self.digests if not d % (1 << self.keep)}

    def close(self, finished):
        if self.closed:
            return
        self.closed = True
        rank = _rank()
        if rank is None:
            return
        self.fold()
        fields = {
            "loader": self.loader,
            "site": self.site,
            "epoch": self.epoch,
            "finished": finished,
            **self.describe(),
            "batches": self.batches,
            "samples": self.samples,
            "repeats": self.repeats,
            "steps": rank.counters["steps"] - self.steps_at_start,
            "order": self.order.hexdigest(),
        }
        if self.first:
            fields["first"] = self.first
        if self.repeated:
            fields["repeated"] = self.repeated
        if self.mask is not None and self.indexed:
            fields["bitmap"] = self.bitmap()
        if self.iterable:
            fields["digests"], fields["digest_keep"] = sorted(self.digests), self.keep
        rank.emit("data_epoch", flush=True, **fields)


def _base_dataset(dataset):
    """The length of the dataset under any ``Subset`` (the standard way to cut a shard by hand),
    and the map from the outer positions to its indices (None without a Subset), so that shards
    cut from one dataset are compared by the samples they hold."""
    through = None
    while type(dataset).__name__ == "Subset" and hasattr(dataset, "indices") and hasattr(dataset, "dataset"):
        if len(dataset.indices) > _BITMAP_LIMIT:
            return None, None
        import torch

        indices = torch.as_tensor(list(dataset.indices), dtype=torch.int64)
        through = indices if through is None else indices[through]
        dataset = dataset.dataset
    try:
        return len(dataset), through
    except TypeError:
        return None, None


def _samples(batch):
    """The samples of a collated batch: rows of its tensors (a tuple, list or dict of tensors
    is one sample per row across them); a batch that is no tensor is one sample."""
    parts = batch if isinstance(batch, (list, tuple)) else list(batch.values()) if isinstance(batch, dict) else [batch]
    rows = batch_size(batch)
    if not rows or not all(_is_tensor(p) and p.dim() and p.shape[0] == rows for p in parts):
        return [batch]
    return [[p[i] for p in parts] for i in range(rows)]


def _current_epoch(iterator):
    """The pass ``iterator`` is drawing (the last one asked for is at hand without a lookup: by
    id, and checked against the iterator's sampler iterator, which a reused id never shares)."""
    last = _LAST_EPOCH[0]
    if last is not None and last[0] == id(iterator) and last[1].sampler_iter is iterator._sampler_iter:
        if _ABANDONED:
            close_abandoned()
        return last[1]
    epoch = _lookup_epoch(iterator)
    _LAST_EPOCH[0] = (id(iterator), epoch)
    return epoch


_LAST_EPOCH = [None]


def _lookup_epoch(iterator):
    global _EPOCHS
    import weakref

    if _EPOCHS is None:
        _EPOCHS = weakref.WeakKeyDictionary()
        atexit.register(_quietly, "data ledger", _close_epochs)
    close_abandoned()
    epoch = _EPOCHS.get(iterator)
    if epoch is None or epoch.sampler_iter is not iterator._sampler_iter:
        if epoch is not None:
            epoch.close(finished=False)
        info = _loader_of(iterator._index_sampler)
        for other in list(_EPOCHS.values()):  # a loader's previous pass, left unfinished
            if other.loader == info["loader"] and not other.closed:
                other.close(finished=False)
        epoch = _EPOCHS[iterator] = _Epoch(iterator, info)
        # A loop left early drops its iterator: the pass is written as unfinished soon after
        # (by the heartbeat, the next pass, or at exit), never from the garbage collector itself.
        weakref.finalize(iterator, _ABANDONED.append, epoch)
    return epoch


#: Passes whose iterator was dropped before it was exhausted.
_ABANDONED = []
#: Per job line that made loaders: how many passes were made of them.
_SITE_PASSES = {}


def _user_site(site):
    """The job's own line of a loader's site: a library may make the loader again for the ranks
    (a distributed sampler, a sharded batch sampler) where one process keeps the job's own."""
    return str(site).split(" via ")[0]


def close_abandoned():
    while _ABANDONED:
        _ABANDONED.pop().close(finished=False)


def _close_epochs():
    close_abandoned()
    for epoch in list((_EPOCHS or {}).values()):
        epoch.close(finished=False)


def _indices_drawn(iterator, indices):
    rank = _rank()
    if rank is not None:
        _current_epoch(iterator).drew(indices)
        if rank.counters["steps"] < REPLAY_STEPS and isinstance(indices, list):
            drawn = _DRAWN.setdefault(id(iterator), collections.deque())
            if len(drawn) < 4 * REPLAY_STEPS:
                drawn.append(list(indices))


#: Batches whose content is digested: of a loader's first pass, and of each later one.
_DIGESTED_BATCHES = 8
_DIGESTED_LATER = 2


def _batch_consumed(iterator, batch):
    rank = _rank()
    if rank is None:
        return
    epoch = _current_epoch(iterator)
    epoch.consumed(batch)
    size = batch_size(batch)
    extra = {}
    # The first batches of a pass show ranks reading the same data; digesting every batch is the
    # largest cost per step (docs/benchmarks.md), so the rest carry none.
    digested = _DIGESTED_BATCHES if epoch.epoch == 0 else _DIGESTED_LATER
    if epoch.batches <= digested or rank.counters["steps"] < REPLAY_STEPS:
        hasher = hashlib.blake2b(digest_size=12)
        digest(batch, hasher)
        extra["digest"] = hasher.hexdigest()
    if rank.counters["steps"] < REPLAY_STEPS:
        drawn = _DRAWN.get(id(iterator))
        _STEP["indices"].append((epoch.loader, drawn.popleft() if drawn else None))
        if REPLAY_FROM and iterator is _REPLAY["iterator"]:
            _replayed_batch(batch)
    rank.counters["batches"] += 1
    _STEP["samples"] += size or 0
    if rank.counters["steps"] < REPLAY_STEPS:
        extra["shapes"] = shapes(batch)
    row = (rank.counters["batches"], size, epoch.loader, epoch.epoch, epoch.batches, rank.counters["steps"])
    if extra:
        rank.emit("batch", **dict(zip(BATCH_COLUMNS, row)), **extra)  # noqa: B905 - the probe runs on older Pythons too
    else:
        rank.batch(row)


def _epoch_ended(iterator):
    if _rank() is not None and _EPOCHS is not None and iterator in _EPOCHS:
        _EPOCHS[iterator].close(finished=True)


def _local(tensor):
    """This rank's own part of a distributed tensor (``DTensor.to_local()``: FSDP2's parameters,
    tensor parallelism): summing or reshaping the DTensor itself would make collectives of the
    job's tensors, and ``.numpy()`` refuses tensor subclasses."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def _sharded(tensor):
    """Whether each rank holds another part of this parameter (a DTensor placed other than
    Replicate, FSDP's FlatParameter): its digests differ across ranks by design."""
    placements = getattr(tensor, "placements", None)
    if placements is not None:
        return any(not getattr(p, "is_replicate", lambda: False)() for p in placements)
    return type(tensor).__name__ == "FlatParameter"


def instrument_optimizer(module):
    """The loss ledger, per optimizer step (before it): the values ``backward()`` was called on
    since the last step, the samples consumed, the gradient norm after the distributed reduction
    and the learning rate applied; and, every ``HARNESS_PARAM_EVERY`` steps (after it), digests of
    the parameters."""

    def after_step(optimizer, args, kwargs):
        rank = _rank()
        _PROCESS_STEPS["n"] += 1
        if _PROCESS_STEPS["n"] == 1:  # a process that trains, with or without a process group
            _process().update(optimizer_steps=1)
        if rank is None:
            return
        step = rank.counters["steps"]
        rank.counters["steps"] += 1
        if step % PARAM_EVERY:
            return
        _quietly("model ledger", _trainable_after_wrap, rank, step)
        import torch

        with torch.no_grad():
            params = [p for group in optimizer.param_groups for p in group["params"]]
            sharded = any(_sharded(p) for p in params)
            params = [_local(p) for p in params]
            total, absolute = _sums(params)
            hasher = hashlib.blake2b(digest_size=12)
            for p in params:
                digest_tensor(p, hasher)
        fields = {"sharded": True} if sharded else {}
        rank.emit("params", step=step, sum=total, abs_sum=absolute, digest=hasher.hexdigest(), **fields)

    def pre(optimizer, args, kwargs):
        if not _FIRST_STEP["seen"]:
            _FIRST_STEP["seen"] = True
            _quietly("first step", _first_step, optimizer)
        # A step given a closure (Lightning's automatic optimization, LBFGS) runs the forward and
        # backward inside it: the step's loss and gradients are there only once it returns.
        if _closure(args, kwargs) is None:
            _quietly("loss ledger", _step_taken, optimizer)

    def hook(optimizer, args, kwargs):
        if _closure(args, kwargs) is not None:
            _quietly("loss ledger", _step_taken, optimizer)
        _quietly("optimizer step", after_step, optimizer, args, kwargs)  # returns None: the step is untouched

    module.register_optimizer_step_pre_hook(pre)
    module.register_optimizer_step_post_hook(hook)
    module.Optimizer.__init__ = _hook(
        module.Optimizer.__init__, before=lambda args, kwargs: args, after=_optimizer_made
    )


#: Models handed to DDP: (a weak reference, the ids of the parameters it was given, the ids of
#: those that did not require grad then: DDP never averages their gradients).
_WRAPPED = []
#: Whether a parameter frozen when DDP wrapped its model was seen trainable (said once).
_UNFROZEN = {"said": False}


def _trainable_after_wrap(rank, step):
    """Parameters that did not require grad when DDP wrapped their model and do now (a backbone
    unfrozen after the wrap): DDP registered no reduction for them, so each rank steps them with
    its own gradient. Looked at with the parameter digests, every ``HARNESS_PARAM_EVERY`` steps."""
    if _UNFROZEN["said"]:
        return
    names = []
    for reference, _, frozen in _WRAPPED:
        model = reference()
        if model is not None and frozen:
            names += [n for n, t in model.named_parameters() if id(t) in frozen and t.requires_grad]
    if names:
        _UNFROZEN["said"] = True
        rank.emit("trainable_after_wrap", flush=True, step=step, names=names[:8], count=len(names))


#: Every DDP and FSDP wrapper made (weak references): the tensors they train.
_WRAPPERS = []
_FIRST_STEP = {"seen": False}


def _sums(params):
    """The sum and the sum of magnitudes of all ``params``, in float64: a small model's as one
    vector (two operations, one read from the device), a larger one's parameter by parameter
    (without copying it whole)."""
    import torch

    if params and sum(p.numel() for p in params) <= _SUMMED_AS_ONE:
        try:
            flat = torch.cat([p.reshape(-1) for p in params]).double()
            return tuple(torch.stack([flat.sum(), flat.abs().sum()]).tolist())
        except (RuntimeError, TypeError):  # parameters on several devices
            pass
    return sum(float(p.double().sum()) for p in params), sum(float(p.double().abs().sum()) for p in params)


#: Parameters of up to this many elements in all are summed as one vector.
_SUMMED_AS_ONE = 1 << 20


def _first_step(optimizer):
    """What a rank holds at its first optimizer step, which its peers must hold alike: the
    optimizer's state (a checkpoint's, loaded on some ranks only, is there on those alone) and
    the parameters registered after the model was handed to DDP (DDP never reduces their
    gradients)."""
    rank = _rank()
    if rank is None:
        return
    steps = set()
    for state in optimizer.state.values():
        value = state.get("step") if isinstance(state, dict) else None
        if value is not None:
            steps.add(float(value))
    added = []
    for reference, known, _ in _WRAPPED:
        model = reference()
        if model is not None:
            added += [n for n, t in model.named_parameters() if id(t) not in known and t.requires_grad]
    rank.emit(
        "first_step",
        flush=True,
        optimizer=type(optimizer).__name__,
        state_entries=len(optimizer.state),
        state_steps=sorted(steps)[:8],
        added_after_wrap=added[:8],
        added_count=len(added),
        **_outside_wrappers(optimizer),
        losses=_loss_settings(),
    )


def _outside_wrappers(optimizer):
    """The trainable tensors this optimizer steps that no distribution wrapper holds and no
    backward reached (an optimizer made before FSDP flattened the model holds the tensors FSDP
    replaced: it steps nothing)."""
    wrappers = [w for w in (reference() for reference in _WRAPPERS) if w is not None]
    if not wrappers:
        return {}
    names = {id(p): name for w in wrappers for name, p in w.named_parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    outside = [p for p in params if id(p) not in names and p.grad is None]
    shapes = [list(p.shape) for p in outside[:4]]
    fields = {"stepped": len(params), "outside_wrappers": len(outside), "outside_shapes": shapes}
    if callable(getattr(optimizer, "_partition_parameters", None)):
        # ZeroRedundancyOptimizer: each rank updates the parameters of its partition, cut by the
        # order the optimizer holds them in, and broadcasts them to its peers in that order.
        order = [names.get(id(p), "?") for group in optimizer.param_groups for p in group["params"]]
        fields["partitioned_order"] = order[:_MODEL_ENTRIES]
    return fields


#: Loss modules made before the first optimizer step (weak references): their settings and
#: weights (``pos_weight``, class ``weight``) must be alike on every rank.
_LOSSES = weakref.WeakSet()


def _loss_made(result, loss):
    if not _FIRST_STEP["seen"]:
        _LOSSES.add(loss)


def _loss_settings():
    """Per loss module: its class, the settings a user chooses (``reduction``, ``ignore_index``,
    ``label_smoothing``...) and a digest of its tensors, with their first values for evidence."""
    settings = []
    for loss in list(_LOSSES)[:8]:
        hasher = hashlib.blake2b(digest_size=12)
        shown = {}
        chosen = {k: v for k, v in sorted(vars(loss).items()) if not k.startswith("_") and k != "training"}
        buffers = [(name, value) for name, value in sorted(loss._buffers.items()) if value is not None]
        for name, value in [*buffers, *chosen.items()]:
            if _is_tensor(value):
                digest_tensor(value, hasher)
                shown[name] = [round(float(v), 6) for v in value.detach().flatten()[:4].tolist()]
            elif isinstance(value, (bool, int, float, str)) or value is None:
                hasher.update(f"{name}={value!r}".encode())
                shown[name] = value
        settings.append({"type": type(loss).__name__, "digest": hasher.hexdigest(), "shown": shown})
    return sorted(settings, key=lambda entry: (entry["type"], entry["digest"]))


def _closure(args, kwargs):
    """The closure an optimizer step was given (``step(closure)``; the hooks' ``args`` begin with
    the optimizer), or None."""
    closure = args[1] if len(args) > 1 else kwargs.get("closure")
    return closure if callable(closure) else None


#: Optimizer steps this process took (written to its record at its first step and at exit).
_PROCESS_STEPS = {"n": 0}
#: What happened since the last optimizer step: samples consumed, tensors ``backward()`` ran on.
_STEP = {"samples": 0, "losses": [], "pending": [], "indices": [], "replayable": {}}
#: Steps are taken on the job's thread and flushed by the heartbeat's too.
_STEP_LOCK = threading.Lock()
#: One flush at a time, from taking the pending steps to writing them: the exit's flush waits for
#: a heartbeat's under way, which the interpreter's exit would otherwise cut off with its steps.
_FLUSH_LOCK = threading.RLock()


def _step_taken(optimizer):
    """Kept as tensors, read in bulk (:func:`flush_steps`): no device sync and no event per step."""
    rank = _rank()
    losses, samples, indices = _STEP["losses"], _STEP["samples"], _STEP["indices"]
    _STEP["losses"], _STEP["samples"], _STEP["indices"] = [], 0, []
    if rank is None:
        return
    import torch

    step, norms = rank.counters["steps"], []
    if REPLAY_FROM and _REPLAY["rng"] is not None:
        _replay_randomness(step)
    if step < _NORM_EVERY_STEP_UNTIL or step % PARAM_EVERY == 0:
        grads = [_local(p.grad) for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        foreach = getattr(torch, "_foreach_norm", None)
        if grads:  # gradients require no grad: no autograd graph is recorded here
            norms = foreach(grads) if foreach is not None else [torch.linalg.vector_norm(g) for g in grads]
    lr = optimizer.param_groups[0].get("lr") if optimizer.param_groups else None
    with _STEP_LOCK:  # the heartbeat flushes from its own thread
        if step < REPLAY_STEPS:
            _STEP["replayable"][step] = indices
        _STEP["pending"].append((step, losses, samples, norms, lr))
    if len(_STEP["pending"]) >= _STEPS_PER_EVENT:
        flush_steps()


#: The gradient norm is taken at every step until this one (where runs are compared step by
#: step), then every ``HARNESS_PARAM_EVERY`` steps: it costs a pass over every gradient.
_NORM_EVERY_STEP_UNTIL = 32
#: Steps are written by the heartbeat every second, in its own thread (which runs while the job's
#: waits in a collective or on the device), and at exit; by the job's thread only when this many
#: are pending.
_STEPS_PER_EVENT = 1024


def flush_steps():
    """One ``steps`` event for the pending steps, their values read from the device in one go."""
    with _FLUSH_LOCK:
        _flush_pending_steps()


def _flush_pending_steps():
    with _STEP_LOCK:
        pending, _STEP["pending"] = _STEP["pending"], []
        replayable = {step: _STEP["replayable"].pop(step) for step, *_ in pending if step in _STEP["replayable"]}
    rank = _rank()
    if not pending or rank is None:
        return
    import torch

    with torch.no_grad():
        values = _read_all([t for _, ls, _, _, _ in pending for t in ls])
        squares = [n * n for n in _read_all([n for _, _, _, ns, _ in pending for n in ns])]
    fields = {"step": [], "loss": [], "backwards": [], "samples": [], "grad_norm": [], "lr": []}
    at_loss = at_norm = 0
    for step, backwards, samples, step_norms, lr in pending:
        mine = values[at_loss : at_loss + len(backwards)]
        square = sum(squares[at_norm : at_norm + len(step_norms)])
        at_loss, at_norm = at_loss + len(backwards), at_norm + len(step_norms)
        fields["step"].append(step)
        fields["loss"].append(sum(mine) / len(mine) if mine else None)
        fields["backwards"].append(len(backwards))
        fields["samples"].append(samples)
        fields["grad_norm"].append(square**0.5 if step_norms else None)
        fields["lr"].append(float(lr) if isinstance(lr, (int, float)) or _is_tensor(lr) else None)
        if step in replayable:
            norms = [sq**0.5 for sq in squares[at_norm - len(step_norms) : at_norm]]
            consumed = replayable[step]
            rank.emit(
                "replay_step",
                step=step,
                loaders=[loader for loader, _ in consumed],
                indices=[indices for _, indices in consumed],
                loss=fields["loss"][-1],
                backwards=len(backwards),
                param_norms=norms if len(norms) <= _REPLAY_MAX_PARAMS else None,
            )
    rank.emit("steps", flush=True, **fields)


def _read_all(scalars):
    """Floats of many one-element tensors: one stack and one copy where they share a device and
    dtype (the usual case), one by one otherwise."""
    if not scalars:
        return []
    import torch

    try:
        try:
            stacked = torch.stack(scalars)  # losses are 0-dim as a rule
        except RuntimeError:
            stacked = torch.stack([t.reshape(()) for t in scalars])
        return stacked.double().cpu().reshape(-1).tolist()
    except (RuntimeError, TypeError):
        return [float(t) for t in scalars]


def instrument_autograd(module):
    """Each scalar ``backward()`` is called on (``Tensor.backward`` calls this function): the
    loss of the loss ledger, kept detached until the optimizer step reads it."""

    def before(args, kwargs):
        tensors = args[0] if args else kwargs.get("tensors")
        if _rank() is not None and _is_tensor(tensors) and tensors.numel() == 1 and len(_STEP["losses"]) < 64:
            _STEP["losses"].append(tensors.detach())

    module.backward = _hook(module.backward, before=before)


def instrument_model_wrappers(module):
    """The model ledger: when a model is wrapped for distribution (DDP, FSDP), what each rank
    holds: names, shapes, dtypes, devices and ``requires_grad`` of its parameters and buffers,
    recorded before the wrapper's own checks run (they raise on a mismatch). ``DataParallel``
    (one process driving every GPU) is noted in the process record."""
    for name in ("DistributedDataParallel", "FullyShardedDataParallel"):
        wrapper = getattr(module, name, None)
        if wrapper is not None and "__init__" in vars(wrapper):
            wrapper.__init__ = _hook(
                wrapper.__init__, before=functools.partial(_model_wrapped, name), after=_wrapper_made
            )
        for method in ("register_comm_hook", "_register_builtin_comm_hook"):
            if wrapper is not None and method in vars(wrapper):
                setattr(wrapper, method, _hook(getattr(wrapper, method), before=_comm_hook))
    single_process = getattr(module, "DataParallel", None)
    if single_process is not None and "__init__" in vars(single_process):
        single_process.__init__ = _hook(single_process.__init__, before=_data_parallel)


def _wrapper_made(result, wrapper):
    if wrapper is not None:
        _WRAPPERS.append(weakref.ref(wrapper))


def _comm_hook(args, kwargs):
    """A communication hook replaces the wrapper's all-reduce of gradients (compression to
    float16 or bfloat16, PowerSGD): what the ranks average is no longer what they computed."""
    rank = _rank()
    hook = kwargs.get("hook", args[2] if len(args) > 2 else args[1] if len(args) > 1 else None)
    name = getattr(hook, "__qualname__", None) or getattr(hook, "name", None) or str(hook)
    module = getattr(hook, "__module__", None)
    if rank is not None:
        rank.emit("comm_hook", flush=True, hook=str(name), module=module, caller=user_line() or caller())


def _data_parallel(args, kwargs):
    _process().update(data_parallel=True)


#: At most this many parameters and buffers are listed one by one in a model event.
_MODEL_ENTRIES = 5000


def _model_wrapped(wrapper, args, kwargs):
    """The ``model`` event of a rank's wrapper being made; returns that wrapper (for
    :func:`_wrapper_made`)."""
    rank = _rank()
    model = args[1] if len(args) > 1 else kwargs.get("module")
    if rank is None or model is None or not hasattr(model, "named_parameters"):
        return None
    import torch

    entries = []
    for name, tensor in model.named_parameters():
        entries.append(
            [
                name,
                list(tensor.shape),
                str(tensor.dtype).replace("torch.", ""),
                tensor.device.type,
                bool(tensor.requires_grad),
            ]
        )
    for name, tensor in model.named_buffers():
        entries.append(
            [name, list(tensor.shape), str(tensor.dtype).replace("torch.", ""), tensor.device.type, "buffer"]
        )
    hasher = hashlib.blake2b(digest_size=12)
    hasher.update(json.dumps(entries).encode())
    if wrapper == "DistributedDataParallel":
        frozen = frozenset(id(t) for t in model.parameters() if not t.requires_grad)
        _WRAPPED[:] = [entry for entry in _WRAPPED if entry[0]() is not model]  # wrapped again: the last wrap counts
        _WRAPPED.append((weakref.ref(model), frozenset(id(t) for t in model.parameters()), frozen))
    group = kwargs.get("process_group")
    ranks = None
    if group is not None:
        ranks = _quietly("model ledger", _group, torch.distributed.distributed_c10d, group)
    options = {k: kwargs[k] for k in ("find_unused_parameters", "static_graph") if isinstance(kwargs.get(k), bool)}
    rank.emit(
        "model",
        flush=True,
        wrapper=wrapper,
        options=options,
        group=ranks,
        caller=user_line() or caller(),
        count=len(entries),
        digest=hasher.hexdigest(),
        entries=entries[:_MODEL_ENTRIES],
        unregistered=_unregistered_tensors(model),
    )
    return args[0]


def _unregistered_tensors(model):
    """Tensors a module keeps as plain attributes (neither parameter nor buffer): the wrapper
    never broadcasts them, so a rank that made its own (a random projection after per-rank
    seeding) computes another function. Their names and a digest of their values."""
    names = []
    hasher = hashlib.blake2b(digest_size=12)
    for prefix, module in model.named_modules():
        for name, value in sorted(vars(module).items()):
            if _is_tensor(value):
                names.append(f"{prefix}.{name}" if prefix else name)
                digest_tensor(value, hasher)
    return {"count": len(names), "names": names[:8], "digest": hasher.hexdigest()} if names else None


# ---- differential replay ----------------------------------------------------------------------

#: The first optimizer steps of every run are kept replayable (``replay_step`` events): the
#: dataset indices of each batch the step consumed, its loss, and each parameter's gradient norm
#: after the distributed reduction; rank 0 keeps the weights it handed its DDP/FSDP wrapper. A
#: one-process run given that record (``HARNESS_REPLAY``) draws the same global batches from the
#: same weights and records the same (harness.judge.replay compares them).
REPLAY_STEPS = 8
REPLAY_FROM = os.environ.get("HARNESS_REPLAY", "")
#: Weights above this size, or models with more parameters, are not kept.
_REPLAY_MAX_BYTES = 64 << 20
_REPLAY_MAX_PARAMS = 4096
#: Per DataLoader iterator (by id): index lists drawn and not yet consumed (prefetched).
_DRAWN = {}
_REPLAY = {"plan": None, "iterator": None, "k": 0, "weights": None, "rng": None, "consumed": 0, "loading": None}


def _optimizer_made(result, args):
    """The first optimizer's parameters as it was made (before any step: the initial weights):
    kept by rank 0 of a distributed run; in a replay, the recorded run's loaded into them."""
    if _REPLAY["weights"] is not None or not args:
        return
    params = [p for group in args[0].param_groups for p in group["params"]]
    if REPLAY_FROM:
        _load_initial_weights(params)
        return
    rank = _rank()
    _REPLAY["weights"] = "seen"
    if rank is None or str(rank.rank) != "0" or int(os.environ.get("WORLD_SIZE") or 1) < 2:
        return
    import torch

    size = sum(p.numel() * p.element_size() for p in params)
    if params and size <= _REPLAY_MAX_BYTES and len(params) <= _REPLAY_MAX_PARAMS:
        with torch.no_grad():
            torch.save([_local(p).detach().to("cpu", copy=True) for p in params], rank.base + ".init.pt")


def _replay_plan():
    """The recorded run's training batches in the order every rank drew them (the global batch of
    each draw: the ranks' indices in rank order), each rank's share of it (size and digest), and
    the pass they were drawn in (its site, the how-manieth pass made there, the dataset's length);
    read once. A step may find its next batch drawn already (a loader wrapper that fetches one
    ahead): the first step then consumed two, every later one one. Where a step trained on several
    batches, or ran several backward passes (gradient accumulation), or ranks differ, the plan
    ends before it, and says why (``stopped``)."""
    if _REPLAY["plan"] is not None:
        return _REPLAY["plan"]
    ranks = {}
    directory = os.path.join(REPLAY_FROM, "ranks")
    for name in os.listdir(directory):
        match = re.fullmatch(r"rank-(\d+)\.jsonl", name)
        if not match:
            continue
        events = {"steps": {}, "batches": {}, "passes": {}}
        counted = {}
        with open(os.path.join(directory, name), encoding="utf-8") as handle:
            for line in handle:
                event = json.loads(line)
                kind = event.get("kind")
                if kind == "replay_step":
                    events["steps"][event["step"]] = event
                elif kind == "batch" and event.get("step", REPLAY_STEPS) < REPLAY_STEPS:  # whole: they carry shapes
                    events["batches"].setdefault(event["step"], []).append(event)
                elif kind == "epoch_start":
                    site = _user_site(event["site"])
                    nth = counted.get(site, 0)
                    counted[site] = nth + 1
                    events["passes"][(event["loader"], event["epoch"])] = (site, nth, event.get("length"))
        ranks[int(match.group(1))] = events
    order = sorted(ranks)
    # Rank 0's second step, where it took one: what tells a first step of two batches (one
    # fetched ahead) from gradient accumulation.
    second = _training_share(ranks[order[0]]["steps"].get(1)) if order else None
    batches, parts, where, stopped = [], [], None, None
    for step in range(REPLAY_STEPS):
        shares = [_training_share(ranks[r]["steps"].get(step)) for r in order]
        if not ranks or any(share is None or isinstance(share, str) for share in shares):
            said = [share for share in shares if isinstance(share, str)]
            if said or any(step in ranks[r]["steps"] for r in order):  # not merely the run's end
                stopped = "step %d: %s" % (step, said[0] if said else "a rank took no step with a batch of indices")
            break
        drawn = [
            [b for b in ranks[r]["batches"].get(step, []) if b.get("loader") == share[0]]
            for r, share in zip(order, shares)  # noqa: B905 - the probe runs on older Pythons too
        ]
        counts = {len(share[1]) for share in shares} | {len(d) for d in drawn}
        if len(counts) != 1:
            stopped = "step %d: the ranks drew unlike numbers of batches" % step
            break
        count = counts.pop()
        if count != 1 and (step or second is None):
            stopped = "step %d: each rank trained on %d batches (gradient accumulation)" % (step, count)
            break
        passes = {ranks[r]["passes"].get((b["loader"], b.get("epoch"))) for r, d in zip(order, drawn) for b in d}  # noqa: B905
        if len(passes) != 1 or None in passes or (where is not None and passes != {where}):
            stopped = "step %d: its batches were drawn in unlike passes of the data (%s)" % (
                step,
                "; ".join(sorted("pass %s made at %s" % (p[1], p[0]) for p in passes if p is not None))
                or "no pass recorded",
            )
            break
        where = passes.pop()
        for j in range(count):
            batches.append([i for share in shares for i in share[1][j]])
            parts.append([(d[j]["size"], d[j]["digest"], d[j].get("shapes")) for d in drawn])
    if len(batches) > 1 and second is None:
        del batches[1:], parts[1:]  # a first step of two batches, and no second step to show it was one ahead
    init = os.path.join(directory, "rank-0.init.pt")
    site, nth, length = where or (None, None, None)
    _REPLAY["plan"] = {
        "site": site,
        "nth": nth,
        "length": length,
        "batches": batches,
        "parts": parts,
        "init": init if os.path.exists(init) else None,
    }
    note = {"steps": len(batches), "site": site, "weights": bool(_REPLAY["plan"]["init"])}
    if stopped is not None:
        note["stopped"] = stopped
    _rank_or_process_note(replay_plan=note)
    return _REPLAY["plan"]


def _training_share(event):
    """(loader, [indices of each batch]) a step trained on: the batches of the loader of the last
    one consumed before the optimizer step (evaluation or a sanity check drawn from another loader
    meanwhile changes no weight); None where there is none; a reason where the step cannot be
    replayed."""
    if event is None:
        return None
    loaders, indices = event.get("loaders") or [], event.get("indices") or []
    if not loaders or len(loaders) != len(indices):
        return None
    if (event.get("backwards") or 0) > 1:
        return "each rank ran %d backward passes before its optimizer step (gradient accumulation)" % event["backwards"]
    mine = [i for loader, i in zip(loaders, indices) if loader == loaders[-1]]  # noqa: B905
    if any(i is None for i in mine):
        return None
    return loaders[-1], mine


def _rank_or_process_note(**fields):
    rank = _rank()
    if rank is not None:
        rank.emit("replay", flush=True, **fields)


def _load_initial_weights(params):
    """The recorded run's initial weights into the first optimizer's parameters, in order, before
    the first forward; refused (and said) where their number or shapes differ."""
    plan = _replay_plan()
    if plan["init"] is None:
        _REPLAY["weights"] = "rank 0 kept no weights (a model above 64 MiB, or over 4096 parameters)"
        _rank_or_process_note(weights=_REPLAY["weights"])
        return
    import torch

    saved = torch.load(plan["init"], weights_only=True)
    shapes = [tuple(p.shape) for p in params]
    if shapes != [tuple(t.shape) for t in saved]:
        _REPLAY["weights"] = "the optimizer's parameters are not the recorded run's (%d against %d)" % (
            len(shapes),
            len(saved),
        )
    else:
        with torch.no_grad():
            for param, value in zip(params, saved):  # noqa: B905 - equal lengths, checked above
                param.copy_(value.to(device=param.device, dtype=param.dtype))
        _REPLAY["weights"] = "loaded"
    _rank_or_process_note(weights=_REPLAY["weights"])


def _replayed_indices(iterator, indices):
    """The recorded global batch instead of ``indices``, in the pass made where the recorded run's
    training pass was made (the same site, the same how-manieth pass there, a dataset of the same
    length), while recorded batches last; never an index the dataset does not have."""
    plan = _replay_plan()
    if not plan["batches"] or not isinstance(indices, list):
        return None
    if _REPLAY["iterator"] is None:
        if _rank() is None:
            return None
        epoch = _current_epoch(iterator)
        if (_user_site(epoch.site), epoch.nth) != (plan["site"], plan["nth"]) or epoch.length != plan["length"]:
            return None
        _REPLAY["iterator"] = iterator
        _rank_or_process_note(loader=epoch.loader)
    if iterator is not _REPLAY["iterator"] or _REPLAY["k"] >= len(plan["batches"]):
        return None
    replayed = list(plan["batches"][_REPLAY["k"]])
    try:
        size = len(iterator._dataset)
    except TypeError:
        size = None
    if size is not None and any(not isinstance(i, int) or not 0 <= i < size for i in replayed):
        _REPLAY["k"] = len(plan["batches"])  # the dataset is not the recorded one: no more replay
        _rank_or_process_note(draw=_REPLAY["consumed"], data="indices outside the dataset (%d samples)" % size)
        return None
    _REPLAY["k"] += 1
    # Loaded in this process from a map-style data set (an iterable one ignores the indices), the
    # batch is a function of its indices unless loading draws random numbers.
    loaded_here = getattr(iterator, "_num_workers", 1) == 0 and getattr(iterator, "_dataset_kind", 1) == 0
    _REPLAY["loading"] = _loading_random_state() if loaded_here else None
    return replayed


def _slice(batch, start, stop):
    if _is_tensor(batch):
        return batch[start:stop]
    if isinstance(batch, dict):
        return {k: _slice(v, start, stop) for k, v in batch.items()}
    nested = isinstance(batch, (list, tuple)) and batch
    if nested and all(_is_tensor(b) or isinstance(b, (list, tuple, dict)) for b in batch):
        return type(batch)(_slice(b, start, stop) for b in batch)
    return batch[start:stop]


def _replayed_batch(batch):
    """Each rank's share of a replayed global batch, digested as that rank digested its own:
    equal only where the same indices gave the same samples (no random augmentation, a
    collate that stacks rows); and the random state, to see whether the step draws from it."""
    plan, k = _replay_plan(), _REPLAY["consumed"]
    _REPLAY["consumed"] += 1
    if k >= len(plan["parts"]):
        return
    before, _REPLAY["loading"] = _REPLAY.get("loading"), None
    deterministic = before is not None and before == _loading_random_state()
    start, differs = 0, []
    for rank, (size, recorded, recorded_shapes) in enumerate(plan["parts"][k]):
        share = _slice(batch, start, start + (size or 0))
        hasher = hashlib.blake2b(digest_size=12)
        digest(share, hasher)
        if hasher.hexdigest() != recorded:
            differs.append(rank)
            deterministic = deterministic and recorded_shapes is not None and recorded_shapes == shapes(share)
        start += size or 0
    if not differs:
        _rank_or_process_note(draw=k, data="equal")
    else:
        # Same shapes, and no random number drawn while loading: the ranks' data set holds other values.
        _rank_or_process_note(
            draw=k, data="differs on rank %d" % differs[0], ranks=differs, same_shapes_no_random=deterministic
        )
    _REPLAY["rng"] = _random_state()


def _loading_random_state():
    """The random generators a data set or collate draws augmentation from: torch's, Python's
    and NumPy's (where imported)."""
    import random

    hasher = hashlib.blake2b(_random_state().encode(), digest_size=12)
    hasher.update(repr(random.getstate()).encode())
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        state = numpy.random.get_state()
        hasher.update(state[1].tobytes() + repr(state[2:]).encode())
    return hasher.hexdigest()


def _random_state():
    import torch

    state = [torch.random.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state.append(torch.cuda.get_rng_state())
    return hashlib.blake2b(b"".join(bytes(s.numpy()) for s in state), digest_size=12).hexdigest()


def _replay_randomness(step):
    """Whether the step drew random numbers between its batch and its optimizer step (dropout,
    a random mask): then one process cannot draw what the ranks drew."""
    drew, _REPLAY["rng"] = _random_state() != _REPLAY["rng"], None
    _rank_or_process_note(step=step, random=drew)


def instrument_serialization(module):
    """torch.save writes through C++, past Python's audit hooks: record its target here."""

    def before_save(args, kwargs):
        target = args[1] if len(args) > 1 else kwargs.get("f")
        if _rank() is not None and isinstance(target, (str, os.PathLike)):
            _record_write(os.path.abspath(os.fspath(target)))

    module.save = _hook(module.save, before=before_save)


#: Learning-rate schedules made for a number of steps, by the attribute that holds it.
_SCHEDULE_LENGTHS = {
    "OneCycleLR": "total_steps",
    "CosineAnnealingLR": "T_max",
    "LinearLR": "total_iters",
    "PolynomialLR": "total_iters",
}
#: Per schedule made (by id): [its class, the attribute and the length it was made for (None for
#: a schedule not made for a number of steps), the times the job stepped it].
_SCHEDULES = {}


def instrument_losses(module):
    """The loss modules made before the first optimizer step (:func:`_loss_settings`)."""
    base = getattr(module, "_Loss", None)
    if base is not None and "__init__" in vars(base):
        base.__init__ = _hook(base.__init__, before=lambda args, kwargs: args[0] if args else None, after=_loss_made)


def instrument_lr_scheduler(module):
    """Schedules made for a number of steps: how many they were made for and how many times the
    job stepped them (``scheduler.step()`` after it was made), written at exit. One process
    sizes its schedule to its own steps; a schedule sized from the dataset, not from the loader a
    rank iterates, covers another share of the ranks' training (docs/report.md)."""
    base = getattr(module, "LRScheduler", None)
    if base is None or "__init__" not in vars(base):
        return

    def made(result, args):
        scheduler = args[0] if args else None
        if scheduler is None or _rank() is None or id(scheduler) in _SCHEDULES or len(_SCHEDULES) >= 16:
            return
        attribute = _SCHEDULE_LENGTHS.get(type(scheduler).__name__)
        length = getattr(scheduler, attribute, None) if attribute else None
        if not isinstance(length, int) or isinstance(length, bool):
            attribute = length = None
        _SCHEDULES[id(scheduler)] = [type(scheduler).__name__, attribute, length, 0]

    def stepped(args, kwargs):
        entry = _SCHEDULES.get(id(args[0])) if args else None
        if entry is not None:
            entry[3] += 1

    base.__init__ = _hook(base.__init__, before=lambda args, kwargs: args, after=made)
    base.step = _hook(base.step, before=stepped)
    plateau = getattr(module, "ReduceLROnPlateau", None)  # makes itself without the base's __init__
    if plateau is not None and "__init__" in vars(plateau):
        plateau.__init__ = _hook(plateau.__init__, before=lambda args, kwargs: args, after=made)


def instrument_checkpoint(module):
    """Activation checkpointing: whether the job recomputes in a reentrant backward pass (the
    default where ``use_reentrant`` is not given), which DDP's unused-parameter search and static
    graph do not support; recorded at the first call of each process."""
    seen = {"done": False}

    def called(args, kwargs):
        if seen["done"] or _rank() is None:
            return
        seen["done"] = True
        reentrant = kwargs.get("use_reentrant")
        _rank().emit(
            "activation_checkpoint",
            flush=True,
            reentrant=True if reentrant is None else bool(reentrant),
            caller=user_line() or caller(),
        )

    module.checkpoint = _hook(module.checkpoint, before=called)


def _schedules_ended():
    rank = _rank()
    if rank is not None and _SCHEDULES:
        rank.emit("schedules", flush=True, made=[list(entry) for entry in _SCHEDULES.values()][:8])


#: module name → instrumentation applied right after the module is executed (before anyone
#: can bind its names), so ``from torch.distributed import all_reduce`` gets the wrapper too.
_HOOKS = {
    "torch.distributed.distributed_c10d": instrument_distributed,
    "torch.utils.data.dataloader": instrument_dataloader,
    "torch.optim.optimizer": instrument_optimizer,
    "torch.nn.modules.loss": instrument_losses,
    "torch.optim.lr_scheduler": instrument_lr_scheduler,
    "torch.utils.checkpoint": instrument_checkpoint,
    "torch.serialization": instrument_serialization,
    "torch.autograd": instrument_autograd,
    "torch.nn.parallel.distributed": instrument_model_wrappers,
    "torch.nn.parallel.data_parallel": instrument_model_wrappers,
    "torch.distributed.fsdp.fully_sharded_data_parallel": instrument_model_wrappers,
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
    """Runs the module's own loader, then the probe's instrumentation. The module never sees this
    loader: its ``__loader__`` and ``__spec__.loader`` are its own loader's before it runs."""

    def __init__(self, loader, hook):
        self.loader, self.hook = loader, hook

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self.loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        _quietly("instrument %s" % module.__name__, self.hook, module)


# ---- the process: arguments, exit, children, writes -------------------------------------------


def record_arguments():
    """What the script's argument parser made of the command line (compared with the job's
    hyperparameters by the harness): parsers given no arguments or exactly the command line's
    (HfArgumentParser, jsonargparse pass ``sys.argv[1:]`` themselves)."""
    import argparse

    def before(args, kwargs):
        given = args[1] if len(args) > 1 else kwargs.get("args")
        return given is None or (isinstance(given, (list, tuple)) and list(given) == sys.argv[1:])

    def after(result, own_command_line):
        if own_command_line and isinstance(result, tuple) and result:
            main = sys.modules.get("__main__")
            _process().update(
                parsed_args=_jsonable(vars(result[0])),
                argv_parsed=sys.argv[1:],
                parsed_in=getattr(main, "__file__", None),
            )

    parser = argparse.ArgumentParser
    parser.parse_known_args = _hook(parser.parse_known_args, before=before, after=after)


def record_exit():
    """The exit code (``sys.exit``) and the exception that ended the process. The interpreter
    keeps an uncaught exception in ``sys.last_value`` before exit handlers run, so
    ``sys.excepthook`` stays the job's own."""
    original_exit = sys.exit

    def before(args, kwargs):
        code = args[0] if args else kwargs.get("status", kwargs.get("code"))
        _process().exit_code = code if isinstance(code, int) else (0 if code is None else 1)

    sys.exit = _hook(original_exit, before=before)
    atexit.register(_quietly, "exit", _at_exit)
    os._exit = _hook(os._exit, before=lambda args, kwargs: _before_os_exit())


def _before_os_exit():
    """``os._exit`` runs no exit handler (torchrun workers often leave through it): the rank's
    pending steps and events are written first, or the steps since the heartbeat's last flush are
    lost. Only the rank's own process: a forked child may hold a copy of a lock taken at the fork."""
    rank = _rank()
    if rank is None:
        return
    _quietly("loss ledger", flush_steps)
    _quietly("schedules", _schedules_ended)
    _quietly("data ledger", close_abandoned)
    rank.close()


def _at_exit():
    if _rank() is not None:
        _quietly("gpus", _name_gpus)
        _quietly("loss ledger", flush_steps)
        _quietly("schedules", _schedules_ended)
    process = _process()
    fields = {"ended_at": now(), "exit_code": process.exit_code}
    if _PROCESS_STEPS["n"]:
        fields["optimizer_steps"] = _PROCESS_STEPS["n"]
    last = getattr(sys, "last_value", None)
    if last is not None and not isinstance(last, SystemExit):
        fields.update(exit_code=1, exception="%s: %s" % (type(last).__name__, last))
    process.update(**fields)


def record_multiprocessing_children():
    """Children started by multiprocessing (fork or spawn) report their own exit code and the
    exception that ended them, so a parent that never checks its children cannot hide their
    crash."""
    import multiprocessing.process as mp

    original = mp.BaseProcess._bootstrap

    @functools.wraps(original)
    def _bootstrap(self, *args, **kwargs):
        _quietly("multiprocessing child", _child_started, self)
        code = original(self, *args, **kwargs)
        _quietly("multiprocessing child", _child_ended, code)
        return code

    mp.BaseProcess._bootstrap = _bootstrap


def _child_started(child):
    global RANK
    RANK = _rank()  # a forked child's parent's stream is not its own
    _process().update(mp_target=getattr(child._target, "__qualname__", repr(child._target)), mp_name=child.name)
    _CHILD["exception"] = None
    # The exception that ends the child: multiprocessing prints it and returns 1, so it never
    # reaches sys.last_value. The hook in sys.excepthook's place is never called there either;
    # the traceback module is what prints it.
    import traceback

    original = traceback.print_exc
    if getattr(original, "_harness_probe", False):
        return

    @functools.wraps(original)
    def print_exc(*args, **kwargs):
        _CHILD["exception"] = sys.exc_info()[1]
        return original(*args, **kwargs)

    print_exc._harness_probe = True
    traceback.print_exc = print_exc


_CHILD = {"exception": None}


def _child_ended(code):
    fields = {"ended_at": now(), "exit_code": code}
    exc = _CHILD["exception"]  # the last one printed: multiprocessing's own print of the crash
    if code not in (0, None) and exc is not None and not isinstance(exc, SystemExit):
        fields["exception"] = "%s: %s" % (type(exc).__name__, exc)
    _process().update(**fields)


_WRITES = {"seen": set(), "contract": (), "ignored": ()}


def _record_write(path):
    if path in _WRITES["seen"] or path.startswith(_WRITES["ignored"]):
        return
    _WRITES["seen"].add(path)
    _rank().emit("write", flush=True, path=path, contract=path.startswith(_WRITES["contract"]), caller=caller())


def record_writes():
    """Files each rank opens for writing: several ranks writing one model file, or files written
    where SageMaker keeps nothing, are findings of their own. And the scratch files the job's own
    code opens outside ``/opt/ml`` (:func:`_scratch_opened`): SageMaker hosts share none."""
    roots = [os.environ.get(k) for k in ("SM_MODEL_DIR", "SM_OUTPUT_DIR", "SM_OUTPUT_DATA_DIR")]
    _WRITES["contract"] = tuple(p for p in [*roots, "/opt/ml/model", "/opt/ml/output", "/opt/ml/checkpoints"] if p)
    _WRITES["ignored"] = ("/tmp", "/var/tmp", "/dev", "/proc", "/sys", DIR)
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    _SCRATCH["system"] = tuple(
        p.rstrip(os.sep) + os.sep for p in ("/opt/ml", DIR, "/dev", "/proc", "/sys", "/etc", "/usr", *prefixes) if p
    )

    def opened(args):
        if _rank() is None or not isinstance(args[0], str):
            return
        mode, flags = args[1] or "r", args[2] or 0
        writes = ("w" in mode or "a" in mode or "x" in mode or "+" in mode) or flags & (os.O_WRONLY | os.O_RDWR)
        path = os.path.abspath(args[0])
        if writes:
            _record_write(path)
        if not (path + os.sep).startswith(_SCRATCH["system"]):
            _scratch_opened(path, "w" if writes else "r")

    def audit(event, args):
        if event == "open" and RANK is not None:  # an audit hook that raises would fail the job's open()
            _quietly("open", opened, args)

    sys.addaudithook(audit)


#: Paths that are no scratch (the contract's tree, the system, Python itself), and the
#: (path, mode) pairs already recorded.
_SCRATCH = {"system": (), "seen": set()}
_STDLIB = re.compile(r"[/\\]lib[/\\]python\d[\d.]*[/\\](?!.*(?:site|dist)-packages)|^<frozen")


@functools.lru_cache(maxsize=None)
def _stdlib_file(filename):
    return _STDLIB.search(filename) is not None


def _scratch_opened(path, mode):
    """A ``scratch`` event when the job's own code opens a file outside ``/opt/ml`` (directly or
    through the standard library: ``open``, ``pathlib``, ``json``): the first frame beyond the
    standard library is the job's. A library's own caches (a compiler's, a hub's) are left out."""
    if (path, mode) in _SCRATCH["seen"]:
        return
    for frame in _frames():
        filename = frame.f_code.co_filename
        if _stdlib_file(filename):
            continue
        if _library_file(filename):
            return
        _SCRATCH["seen"].add((path, mode))
        _rank().emit("scratch", flush=True, path=path, mode=mode, caller="%s:%d" % (filename, frame.f_lineno))
        return


# ---- environment variables the job reads and sets ---------------------------------------------

#: At most this many names per process are kept, read by the job's code, by libraries (importing
#: torch alone reads some 330, most of them unset) and set (then only counted); values up to this
#: many characters; a change is saved at most this often, and at exit.
_ENVIRON_NAMES = {"job": 300, "library": 1000, "writes": 300}
_ENVIRON_VALUE = 200
_ENVIRON_SAVE_EVERY_S = 1.0
#: This process's reads and writes: {name: entry}; an entry is never changed once stored (a new
#: one replaces it), so a save may copy the dicts while another thread records.
_ENVIRON = {"pid": None, "reads": {}, "writes": {}, "kept": {}, "dropped": 0, "dirty": False, "saved": 0.0}
#: Code of the environment's own methods (os, collections.abc): never the reader.
_ENVIRON_CODE = set()
#: Per thread: the frame that is listing the whole environment (``dict(os.environ)``, ``.copy()``,
#: ``.items()``), as (id, code, instruction): its reads are a copy, not reads of single names.
_LISTING = threading.local()


def _environ_state():
    """This process's reads and writes; a forked child starts its own (``os.register_at_fork``)."""
    if _ENVIRON["pid"] != os.getpid():
        _ENVIRON.update(pid=os.getpid(), reads={}, writes={}, kept={}, dropped=0, dirty=False, saved=0.0)
    return _ENVIRON


def _environ_fields():
    """What goes into the process record: ``env_reads`` and ``env_writes``, copied (a copy of a
    dict is one step for other threads) before anything iterates them."""
    if _ENVIRON["pid"] != os.getpid():
        return {}
    _ENVIRON["dirty"] = False
    reads, writes = dict(_ENVIRON["reads"]), dict(_ENVIRON["writes"])
    if not reads and not writes:
        return {}
    fields = {"env_reads": {k: v for k, v in reads.items() if v is not None}, "env_writes": writes}
    if _ENVIRON["dropped"]:
        fields["env_names_dropped"] = _ENVIRON["dropped"]
    return fields


def _save_environ(wait):
    process = _process()
    if process is not None and process.save(wait=wait):
        _ENVIRON["saved"] = time.monotonic()


def _environ_changed():
    state = _ENVIRON
    state["dirty"] = True
    if time.monotonic() - state["saved"] >= _ENVIRON_SAVE_EVERY_S:
        _save_environ(False)


def _reader():
    """The frame that asked the environment: past the hook's own frames, the first outside os
    and collections.abc; None where that is the probe itself (the hooks skip the probe's work
    under :func:`_quietly` before they get here)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PROBE_FILE):
        frame = frame.f_back
    while frame is not None and frame.f_code.co_filename in _ENVIRON_CODE:
        frame = frame.f_back
    if frame is None or frame.f_code.co_filename.startswith(_PROBE_DIR):
        return None
    return frame


def _where(frame):
    """(the reading line, the job's own line that led to it where a library read it, whether
    the job read it itself). A library reads many names from one line (torch's configuration
    modules read some 330 while torch is imported, deep in the import's stack): the walk down to
    the job's line is made once per reading line and the line that called it."""
    calling = frame.f_back
    key = (frame.f_code, frame.f_lineno, calling and calling.f_code, calling and calling.f_lineno)
    known = _WHERE.get(key)
    if known is None:
        known = _WHERE[key] = _walk_to_job(frame)
    return known


#: :func:`_where`'s answers, by the reading line and the line that called it.
_WHERE = {}


def _walk_to_job(frame):
    at = "%s:%d" % (frame.f_code.co_filename, frame.f_lineno)
    first = frame
    while frame is not None:
        filename = frame.f_code.co_filename
        if not _library_file(filename) and not filename.startswith(_PROBE_DIR):
            return at, (None if frame is first else "%s:%d" % (filename, frame.f_lineno)), frame is first
        frame = frame.f_back
    return at, None, False


def _listing_key(frame):
    return (id(frame), frame.f_code, frame.f_lasti)


def _environ_listed():
    """``__iter__``: the frame that lists the environment; its own reads of each name follow."""
    frame = _reader()
    _LISTING.key = None if frame is None else _listing_key(frame)


def _keep(state, kind):
    """Whether one more name of ``kind`` is kept; else it is counted (``env_names_dropped``)."""
    kept = state["kept"].get(kind, 0)
    if kept >= _ENVIRON_NAMES[kind]:
        state["dropped"] += 1
        return False
    state["kept"][kind] = kept + 1
    return True


def _clip(value):
    return value if len(value) <= _ENVIRON_VALUE else value[:_ENVIRON_VALUE] + "..."


def _environ_read(name, value):
    """The first read of ``name`` in this process: the value it saw (None: unset), where."""
    state = _environ_state()
    if name in state["reads"]:
        return
    frame = _reader()
    if frame is None or getattr(_LISTING, "key", None) == _listing_key(frame):
        return
    at, user, own = _where(frame)
    if not _keep(state, "job" if own else "library"):
        state["reads"][name] = None  # counted once, never kept
        return
    entry = {"value": None if value is None else _clip(redact({name: value})[name]), "set": value is not None}
    entry.update(at=at, by="job" if own else "library")
    if user is not None:
        entry["user"] = user
    if name in state["writes"]:
        entry["set_by_job"] = True
    state["reads"][name] = entry
    _environ_changed()


def _environ_written(name, value):
    """A write (value) or a delete (None) of ``name``: the value it left, where it was first set."""
    state = _environ_state()
    before = state["writes"].get(name)
    if before is not None and before.get("value") == (None if value is None else _clip(redact({name: value})[name])):
        return
    frame = _reader()
    if frame is None:
        return
    if before is None and not _keep(state, "writes"):
        return
    entry = {"value": None if value is None else _clip(redact({name: value})[name]), "deleted": value is None}
    entry["at"] = before["at"] if before else _where(frame)[0]
    entry["times"] = (before["times"] if before else 0) + 1
    state["writes"][name] = entry
    _environ_changed()


def record_environ():
    """Which variables the job reads (``os.environ[...]``, ``.get``, ``os.getenv``, ``in``; unset
    names too) and sets or deletes: hooks on ``os._Environ``, so every copy of the mapping and
    every library is covered. Reads through C (``getenv`` in torch's or NCCL's native code) are
    not seen. Listing the whole environment (``dict(os.environ)``, ``.copy()``, ``.items()``, as
    launchers do for their children) is no read of each name. Cheap on the way: a name already
    recorded costs one dict lookup; records are saved at most every second, and at exit."""
    import collections.abc

    environ = os._Environ
    _ENVIRON_CODE.update(
        (
            environ.__getitem__.__code__.co_filename,
            collections.abc.Mapping.get.__code__.co_filename,
        )
    )
    _environ_state()
    os.register_at_fork(after_in_child=_environ_state)
    getitem, setitem, delitem, iterate = environ.__getitem__, environ.__setitem__, environ.__delitem__, environ.__iter__

    @functools.wraps(getitem)
    def __getitem__(self, key):
        try:
            value = getitem(self, key)
        except KeyError:
            if isinstance(key, str) and self is os.environ:
                _seen(key, None)
            raise
        if isinstance(key, str) and self is os.environ:
            _seen(key, value)
        return value

    def _seen(key, value):
        state = _ENVIRON
        if key in state["reads"]:
            if state["dirty"] and time.monotonic() - state["saved"] >= _ENVIRON_SAVE_EVERY_S:
                _quietly("environ", _save_environ, False)
            return
        if not _probe_busy():
            _quietly("environ", _environ_read, key, value)

    @functools.wraps(setitem)
    def __setitem__(self, key, value):
        setitem(self, key, value)
        if self is os.environ and isinstance(key, str) and not _probe_busy():
            _quietly("environ", _environ_written, key, value)

    @functools.wraps(delitem)
    def __delitem__(self, key):
        delitem(self, key)
        if self is os.environ and isinstance(key, str) and not _probe_busy():
            _quietly("environ", _environ_written, key, None)

    @functools.wraps(iterate)
    def __iter__(self):
        if self is os.environ and not _probe_busy():
            _quietly("environ", _environ_listed)
        return iterate(self)

    environ.__getitem__, environ.__setitem__ = __getitem__, __setitem__
    environ.__delitem__, environ.__iter__ = __delitem__, __iter__


def install():
    global PROCESS
    if not DIR:
        return
    rank = os.environ.get("RANK") or None
    own = rank is not None and not _multiprocessing_helper(_command_line()) and not _inherited_rank(rank)
    PROCESS = Process(own_rank=own)
    _quietly("fingerprint", fingerprint)
    _quietly("exit", record_exit)
    _quietly("arguments", record_arguments)
    _quietly("multiprocessing", record_multiprocessing_children)
    _quietly("writes", record_writes)
    sys.meta_path.insert(0, _Finder())
    if own:
        _quietly("rank", start_rank, rank)
    elif REPLAY_FROM and rank is None and not _multiprocessing_helper(_command_line()):
        _quietly("rank", start_rank, 0)  # a replay without a process group records as rank 0
    _quietly("environ", record_environ)
