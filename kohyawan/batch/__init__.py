"""Sweeps, batches of jobs, GPU allocation and SLURM submission.

Every job runs the real ``kohyawan run`` command as a child process (the CLI is the contract: it is also
exactly what a SLURM array task runs on the cluster). Modules:

- ``manifest``: the batch manifest, validated completely before anything starts;
- ``jobs``: one job -> the argv and environment of its ``kohyawan run`` / ``runs resume`` / ``export`` (pure);
- ``queue``: the persistent SQLite queue in the batch folder;
- ``gpus``: one job per GPU (pure);
- ``scheduler``: the local loop that starts jobs on free GPUs and records what happened;
- ``results``: what a finished run folder says (losses, time, VRAM, checkpoints) and the summary documents;
- ``sweep``: variants of one profile / dataset / seed, compared;
- ``slurm``: the job-array script, sbatch, squeue/sacct, and merging into the queue.
"""
