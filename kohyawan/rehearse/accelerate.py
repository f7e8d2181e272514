"""A stand-in for ``accelerate launch`` (single process): same process tree and failure text.

Like accelerate's ``simple_launcher`` it runs the script as a child python and, when the child fails,
raises ``subprocess.CalledProcessError`` (exit 1), so a failure's own text is only in the log tail and
signalling only this process would orphan the child.
"""

from __future__ import annotations

import subprocess
import sys

_VALUED = {"--num_cpu_threads_per_process", "--mixed_precision", "--num_processes", "--num_machines",
           "--dynamo_backend", "--gpu_ids", "--main_process_port", "--main_process_ip", "--machine_rank",
           "--config_file", "--dynamo_mode"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # both spellings: ``accelerate launch ...`` and ``python -m accelerate.commands.launch ...``
    i = 1 if argv and argv[0] == "launch" else 0
    while i < len(argv) and argv[i].startswith("--"):
        i += 2 if argv[i] in _VALUED and "=" not in argv[i] else 1
    if i >= len(argv):
        print("accelerate launch: error: the following arguments are required: training_script", file=sys.stderr)
        return 2
    cmd = [sys.executable, *argv[i:]]
    process = subprocess.Popen(cmd)
    process.wait()
    if process.returncode != 0:
        raise subprocess.CalledProcessError(returncode=process.returncode, cmd=cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
