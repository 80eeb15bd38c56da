"""What the rungs run on: process supervision and hang detection, signals, the sandbox of the
local rung, container images, requirements installs, S3 transfers and LocalStack."""
