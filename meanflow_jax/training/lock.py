"""One writer per workdir: a lock file that names its holder.

Each process of a run takes `workdir/lock.<process_index>`: the processes of one
multi-process run hold different files, and a second run on the same workdir
meets a held one (its process 0 meets `lock.0`). The lock is `fcntl.flock` on the
open file, so the kernel releases it when the process ends, however it ends
(kill -9 included); the file's JSON names the holder (host, pid, start time,
command) for the messages. A file left by a process that died is taken over.
Needs a file system whose `flock` reaches every host that mounts it (local disks;
NFSv4 and Lustre do).
"""
import datetime
import fcntl
import json
import os
import socket
import sys

from meanflow_jax.errors import WorkdirLockedError


def lock_path(workdir, process_index=0):
  """The lock file of process `process_index` of the run in `workdir`."""
  return os.path.join(os.fspath(workdir), f"lock.{process_index}")


def _holder():
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "command": " ".join([os.path.basename(sys.executable), *sys.argv])}


def _read(fd):
  """The holder recorded in the open lock file `fd`; {} if there is none (yet)."""
  try:
    text = os.pread(fd, 1 << 16, 0).decode()
    holder = json.loads(text) if text.strip() else {}
  except (OSError, UnicodeDecodeError, json.JSONDecodeError):
    return {}
  return holder if isinstance(holder, dict) else {}


def _describe(holder):
  if not holder.get("pid"):
    return "a process that has not written its name yet"
  return (f"pid {holder['pid']} on {holder.get('host', '?')}, started "
          f"{holder.get('started', '?')} ({holder.get('command', '?')})")


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process
    return True
  return True


class WorkdirLock:
  """A held lock; `release()` gives it back (also done by the kernel at exit)."""

  def __init__(self, path, fd, previous):
    self.path = path
    self._fd = fd
    # The holder named in the file when it was taken: a run that ended without
    # releasing it (killed), or {} for a free workdir.
    self.previous = previous

  def release(self):
    if self._fd is None:
      return
    # Removed while still locked: a process that opened the old file and is now
    # waiting sees, once it gets the lock, that the path no longer leads to it.
    try:
      os.unlink(self.path)
    except FileNotFoundError:
      pass
    os.close(self._fd)
    self._fd = None


def acquire(workdir, process_index=0):
  """Takes the lock of `workdir` (which must exist) for this process.

  Returns:
    a `WorkdirLock`; its `previous` names the holder of a lock that was taken over
    (a process that died without releasing it) or is {}.
  Raises:
    WorkdirLockedError, in one line naming the holder, while another process holds it.
  """
  path = lock_path(workdir, process_index)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read(fd)
      os.close(fd)
      pid = holder.get("pid")
      stop = f"wait for it to end, or stop it (kill {pid})" if pid else "wait for it to end"
      raise WorkdirLockedError(
          f"{workdir} is in use by another run: {_describe(holder)}, which holds {path}. "
          f"Two runs writing one workdir overwrite each other's checkpoints; {stop} and rerun "
          "to resume, or train in another --workdir.") from None
    try:
      same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)  # locked a file its holder removed on release: take the new one
  lock = WorkdirLock(path, fd, _read(fd))
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_holder()).encode(), 0)
  except OSError:  # a full disk: give the lock back before saying so
    lock.release()
    raise
  return lock


def takeover_message(lock):
  """One line about the lock file a dead run left, or None if the workdir was free."""
  old = lock.previous
  if not old.get("pid"):
    return None
  here = old.get("host") == socket.gethostname()
  state = ("which is no longer running" if here and not _alive(old["pid"])
           else "which no longer holds it")
  return (f"warning: {lock.path} was left by {_describe(old)}, {state} (killed?); "
          "taking it over.")
