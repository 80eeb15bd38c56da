"""Preprocess the CSV in worker processes, then train; the parent ignores its workers' exit codes."""

import csv
import multiprocessing
import os


def preprocess(shard: int, rows: list) -> None:
    if shard == 1:
        raise ValueError(f"shard {shard}: could not convert string to float: 'n/a'")
    with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], f"shard-{shard}.csv"), "w") as handle:
        csv.writer(handle).writerows(rows)


if __name__ == "__main__":
    with open(os.path.join(os.environ["SM_CHANNEL_TRAIN"], "train.csv")) as handle:
        rows = list(csv.reader(handle))
    workers = [multiprocessing.Process(target=preprocess, args=(i, rows[i::2])) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()  # never looks at worker.exitcode
    print("preprocessing done; training on", len(os.listdir(os.environ["SM_OUTPUT_DATA_DIR"])), "shards")
