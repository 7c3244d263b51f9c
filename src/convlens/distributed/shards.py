"""Per-image results as Parquet shards, written as each shard finishes; what ``--resume`` reads back.

A job over ``paths`` is cut into shards of ``shard_size`` consecutive images. While it runs, finished shards
live in ``OUT.partial/`` (``shard-00012.parquet``, each written under a temporary name and renamed, so a file
that exists is complete) beside ``job.json``, which records what the job computes. When the job has finished,
the folder moves into the output as ``OUT/shards/``. ``--resume`` skips every shard already there, provided
``job.json`` describes the same job (same images, model, method and options).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convlens.errors import ConvlensError

JOB_FILE = "job.json"
SHARD_PATTERN = "shard-{:05d}.parquet"


@dataclass(frozen=True)
class ShardPlan:
    """Shard ``s`` holds the images ``paths[s * shard_size:(s + 1) * shard_size]``."""

    count: int  # images
    shard_size: int

    @property
    def shards(self) -> int:
        return -(-self.count // self.shard_size)

    def shard_of(self, index: int) -> int:
        return index // self.shard_size

    def images_in(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.count))


def fingerprint(description: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]


def partial_folder(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


class ShardStore:
    """The shard folder of one job: which shards are done, writing one, reading them all back."""

    def __init__(self, out: str | Path, job: dict[str, Any], plan: ShardPlan, resume: bool) -> None:
        self.out = Path(out)
        self.folder = partial_folder(self.out)
        self.plan = plan
        self.job = {**job, "images": plan.count, "shard_size": plan.shard_size}
        self.key = fingerprint(self.job)
        self._open(resume)

    def _open(self, resume: bool) -> None:
        finished = self.out / "shards"
        if resume and not self.folder.exists() and self._same_job(finished):
            finished.rename(self.folder)  # a finished job resumed: its shards come back to work on
        if self.folder.exists():
            if not (self.folder / JOB_FILE).is_file():
                raise ConvlensError(f"{self.folder} exists and is not a convlens shard folder; move it away")
            if resume and not self._same_job(self.folder):
                raise ConvlensError(f"{self.folder} holds the shards of a different job (other images, model or "
                                    "options); rerun without --resume to start again")
            if not resume:
                shutil.rmtree(self.folder)  # our own earlier, unfinished run: start again
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / JOB_FILE).write_text(json.dumps({"key": self.key, **self.job}, indent=2, default=str))

    def _same_job(self, folder: Path) -> bool:
        try:
            return json.loads((folder / JOB_FILE).read_text()).get("key") == self.key
        except (OSError, json.JSONDecodeError):
            return False

    def path(self, shard: int) -> Path:
        return self.folder / SHARD_PATTERN.format(shard)

    def done(self) -> set[int]:
        return {shard for shard in range(self.plan.shards) if self.path(shard).is_file()}

    def write(self, shard: int, table) -> Path:
        """Write one shard's pyarrow table atomically (temporary name, then rename)."""
        import pyarrow.parquet as pq

        target = self.path(shard)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        tmp.replace(target)
        return target

    def read(self, shard: int):
        import pyarrow.parquet as pq

        return pq.read_table(self.path(shard))

    def move_into(self, out: Path) -> Path:
        """After the result is saved in ``out``: the shards become ``out/shards``."""
        target = out / "shards"
        if target.exists():
            shutil.rmtree(target)
        self.folder.rename(target)
        return target


def read_shards(folder: str | Path):
    """Every shard of a finished (``OUT/shards``) or unfinished (``OUT.partial``) job as one pyarrow table,
    rows in image order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    if (folder / "shards").is_dir():
        folder = folder / "shards"
    files = sorted(folder.glob("shard-*.parquet"))
    if not files:
        raise ConvlensError(f"no shards in {folder}")
    # a shard whose images lacked an optional column (no object boxes among them) has nulls there
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")


def readable_rows(folder: str | Path):
    """The rows of ``read_shards(folder)`` whose image could be read (empty ``error``), in image order."""
    import pyarrow.compute as pc

    table = read_shards(folder)
    return table.filter(pc.equal(table.column("error"), ""))
