"""README.md's ```python blocks run, in order, as one script (at small size).

Rules (for everyone editing the README):

- every block fenced as ```python is run, top to bottom, in ONE namespace (later blocks use
  the names of earlier ones), in a fresh process with 8 simulated CPU devices (as the rest
  of the suite: multi-device code paths such as sharding and replication are exercised)
  and a fresh temporary folder as working directory;
- a block whose first line is ``# not run`` is skipped (for snippets that need files or
  hardware the test machine does not have); say why on that line;
- sizes are shrunk by the plain-text substitutions in ``SMALL`` (applied where they occur),
  so keep the README's sizes written in those forms or add a substitution here;
- blocks needing a trained built-in model use the cached ones (``zoo.load_trained``): the
  test waits for ``$REPSIM_CACHE``/``~/.cache/repsim_jax/WARM`` when another process is
  training them (the file marks the cache as complete).
"""
import os
import re
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_RUN = "# not run"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
# (README text, small-size replacement): fewer images, steps and beam width
SMALL = [("[:200]", "[:40]"), ("[:512]", "[:64]"), ("steps=200", "steps=4"),
         ("L=3, B=10", "L=2, B=3"), ("permutations=19", "permutations=9"),
         ("images_per_class=6)", "images_per_class=2, smooth_steps=4, sharp_steps=4)"),
         ("x[:8]", "x[:4]"), ("reshape(200, -1)", "reshape(40, -1)"),
         ("slice(0, 200)", "slice(0, 40)"), ("n=1000,", "n=40,"), ("n=500,", "n=40,"),
         ("n_permutations=100,", "n_permutations=20,"),
         ("n_permutations=200, n_bootstrap=200", "n_permutations=20, n_bootstrap=20")]


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of the ```python blocks to run (``# not run`` ones left out)."""
    out = []
    for m in FENCE.finditer(text):
        code = m.group(1)
        if code.lstrip().startswith(NOT_RUN):
            continue
        out.append((text[:m.start()].count("\n") + 1, code))
    return out


def shrink(code: str) -> str:
    for big, small in SMALL:
        code = code.replace(big, small)
    return code


def test_block_extraction_and_marker():
    text = ("intro\n```python\nx = 1\n```\ntext\n```bash\nls\n```\n"
            "```python\n# not run: needs a GPU\nboom()\n```\n```python\ny = x + 1\n```\n")
    blocks = python_blocks(text)
    assert [c for _, c in blocks] == ["x = 1\n", "y = x + 1\n"]
    assert [n for n, _ in blocks] == [2, 13]
    assert shrink("data.images[:200], steps=200") == "data.images[:40], steps=4"
    assert len(python_blocks(README.read_text())) >= 6      # the README's own examples


def _wait_for_models(timeout_s: float = 1800):
    cache = Path(os.environ.get("REPSIM_CACHE", Path.home() / ".cache" / "repsim_jax"))
    if not (cache / "models").exists():
        return                  # nothing being trained: load_trained trains on first use
    t = time.time()
    while not (cache / "WARM").exists() and time.time() - t < timeout_s:
        time.sleep(10)


def run_blocks() -> None:
    """Runs the README's blocks in this process (the test starts it as a subprocess)."""
    import matplotlib
    matplotlib.use("Agg")
    import resource
    namespace = {"__name__": "__readme__"}
    for line, code in python_blocks(README.read_text()):
        cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        print(f"--- README.md block at line {line} (cpu so far {cpu:.1f} s)", flush=True)
        try:
            exec(compile(shrink(code), f"README.md:{line}", "exec"), namespace)  # noqa: S102
        except Exception as e:  # name the block that failed
            raise SystemExit(f"README.md python block at line {line} failed: "
                             f"{type(e).__name__}: {e}") from e


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path):
    # a fresh process with 8 simulated CPU devices, as the rest of the suite (a reader's
    # multi-GPU machine takes the same sharded paths); the working directory is a
    # temporary folder
    import subprocess
    import sys
    _wait_for_models()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               PYTHONPATH=os.pathsep.join([str(README.parent),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve())], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout[-2000:] + proc.stderr[-4000:])
    assert proc.stdout.count("--- README.md block") == len(python_blocks(README.read_text()))


if __name__ == "__main__":
    run_blocks()
