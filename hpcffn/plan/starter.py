"""`hpcffn init`: a commented starter spec that names every section a user usually edits."""

from __future__ import annotations

from pathlib import Path

from hpcffn.core.atomic import atomic_write_text
from hpcffn.core.errors import HpcffnError

STARTER = """\
# hpcffn experiment spec. Check it with `hpcffn validate THIS.yaml`, then `hpcffn plan THIS.yaml`.
# Relative paths resolve against this file's folder. Sizes and boxes are z,y,x unless a
# comment says x,y,z (FFN's own model flags). Full reference: docs/spec.md.

name: my-experiment            # letters, digits, _ . - ; used in job names
workdir: work                  # plan.json, scripts, logs, checkpoints and outputs go here

volumes:
  - name: vol1
    # HDF5 as path.h5:dataset (default dataset raw), a multi-page .tif, or a folder of .tif slices
    raw: data/vol1_raw.h5:raw
    # groundtruth for training and evaluation (default HDF5 dataset: stack); leave out to only segment
    groundtruth: data/vol1_gt.h5:stack
    # white: white background, black objects (lab TIFs); black: zero background; labels: ids
    polarity: labels
    # shape: [1500, 4000, 4000]  # z,y,x: declare it to plan before the data is copied here

subvolume:
  size: [500, 500, 500]        # z,y,x tile size
  overlap: [32, 32, 32]        # extra context around each tile for inference
  groups: 1                    # GPU training groups; tiles are dealt out balanced by voxels
  # array_throttle: 32         # at most N array tasks at once
  # min_edge: [65, 65, 65]     # edge remainders shorter than this merge into the previous tile

# convert:                     # uneven contrast across/within sections? equalise it (CLAHE)
#   clahe: {enabled: true, kernel_size: [16, 128, 128], clip_limit: 0.01}

ffn:                           # everything here has FFN's usual default; a few common ones:
  partitions:
    lom_radius: [24, 24, 24]   # x,y,z
    min_size: 10000
  coordinates:
    margin: [24, 24, 24]       # z,y,x; at least FOV radius + deltas
  model:
    depth: 12
    fov_size: [33, 33, 33]     # x,y,z
    deltas: [8, 8, 8]          # x,y,z
  training:
    batch_size: 4
    learning_rate: 0.001
    max_steps: 1000000
    # init_checkpoint: fib25   # fine-tune from Google's FIB-25 weights (shipped): only for EM like
    #                          # FIB-25 (isotropic FIB-SEM, ~8-10 nm, stained neural tissue)
  inference:
    segment_threshold: 0.6
    min_segment_size: 1000
    # checkpoint: fib25        # segment with Google's FIB-25 weights as they are (same kind of EM;
    #                          # not for anisotropic ssTEM, other voxel sizes or stains)
    # parallel_fills: 8        # GPUs: fill 8 seeds side by side, one batched model call (the same
    #                          # segmentation as FFN's one-at-a-time loop; 1 = FFN's loop)
    # tiles_per_task: 8        # GPUs: each infer task segments 8 tiles side by side, their FOVs in
    #                          # one model call (each tile's result as alone; ceil(tiles/8) tasks)
    # precision: mixed_float16 # GPUs: float16 network, faster, a slightly different segmentation
    # fov_per_second: 60       # FOV/s of one task on your GPU (bench_gpu.py): `hpcffn plan` prints
    #                          # the expected GPU-hours from it
  # stitch:                    # joining tiles: segments agreeing in the overlaps become one
  #   min_overlap_voxels: 100
  #   min_overlap_fraction: 0.5
  #   resegment: false         # default true: uncertain joins are decided by one FFN fill each (the
  #                            # joins jobs load the checkpoint); false: by the overlap's counts alone

cluster:
  profile: generic             # generic, local, ibex, or the path of your own profile .yaml
  # Later wins: profile defaults < these defaults < the profile's per-stage settings < per stage
  # here. `hpcffn plan` prints the time, memory and GPUs each job gets.
  defaults:                    # every stage, unless the profile or a stage below sets the key
    # account: my-account
    # mail_user: me@example.org
    # mail_type: END,FAIL
    time: "12:00:00"
  # train:                     # one stage only: wins over the profile too
  #   time: "3-00:00:00"
  #   partition: gpu
  #   gpus: 1
  #   constraint: "[v100]"
  # partitions: {partition: cpu, cpus: 8, memory: 64G}   # stages 1-2 need no GPU
  # modules: [cuda/11.8]  setup: ["source ~/miniconda3/bin/activate ffn"]  extra_sbatch: [--exclusive]

container:
  runtime: apptainer           # apptainer, singularity, or none (module load / conda via setup)
  image: hpcffn.sif            # apptainer build hpcffn.sif containers/hpcffn.def
  # binds: [/scratch/shared:/data:ro]   # the workdir and input folders are bound automatically

# stages: [convert, partitions, coordinates, train, infer, stitch, evaluate]   # default: all that apply
# templates: my-templates      # your own *.sbatch.j2, searched before the shipped ones
"""


def write_starter(path: Path, force: bool = False) -> None:
    """Write the starter spec; an existing file is only replaced with force."""
    if path.exists() and not force:
        raise HpcffnError(f"{path} already exists; choose another path or pass --force to overwrite it")
    if path.is_dir():
        raise HpcffnError(f"{path} is a directory; give a file name such as {path / 'experiment.yaml'}")
    atomic_write_text(path, STARTER)
