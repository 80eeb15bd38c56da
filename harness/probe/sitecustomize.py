"""Entry point of the harness probe (see ``_harness_probe``): imported by every Python process a
rung starts, because the rung puts this directory first on ``PYTHONPATH``. Without
``HARNESS_PROBE_DIR`` it does nothing but hand over to the ``sitecustomize`` it shadows.
"""

import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _guard_opt_ml():
    """Where the rung cannot give this process its own /opt/ml, any use of the machine's real one
    fails at once with the reason, instead of reading stale files or writing outside the run."""
    events = {"open", "os.mkdir", "os.rename", "os.listdir", "os.scandir", "os.remove", "shutil.copyfile"}

    def audit(event, args):
        if event in events and args and str(args[0]).startswith("/opt/ml"):
            raise PermissionError(
                "harness: this rung does not emulate /opt/ml (no private namespaces here), so %s on %s "
                "was refused. Read paths from SM_MODEL_DIR, SM_CHANNEL_<NAME>, SM_INPUT_CONFIG_DIR, or run "
                "the harness as root" % (event, args[0])
            )

    sys.addaudithook(audit)


def _chain_next_sitecustomize():
    """Keep the sitecustomize this probe shadows (Debian's, a team's) working."""
    others = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if os.environ.get("HARNESS_PROBE_DIR"):
    try:
        import _harness_probe

        _harness_probe.install()
    except Exception as exc:  # the probe must never stop the job
        sys.stderr.write("harness probe disabled: %r\n" % (exc,))
    if os.environ.get("HARNESS_GUARD_OPT_ML"):
        _guard_opt_ml()
_chain_next_sitecustomize()
