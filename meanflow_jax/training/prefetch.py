"""Batches made ahead of the step that uses them, on a background thread.

The loop asks for batch `step` only when the previous step has been dispatched, and the
accelerator runs ahead of the host; a batch built in the main thread between two steps
(an image decoded, a shard read, the global array assembled) stalls it. `Prefetch`
builds batches `depth` steps ahead: each batch is still a function of its step alone, so
the stream, and exact resume, are the same with any depth.
"""
import queue
import threading
import time


POLL_S = 0.002  # how often a consumer waiting for a batch looks whether the device is idle


class Prefetch:
  """Iterates `(step, load(step), seconds stalled)` for `step` in `range(start, stop)`.

  `load(step)` runs on one daemon thread, at most `depth` batches ahead of the consumer
  (`depth` 0: in the caller's thread, when asked). An exception in `load` is raised in
  the consumer at the step that needed that batch. `close()` stops the thread; it is also
  called at the end of the iteration.

  Seconds stalled: the time the consumer waited for the batch while `busy()` was False
  (the device had finished the work dispatched to it: with asynchronous dispatch the
  host may wait while the device still computes, which costs nothing). Polled every
  `POLL_S` with a thread; with `depth` 0, the whole load if the device was idle when it
  ended (an upper bound).
  """

  def __init__(self, load, start, stop, depth, busy=lambda: False):
    if depth < 0:
      raise ValueError(f"depth must be >= 0; got {depth}.")
    self._load, self._next, self._stop, self._depth = load, start, stop, depth
    self.busy = busy
    self._done = threading.Event()
    self._queue = queue.Queue(maxsize=max(depth, 1))
    self._thread = None
    if depth and start < stop:
      self._thread = threading.Thread(target=self._fill, name="meanflow-prefetch", daemon=True)
      self._thread.start()

  def _fill(self):
    for step in range(self._next, self._stop):
      try:
        item = (step, self._load(step), None)
      except BaseException as e:  # handed to the consumer, raised at its step
        item = (step, None, e)
      while not self._done.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if self._done.is_set() or item[2] is not None:
        return

  def __iter__(self):
    return self

  def __next__(self):
    if self._next >= self._stop:
      self.close()
      raise StopIteration
    if self._thread is None:
      start = time.perf_counter()
      step, batch, error = self._next, self._load(self._next), None
      waited = 0.0 if self.busy() else time.perf_counter() - start
    else:
      waited, last = 0.0, time.perf_counter()
      while True:
        try:
          step, batch, error = self._queue.get(timeout=POLL_S)
          break
        except queue.Empty:
          now = time.perf_counter()
          if not self.busy():
            waited += now - last
          last = now
    if error is not None:
      self.close()
      raise error
    self._next = step + 1
    return step, batch, waited

  def close(self):
    """Stops the thread (it may be inside `load`: it exits after that batch)."""
    self._done.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
