"""`hpcffn view`: the stitched volume, its raw image and groundtruth in neuroglancer.

One port serves everything, so one `ssh -L` tunnel from a laptop to the login node is enough:
the neuroglancer Python server serves its own client and the groundtruth (an HDF5 dataset,
read chunk by chunk on request), and the same server serves the workdir's stitch/ folder as
static files under a random token, from which the client reads the OME-Zarr pyramid
(`zarr://` sources) itself. Nothing is copied or converted. The server binds 127.0.0.1
unless told otherwise: through the tunnel it is reachable by the user alone.
"""

from __future__ import annotations

import getpass
import secrets
import socket
import threading
from dataclasses import dataclass, field

from hpcffn.core.errors import HpcffnError
from hpcffn.core.plan_model import Plan

METADATA = (".zattrs", ".zarray", ".zgroup")


@dataclass
class Served:
    """What the client asked for: zarr chunk files per store path, and groundtruth chunk reads."""

    chunks: dict[str, int] = field(default_factory=dict)
    groundtruth_reads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def chunk(self, path: str) -> None:
        """Count a chunk file, by array: "<level>" (raw) or "labels/seg/<level>"."""
        parts = path.split("/")[1:]  # after <volume>.ome.zarr
        key = "/".join(parts[:3] if parts[:1] == ["labels"] else parts[:1])
        with self.lock:
            self.chunks[key] = self.chunks.get(key, 0) + 1


class _CountingArray:
    """A read-only array (h5py dataset) that counts the reads neuroglancer makes."""

    def __init__(self, data, served: Served):
        self._data, self._served = data, served
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, key):
        with self._served.lock:
            self._served.groundtruth_reads += 1
        return self._data[key]


@dataclass
class Session:
    url: str
    port: int
    ssh: str
    layers: list[str]
    served: Served
    viewer: object
    _close: list = field(default_factory=list)

    def close(self) -> None:
        for f in self._close:
            f()


def _volume(plan: Plan, name: str | None):
    done = [v for v in plan.volumes if (plan.layout.stitched(v.name) / ".zgroup").is_file()]
    if name is not None:
        volume = plan.volume(name)
        if volume not in done:
            raise HpcffnError(f"volume {volume.name} has no stitched volume ({plan.layout.stitched(volume.name)}) yet: "
                              "run the stitch jobs (`hpcffn submit --resume`, or `hpcffn status` to see where they are)")
        return volume
    if not done:
        raise HpcffnError(f"no volume of {plan.layout.plan} is stitched yet (no {plan.layout.stitched('<volume>')}): "
                          "run the stitch jobs first (`hpcffn submit --resume`)")
    return done[0]


def ssh_line(port: int) -> str:
    return f"ssh -N -L {port}:127.0.0.1:{port} {getpass.getuser()}@{socket.getfqdn()}"


def serve(plan: Plan, volume_name: str | None = None, bind: str = "127.0.0.1", port: int = 0) -> Session:
    """Start the server (in background threads) with raw, the stitched labels and groundtruth."""
    import neuroglancer
    import neuroglancer.server
    from neuroglancer.static_file_server import CorsStaticFileHandler

    from hpcffn.io.volumes import open_dataset

    volume = _volume(plan, volume_name)
    served = Served()

    class Handler(CorsStaticFileHandler):
        def on_finish(self):
            path = self.request.path
            if self.get_status() in (200, 206) and not path.endswith(METADATA):
                served.chunk(self.path_args[0])

    neuroglancer.set_server_bind_address(bind, port)
    viewer = neuroglancer.Viewer()
    viewer.get_viewer_url()  # starts the server
    server = neuroglancer.server.global_server
    token = secrets.token_urlsafe(16)
    stitch_dir = plan.layout.stitched(volume.name).parent
    server.app.add_handlers(r".*", [(rf"/stitch-files/{token}/(.*)", Handler, {"path": str(stitch_dir)})])
    base = f"{server.server_url}/stitch-files/{token}/{volume.name}.ome.zarr"
    close = [neuroglancer.server.stop]
    dims = neuroglancer.CoordinateSpace(names=["z", "y", "x"], units="", scales=[1, 1, 1])
    layers = ["raw", "stitched"]
    gt_data = None
    if volume.groundtruth:
        gt_cm = open_dataset(volume.groundtruth, "stack")
        gt_data = gt_cm.__enter__()
        close.insert(0, lambda: gt_cm.__exit__(None, None, None))
        layers.append("groundtruth")
    with viewer.txn() as s:
        # Shown x, y (, z) like Fiji; the data stay z,y,x (named axes line them up).
        s.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="", scales=[1, 1, 1])
        s.layers["raw"] = neuroglancer.ImageLayer(source=f"zarr://{base}/")
        s.layers["stitched"] = neuroglancer.SegmentationLayer(source=f"zarr://{base}/labels/seg/")
        if gt_data is not None:
            s.layers["groundtruth"] = neuroglancer.SegmentationLayer(
                source=neuroglancer.LocalVolume(_CountingArray(gt_data, served), dimensions=dims))
        s.position = [n / 2 for n in reversed(volume.shape)]
        s.cross_section_scale = max(volume.shape) / 400  # voxels per screen pixel: the volume fills a panel
        s.layout = "4panel"
    return Session(url=viewer.get_viewer_url(), port=server.port, ssh=ssh_line(server.port), layers=layers,
                   served=served, viewer=viewer, _close=close)


def check_bind(bind: str) -> str:
    try:
        socket.getaddrinfo(bind, None)
    except socket.gaierror:
        raise HpcffnError(f"--bind {bind!r} is not an address of this machine; use 127.0.0.1 (the default) "
                          "and an ssh tunnel") from None
    return bind

