"""Fails the way a training script does: a line on stdout, then an exception (tests/test_toolkit.py)."""

print("about to fail", flush=True)
raise ValueError("bad shape: (3, 4)")
