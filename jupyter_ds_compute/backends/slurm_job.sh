#!/bin/bash
# jupyter-ds-compute: one single-user server as a Slurm batch job.
#
# Rendered with string.Template by SlurmBackend. Every value comes from the
# operator's config (c.SlurmBackend.*, the tier's extra.slurm) and is quoted
# by the backend; user_options never reach this script. Partition, CPUs,
# memory, GPUs, time, account and QoS are on sbatch's command line (argv),
# not here. $$sbatch_lines are the operator's extra "#SBATCH ..." lines.
$sbatch_lines
set -euo pipefail
$prologue
exec $launch
