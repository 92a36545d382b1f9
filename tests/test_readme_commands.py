"""The README's and docs/walkthrough.md's commands run as written.

Every fenced ``bash`` block preceded by a ``<!-- ci: run -->`` line is run with ``bash -euo
pipefail``, in order (README.md first, then docs/walkthrough.md; a block whose text repeats an
earlier one runs once), from a copy of the repository root: every top-level entry is a symlink to
the real one, except

* ``out/demo``, the README's curated main job (``scripts/demo.sh``), which is the session's
  ``curated_shards`` (real curation of the fixture clips);
* ``examples/``, whose trainer YAMLs are the shipped ones with ``run.max_steps`` lowered to
  :data:`STEPS` (the same commands, a few steps instead of 40, so CI stays fast);
* ``../shared``, a symlink to the real fixtures, as the README's relative paths expect.

A block passes when it exits 0 and every path it names after ``--out`` / ``--output`` exists
(a file, or a folder with something in it).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "README.md", REPO / "docs" / "walkthrough.md")
MARK = "<!-- ci: run -->"
#: ``run.max_steps`` of the copied trainer configs: sft 4 steps; distill 5 = one generator update.
STEPS = {"sft_tiny_cpu.yaml": 4, "sft_tiny_cpu_latents.yaml": 4, "distill_tiny_cpu.yaml": 5}
BLOCK_TIMEOUT_S = 900


def marked_blocks(text: str) -> list[str]:
    """The ``bash`` fenced blocks whose previous non-blank line is :data:`MARK`."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == MARK:
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            assert j < len(lines) and lines[j].strip() == "```bash", f"{MARK} not followed by a ```bash block"
            end = lines.index("```", j + 1)
            blocks.append("\n".join(lines[j + 1:end]) + "\n")
            i = end
        i += 1
    return blocks


def all_blocks() -> list[tuple[str, str]]:
    """(id, block) for every marked block, README first, repeats dropped."""
    seen, out = set(), []
    for doc in DOCS:
        for n, block in enumerate(marked_blocks(doc.read_text()), 1):
            if block not in seen:
                seen.add(block)
                out.append((f"{doc.name}-{n}", block))
    return out


def named_outputs(block: str) -> list[str]:
    """Paths after ``--out`` / ``--output`` / ``-o`` in a block (line continuations joined)."""
    words = shlex.split(block.replace("\\\n", " "), comments=True)
    return [words[k + 1] for k, w in enumerate(words[:-1]) if w in ("--out", "--output", "-o")]


BLOCKS = all_blocks()


def test_the_docs_mark_the_journeys():
    """The walk-through's journeys are all marked: stage 1, the latent cache, stage 2, eval, serve."""
    text = "\n".join(b for _, b in BLOCKS)
    for command in ("train sft", "train export", "infer", "train cache-latents", "train distill",
                    "eval score", "eval rollout", "vividhead serve", "scripts/ws_client.py"):
        assert command in text, command


@pytest.fixture(scope="module")
def mirror(curated_shards, tmp_path_factory) -> Path:
    """A copy of the repository root for the blocks to run in (see the module docstring)."""
    import yaml

    top = tmp_path_factory.mktemp("readme")
    (top / "shared").symlink_to((REPO / ".." / "shared").resolve())
    root = top / "repo"
    root.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in ("out", "examples", ".git"):
            (root / entry.name).symlink_to(entry)
    (root / "examples").mkdir()
    for f in (REPO / "examples").iterdir():
        if f.name in STEPS:
            raw = yaml.safe_load(f.read_text())
            raw["run"]["max_steps"] = STEPS[f.name]
            (root / "examples" / f.name).write_text(yaml.safe_dump(raw, sort_keys=False))
        else:
            (root / "examples" / f.name).symlink_to(f)
    (root / "out").mkdir()
    (root / "out" / "demo").symlink_to(curated_shards)
    return root


@pytest.mark.parametrize("block", [b for _, b in BLOCKS], ids=[i for i, _ in BLOCKS])
def test_block_runs_as_written(block, mirror):
    env = {**os.environ, "VIVIDHEAD_OFFLINE": "1",
           "VIVIDHEAD_WEIGHTS_DIR": str((REPO / ".." / "shared" / "fixtures" / "weights").resolve())}
    env.pop("VIVIDHEAD_DEBUG", None)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=mirror, env=env, capture_output=True,
                          text=True, timeout=BLOCK_TIMEOUT_S)
    tail = re.sub(r"\r[^\n]*\r", "\r", proc.stdout[-3000:] + "\n" + proc.stderr[-6000:])
    assert proc.returncode == 0, f"exit {proc.returncode}\n{block}\n{tail}"
    for path in named_outputs(block):
        p = mirror / path
        assert p.is_file() and p.stat().st_size > 0 or p.is_dir() and any(p.iterdir()), f"{path} missing\n{tail}"
