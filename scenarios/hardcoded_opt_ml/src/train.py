"""Writes its model and a config echo to hard-coded /opt/ml paths."""

import json
import socket

with open("/opt/ml/input/config/resourceconfig.json") as handle:
    host = json.load(handle)["current_host"]
with open(f"/opt/ml/model/{host}.txt", "w") as handle:
    handle.write(f"trained on {host} (hostname {socket.gethostname()})\n")
print(f"wrote /opt/ml/model/{host}.txt")
