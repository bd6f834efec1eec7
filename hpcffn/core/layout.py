"""Where every file of an experiment lives inside its workdir.

One place for paths so the renderer, the stages, `submit` and `status` agree. All paths
are relative to the workdir the spec names (plan.json records it).

    workdir/
      plan.json                     what was planned (see plan_model.py)
      units/plan.head.json          plan.json without the per-tile lists, for array tasks (units.py)
      units/<job>.units             one fixed-width line per array task of a job: its unit (units.py)
      units/<job>.fp                one 32-hex line per task of a job: what its unit means (plan/fingerprints.py)
      spec.resolved.yaml            the spec with every default filled in
      state.json                    what was submitted (submit.py)
      jobs/<stage>/<job>.sbatch     rendered batch scripts (hand-editable)
      logs/<stage>/%x_%A_%a.out     SLURM logs
      data/<volume>.h5              converted volumes: datasets `raw` (uint8), `stack` (uint64)
      data/tiles/<tile>.h5          optional (volumes[].tile_files): one file per tile, raw + stack
      partitions/<tile>.h5          stage 1: dataset `af` (uint8), attrs offset (z,y,x)
      coordinates/<group>.tfrecord.gz   stage 2: GZIP TFRecord of tf.train.Example
      train/<group>/                stage 3: checkpoints + TensorBoard events
      infer/<tile>.h5               stage 4: dataset `seg` (uint64), attrs offset (z,y,x), dataset `origins`
      infer/<pass>/<tile>.h5        with ffn.inference.consensus: each pass's own output (forward, reverse);
                                    infer/<tile>.h5 is then their consensus (step consensus)
      stitch/joins/<tile>.npz       stitch step joins: the tile's id range, owned ids, agreeing pairs
      stitch/<volume>.lut.npy       stitch step resolve: every tile id -> final id (+ .tiles.json: id bases)
      stitch/<volume>.ome.zarr/     the stitched volume: OME-Zarr raw + labels/seg pyramid (io/ome_zarr.py)
      stitch/<volume>.h5            single-task stitch (`hpcffn stage stitch`): dataset `seg` (uint64)
      evaluate/report.json          evaluation of infer against groundtruth
      report/index.html, *.png      `hpcffn report`: the experiment's page and its pictures
      markers/<stage>/<unit>.done   written (atomically) by a stage when a unit succeeds
      checks/<job>.json             `hpcffn check` probe reports (logs in logs/check/)
      locks/<stage>/<unit>.lock     held (flock) by the one run writing that unit; names it
"""

from __future__ import annotations

from pathlib import Path

PLAN_FILE = "plan.json"
RESOLVED_SPEC_FILE = "spec.resolved.yaml"
STATE_FILE = "state.json"

# Exit code a stage uses to say "I saved a checkpoint, requeue me" (EX_TEMPFAIL).
EXIT_REQUEUE = 75


class Layout:
    """Paths of one experiment's workdir."""

    def __init__(self, workdir: str | Path):
        self.root = Path(workdir)

    @property
    def plan(self) -> Path:
        return self.root / PLAN_FILE

    @property
    def resolved_spec(self) -> Path:
        return self.root / RESOLVED_SPEC_FILE

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE

    @property
    def units_dir(self) -> Path:
        return self.root / "units"

    @property
    def plan_head(self) -> Path:
        return self.units_dir / "plan.head.json"

    def unit_index(self, job: str) -> Path:
        return self.units_dir / f"{job}.units"

    def unit_fingerprints(self, job: str) -> Path:
        return self.units_dir / f"{job}.fp"

    def jobs_dir(self, stage: str) -> Path:
        return self.root / "jobs" / stage

    def logs_dir(self, stage: str) -> Path:
        return self.root / "logs" / stage

    def converted_volume(self, volume: str) -> Path:
        return self.root / "data" / f"{volume}.h5"

    def tile_file(self, tile: str) -> Path:
        return self.root / "data" / "tiles" / f"{tile}.h5"

    def partitions(self, tile: str) -> Path:
        return self.root / "partitions" / f"{tile}.h5"

    def coordinates(self, group: str) -> Path:
        return self.root / "coordinates" / f"{group}.tfrecord.gz"

    def train_dir(self, group: str) -> Path:
        return self.root / "train" / group

    def segmentation(self, tile: str) -> Path:
        return self.root / "infer" / f"{tile}.h5"

    def pass_segmentation(self, tile: str, name: str) -> Path:
        """One inference pass's output (forward, reverse) when consensus makes the tile's segmentation."""
        return self.root / "infer" / name / f"{tile}.h5"

    def stitched(self, volume: str) -> Path:
        return self.root / "stitch" / f"{volume}.ome.zarr"

    def stitched_hdf5(self, volume: str) -> Path:
        return self.root / "stitch" / f"{volume}.h5"

    def joins(self, tile: str) -> Path:
        return self.root / "stitch" / "joins" / f"{tile}.npz"

    def relabelling(self, volume: str) -> Path:
        return self.root / "stitch" / f"{volume}.lut.npy"

    def id_bases(self, volume: str) -> Path:
        return self.root / "stitch" / f"{volume}.tiles.json"

    @property
    def evaluation_report(self) -> Path:
        return self.root / "evaluate" / "report.json"

    def unit_lock(self, stage: str, unit: str) -> Path:
        return self.root / "locks" / stage / f"{unit}.lock"

    @property
    def plan_lock(self) -> Path:
        return self.root / "locks" / "plan.lock"
    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def marker(self, stage: str, unit: str) -> Path:
        return self.root / "markers" / stage / f"{unit}.done"


def infer_state_path(output: Path) -> Path:
    """Where infer saves its progress beside its output (`hpcffn status` reads it too)."""
    return output.with_name(output.name + ".state")
