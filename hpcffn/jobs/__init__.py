"""Login node, no TensorFlow: getting a plan's job scripts run and watching them.

submit (sbatch chain, resume), status, cancel/logs (admin), check (probe every script once),
the local runner (the same scripts without SLURM), the SLURM client and state.json. Reads the
plan through core.plan_model and asks stages only for file names (markers, infer state).
"""
