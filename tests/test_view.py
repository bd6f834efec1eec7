"""`hpcffn view`: neuroglancer shows the stitched volume, raw and groundtruth, for real.

A headless Chromium loads the viewer page; the page must render (a screenshot comes back
through neuroglancer's own channel) after fetching chunks of all three layers from our server.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest
from test_model_stitch import planned  # noqa: F401 (fixture)
from test_model_stitch_volume import stitched  # noqa: F401 (fixture)

neuroglancer = pytest.importorskip("neuroglancer")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _screenshot(viewer, timeout: float):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("reply", viewer.screenshot(size=[1000, 800])), daemon=True)
    t.start()
    t.join(timeout)
    return out.get("reply")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (Debian package chromium)")
def test_headless_chromium_shows_the_three_layers(stitched, tmp_path):  # noqa: F811
    from hpcffn.io.viewer import serve

    session = serve(stitched, bind="127.0.0.1")
    browser = None
    try:
        assert session.url.startswith(f"http://127.0.0.1:{session.port}/")
        assert session.ssh.startswith(f"ssh -N -L {session.port}:127.0.0.1:{session.port} ")
        browser = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--use-angle=swiftshader",
                                    "--enable-unsafe-swiftshader", "--window-size=1000,800", "--remote-debugging-port=0",
                                    f"--user-data-dir={tmp_path / 'chromium'}", session.url],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reply = _screenshot(session.viewer, timeout=180)
        assert reply is not None, "the page never rendered"
        png = reply.screenshot.image
        assert png.startswith(b"\x89PNG") and len(png) > 5000
        (tmp_path / "view.png").write_bytes(png)
        assert [layer.name for layer in session.viewer.state.layers] == ["raw", "stitched", "groundtruth"]
        chunks = session.served.chunks
        assert any(k.isdigit() for k in chunks), chunks  # raw chunks from the OME-Zarr store
        assert any(k.startswith("labels/seg/") for k in chunks), chunks  # stitched labels
        assert session.served.groundtruth_reads > 0  # groundtruth through the Python server
    finally:
        if browser is not None:
            browser.terminate()
            browser.wait(30)
        session.close()


def test_cli_prints_the_url_and_the_tunnel_and_serves(stitched):  # noqa: F811
    # started with SIGINT ignored, as a shell starts a background job: Ctrl-C must stop it anyway
    # (sh's empty trap ignores it, and an ignored signal stays ignored across exec)
    ignoring = ["sh", "-c", 'trap "" INT; exec "$0" "$@"']
    proc = subprocess.Popen([*ignoring, sys.executable, "-m", "hpcffn.cli", "view", str(stitched.layout.root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
        url = lines[0].split("neuroglancer: ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and lines[1].strip() == "layers: raw, stitched, groundtruth"
        port = url.split(":")[2].split("/")[0]
        assert lines[3].strip().startswith(f"ssh -N -L {port}:127.0.0.1:{port} ")
        with urllib.request.urlopen(url, timeout=30) as page:
            assert page.status == 200 and b"neuroglancer" in page.read().lower()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped" in out, err


def test_view_before_stitching_is_one_clear_error(planned):  # noqa: F811
    plan, _ = planned
    proc = subprocess.run([sys.executable, "-m", "hpcffn.cli", "view", str(plan.layout.root)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 2 and "is stitched yet" in proc.stderr and "Traceback" not in proc.stderr
