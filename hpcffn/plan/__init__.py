"""Login node, no TensorFlow: the experiment spec, tiling and GPU groups, job-script rendering, plan.json.

spec (YAML → validated models) → grid (tiles, groups) → planner (the whole plan) → render (Jinja
scripts + plan.json into the workdir). Imports core and io only.
"""
