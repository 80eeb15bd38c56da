"""Entry point: accelerate's own module, run as its __main__ (no code of accelerate's is copied here).

The module asks for ``PartialState()``, which reads no ``ACCELERATE_USE_CPU`` (``Accelerator``
does): without a GPU it would make a process group and then call itself ``DistributedType.NO``,
one process, and test every operation against itself alone. The shared state is made here first
with ``cpu=True``, as ``accelerate launch --cpu`` means it, so that the module's ``PartialState()``
is the multi-CPU one and the operations really cross the hosts."""

import runpy

from accelerate import PartialState

PartialState(cpu=True)
runpy.run_module("accelerate.test_utils.scripts.test_ops", run_name="__main__")
