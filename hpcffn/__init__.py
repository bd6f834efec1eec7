"""hpcffn: Flood-Filling Networks on SLURM, from one YAML experiment spec.

Architecture (one module, one job):
  spec -> grid -> render -> submit   (the job machinery, no TensorFlow)
  stages/                            (FFN stage code run inside the jobs)
  ffn/                               (the network, training and inference internals)
"""

__version__ = "0.1.0"

# plan.json layout version: bump when plan.json changes incompatibly, so that
# `submit`/`status`/stages refuse a plan written by an older hpcffn with a clear message.
PLAN_FORMAT = 1
