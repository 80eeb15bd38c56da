"""Entry point: accelerate's test of notebook_launcher (accelerate/test_utils/scripts/test_notebook.py),
its own test functions called in the order of its ``main``, but for ``test_fault_tolerant``, which
races: each forked rank takes a number from a shared queue and puts the next one back, and a rank
that finds the queue empty in between returns at once while its peer waits for it in
``PartialState()`` (init_process_group) until gloo's timeout; seen here on 2 loaded cores. No code
of accelerate's is copied here."""

from accelerate.test_utils.scripts import test_notebook as accelerates_test

print("Test basic notebook can be ran")
accelerates_test.test_can_initialize()
print("Test clean CUDA fork (regression test for #3925)")
accelerates_test.test_clean_cuda_fork()
print("Test static rendezvous backend")
accelerates_test.test_static_rdzv_backend()
print("Test c10d rendezvous backend")
accelerates_test.test_c10d_rdzv_backend()
print("Test monitoring")  # rank 0 raises on purpose; the agent stops rank 1 and raises ChildFailedError
accelerates_test.test_monitoring()
accelerates_test.PartialState().destroy_process_group()
