"""Keep TensorFlow's C++ start-up chatter out of stage logs, unless HPCFFN_TF_LOGS=1.

TensorFlow prints CUDA probing, CPU-feature and absl notices from C++ straight to file
descriptor 2, before and after Python sees anything: on a CPU node the log then opens with
"failed call to cuInit", twice. TF_CPP_MIN_LOG_LEVEL=3 silences what comes after absl starts;
the lines printed while `import tensorflow` runs are caught here and dropped if they are info
or warning lines (anything else, such as an error or a crash message, is passed on).
"""

from __future__ import annotations

import importlib.abc
import os
import re
import sys
import tempfile

KNOB = "HPCFFN_TF_LOGS"
# glog/absl line "I0000 00:00:1795976175.418348   13759 cudart_stub.cc:31] ..." (info/warning),
# absl's pre-initialisation notice, and the CPU-feature note's second line.
_NOISE = re.compile(r"^(?:[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "
                    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
                    r"|To enable the following instructions: .* rebuild TensorFlow)")


def wanted(line: str) -> bool:
    """False for a line of TensorFlow's start-up chatter."""
    return not _NOISE.match(line)


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader with fd 2 caught in a file, then passes on the lines that matter."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 2)
            try:
                self.loader.exec_module(module)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                caught.seek(0)
                kept = [line for line in caught.read().decode(errors="replace").splitlines(keepends=True)
                        if wanted(line)]
                if kept:
                    sys.stderr.write("".join(kept))
                    sys.stderr.flush()


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, names: tuple[str, ...]):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name not in self.names:
            return None
        sys.meta_path.remove(self)  # find the real spec, once
        try:
            from importlib.util import find_spec

            spec = find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow(names: tuple[str, ...] = ("tensorflow",)) -> bool:
    """Hide TensorFlow's C++ info/warning logs in this process; False when HPCFFN_TF_LOGS=1 asks
    for them (or the package is already imported)."""
    if os.environ.get(KNOB, "0").strip().lower() in ("1", "yes", "true", "on"):
        return False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if any(n in sys.modules for n in names) or any(isinstance(f, _Finder) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, _Finder(tuple(names)))
    return True
