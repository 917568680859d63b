"""Run the prunekit CLI and die at one chosen point, as a kill -9 or a lost machine would (os._exit:
no cleanup, no exception handlers, no flushing). Used by tests/test_long_runs.py.

    python crash_driver.py POINT STEP prunekit-args...

POINT (STEP is the checkpoint's step where one is meant, else ignored):
    work-dir      the run's work dir made and its settings.json written, not yet renamed into place
    ckpt-tensors  checkpoint STEP's tensors written in its temp dir, its state.json not yet
    ckpt-rename   checkpoint STEP complete in its temp dir, not yet renamed into place
    publish       the old output renamed aside, the new one not yet renamed into its place
    ckpt-enospc   not a crash: writing checkpoint STEP's tensors fails with "No space left on device"
    log-enospc    not a crash: the run log's second flush (at the second checkpoint) fails the same way

The process exits with status 77 when it died at the point (and normally when it never got there).
"""
import os
import sys
from pathlib import Path

CRASHED = 77


def main() -> None:
    point, step, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    ckpt_tmp = f".step-{step:07d}.tmp"
    real_replace = os.replace

    def replace(src, dst, *a, **kw):
        name = Path(src).name
        if (point == "work-dir" and name.endswith(".partial.new")) or (point == "ckpt-rename" and name == ckpt_tmp):
            os._exit(CRASHED)
        real_replace(src, dst, *a, **kw)
        if point == "publish" and Path(dst).name.startswith(".") and Path(dst).name.endswith(".old"):
            os._exit(CRASHED)

    os.replace = replace
    if point == "ckpt-enospc":
        import errno

        import safetensors.torch

        real_save = safetensors.torch.save_file

        def save_file(tensors, filename, *a, **kw):
            if Path(filename).parent.name == ckpt_tmp:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
            real_save(tensors, filename, *a, **kw)

        safetensors.torch.save_file = save_file
    if point == "log-enospc":
        import builtins
        import errno

        real_open = builtins.open

        class FlushFails:
            def __init__(self, f):
                self._f, self._flushes = f, 0

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self._f.__exit__(*exc)

            def write(self, text):
                return self._f.write(text)

            def flush(self):
                self._flushes += 1
                if self._flushes == 2:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._f.name)
                return self._f.flush()

        def open_(file, *a, **kw):
            f = real_open(file, *a, **kw)
            return FlushFails(f) if str(file).endswith("_log.jsonl") else f

        builtins.open = open_
    if point == "ckpt-tensors":
        import safetensors.torch

        real_save = safetensors.torch.save_file

        def save_file(tensors, filename, *a, **kw):
            real_save(tensors, filename, *a, **kw)
            if Path(filename).parent.name == ckpt_tmp:
                os._exit(CRASHED)

        safetensors.torch.save_file = save_file
    from prunekit.cli import cli

    cli(args, prog_name="prunekit")


if __name__ == "__main__":
    main()
