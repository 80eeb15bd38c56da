"""Tee of the log capture (see ../capture.py): each rank's stdout and stderr go through a
timestamping child process into ``ranks/rank-N.log``, as the harness probe writes them
(``<UTC time, µs>Z <line>``), and on to the launcher, whose output becomes the host log."""

import os
import subprocess
import sys

_TEE = r"""
import datetime, sys
out = open(sys.argv[1], "ab", buffering=0)
for line in sys.stdin.buffer:
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
    out.write(stamp.replace("+00:00", "Z").encode() + b" " + line)
    sys.stdout.buffer.write(line)
    sys.stdout.buffer.flush()
"""

if os.environ.get("CAPTURE_RANKS_DIR") and os.environ.get("RANK") is not None:
    path = os.path.join(os.environ["CAPTURE_RANKS_DIR"], f"rank-{os.environ['RANK']}.log")
    sys.stdout.flush()
    sys.stderr.flush()
    tee = subprocess.Popen([sys.executable, "-S", "-c", _TEE, path], stdin=subprocess.PIPE, close_fds=True)
    os.dup2(tee.stdin.fileno(), 1)
    os.dup2(tee.stdin.fileno(), 2)
    tee.stdin.close()
    os.environ.pop("CAPTURE_RANKS_DIR")  # DataLoader workers and other children keep the rank's pipe
