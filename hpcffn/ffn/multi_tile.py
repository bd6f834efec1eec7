"""Several tiles segmented side by side, their FOVs evaluated together in one model call.

FFN's manual: "processing multiple subvolumes on a single worker might be required to achieve
full device utilization". Tiles never share voxels, so their fills never interact: each tile
keeps its own canvas, fill loop (FFN's, or `parallel_fills`), seeds, ids, origins and resumable
state, exactly as when it runs alone. Only the model call is shared.

Each tile's loop runs in a thread of its own and calls a `predict` that hands its batch to the
main thread and waits; the main thread runs the model once every tile still working has handed
in its batch (or ended), on all the batches at once, and hands each its rows back. So a model
call holds one batch of every working tile, and TensorFlow is only ever called from the main
thread (where signal handlers run too). A tile's loop is unchanged: every row of a batched call
is what that tile's own call would have returned (the network treats rows independently).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np


@dataclass
class BatchStats:
    """What the shared model calls did: FOVs per call is the batch occupancy."""

    calls: int = 0
    fovs: int = 0
    full_calls: int = 0  # calls made while every tile of the task still worked
    full_fovs: int = 0
    tiles: int = 0
    sizes: list = field(default_factory=list)  # FOVs of each call

    @property
    def fovs_per_call(self) -> float:
        return self.fovs / self.calls if self.calls else 0.0

    @property
    def full_fovs_per_call(self) -> float:
        """FOVs per call while all tiles had work (the occupancy a task of K tiles reaches)."""
        return self.full_fovs / self.full_calls if self.full_calls else 0.0


class _Request:
    __slots__ = ("batch", "error", "out")

    def __init__(self, batch: np.ndarray):
        self.batch, self.out, self.error = batch, None, None


class SharedModel:
    """The batches of several tile loops (threads) gathered into one model call (main thread)."""

    def __init__(self, predict, tiles: int):
        self.predict = predict
        self.working = tiles
        self.stats = BatchStats(tiles=tiles)
        self._pending: list[_Request] = []
        self._cond = threading.Condition()

    def member_predict(self, batch: np.ndarray) -> np.ndarray:
        """A tile loop's model call: waits until the shared call has run, returns its rows."""
        req = _Request(batch)
        with self._cond:
            self._pending.append(req)
            self._cond.notify_all()
            while req.out is None and req.error is None:
                self._cond.wait()
        if req.error is not None:
            raise RuntimeError(f"the shared model call failed: {req.error}") from req.error
        return req.out

    def leave(self) -> None:
        """A tile loop ended (finished, stopped or failed): calls no longer wait for it."""
        with self._cond:
            self.working -= 1
            self._cond.notify_all()

    def serve(self) -> None:
        """Run model calls until every tile loop has left (main thread)."""
        while True:
            with self._cond:
                while self.working > 0 and len(self._pending) < self.working:
                    self._cond.wait(timeout=0.5)  # wakes now and then so signal handlers run
                if self.working == 0 and not self._pending:
                    return
                if len(self._pending) < self.working:
                    continue
                requests, self._pending = self._pending, []
                full = self.working == self.stats.tiles
            self._call(requests, full)

    def _call(self, requests: list[_Request], full: bool) -> None:
        sizes = [len(r.batch) for r in requests]
        try:
            out = self.predict(requests[0].batch if len(requests) == 1 else np.concatenate([r.batch for r in requests]))
        except Exception as exc:  # noqa: BLE001 (handed to every waiting loop, which raises it in its thread)
            with self._cond:
                for r in requests:
                    r.error = exc
                self._cond.notify_all()
            return
        n = sum(sizes)
        s = self.stats
        s.calls += 1
        s.fovs += n
        s.sizes.append(n)
        if full:
            s.full_calls += 1
            s.full_fovs += n
        with self._cond:
            at = 0
            for r, k in zip(requests, sizes):
                r.out = out[at:at + k]
                at += k
            self._cond.notify_all()


def run_side_by_side(works: list, predict, keep_errors: bool = False) -> tuple[list, BatchStats]:
    """Run `works` (each a function of a predict function, one tile's whole loop) side by side,
    their model calls gathered into one; returns their results in order, and the call figures.

    One work alone runs directly in this thread (tiles_per_task 1: no thread, no gathering).
    An exception in a work is raised here once every other work has ended (the others run on:
    their tiles are not at fault), or with `keep_errors` returned in that work's place.
    """
    if len(works) == 1:
        counted = _Counting(predict)
        result = works[0](counted)
        return [result], counted.stats
    shared = SharedModel(predict, len(works))
    results: list = [None] * len(works)
    errors: list = [None] * len(works)

    def run(i: int) -> None:
        try:
            results[i] = works[i](shared.member_predict)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the main thread below)
            errors[i] = exc
        finally:
            shared.leave()

    threads = [threading.Thread(target=run, args=(i,), name=f"tile-{i}", daemon=True) for i in range(len(works))]
    for t in threads:
        t.start()
    shared.serve()
    for t in threads:
        t.join()
    for i, exc in enumerate(errors):
        if exc is not None:
            if not keep_errors:
                raise exc
            results[i] = exc
    return results, shared.stats


class _Counting:
    """A predict function that counts its calls as SharedModel does (one tile per task)."""

    def __init__(self, predict):
        self.predict = predict
        self.stats = BatchStats(tiles=1)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        s = self.stats
        s.calls += 1
        s.full_calls += 1
        s.fovs += n
        s.full_fovs += n
        s.sizes.append(n)
        return self.predict(batch)
