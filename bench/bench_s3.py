"""S3 channel staging and artifact upload throughput against the harness's LocalStack.

    eval "$(harness localstack up)"
    python bench/bench_s3.py [--files 400] [--file-kib 256] [--big-mib 256] [--runs 3]

Two data sets under one bucket: many small objects (``--files`` x ``--file-kib``, the shape of a
sharded CSV or image data set) and one large object (``--big-mib``, the shape of a checkpoint or
a packed data set). Measures ``harness.spec.s3.download`` of each prefix (what every rung does before
the job starts) and ``harness.spec.s3.upload`` of the large file (what it does with ``model.tar.gz``):
the median of ``--runs`` in MB/s and objects/s. LocalStack runs on this machine, so the numbers
are the harness's and boto3's cost plus LocalStack's, not a network's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.spec import s3  # noqa: E402
from harness.spec.s3 import S3Uri  # noqa: E402

BUCKET = "harness-bench"


def _timed(action: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--file-kib", type=int, default=256)
    parser.add_argument("--big-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if s3.missing_reason():
        sys.exit(f"bench_s3: {s3.missing_reason()}")
    with tempfile.TemporaryDirectory(prefix="harness-bench-s3-") as tmp:
        root = Path(tmp)
        small, big = root / "small", root / "big"
        small.mkdir()
        big.mkdir()
        for index in range(args.files):
            (small / f"part-{index:05d}.csv").write_bytes(os.urandom(args.file_kib * 1024))
        (big / "data.bin").write_bytes(os.urandom(args.big_mib << 20))
        s3.upload_tree(small, f"s3://{BUCKET}/small/", create_bucket=True)
        s3.upload_tree(big, f"s3://{BUCKET}/big/", create_bucket=True)
        small_mb, big_mb = args.files * args.file_kib / 1024 * 1.048576, args.big_mib * 1.048576

        def download(prefix: str) -> None:
            target = root / "down" / prefix
            s3.download(f"s3://{BUCKET}/{prefix}/", target)

        t_small = _timed(lambda: download("small"), args.runs)
        t_big = _timed(lambda: download("big"), args.runs)
        t_up = _timed(lambda: s3.upload(big / "data.bin", S3Uri(BUCKET, "out/model.tar.gz")), args.runs)
    print(
        f"download {args.files} x {args.file_kib} KiB: {t_small:.2f} s, {small_mb / t_small:.0f} MB/s, "
        f"{args.files / t_small:.0f} objects/s"
    )
    print(f"download 1 x {args.big_mib} MiB: {t_big:.2f} s, {big_mb / t_big:.0f} MB/s")
    print(f"upload 1 x {args.big_mib} MiB: {t_up:.2f} s, {big_mb / t_up:.0f} MB/s")


if __name__ == "__main__":
    main()
