"""What ``epcache verify`` found: one ``BadBlock`` per untrustworthy write-block, and the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from epcache._text import human_bytes

__all__ = ["BadBlock", "BlockProblem", "VerifyReport"]

BlockProblem = Literal["missing", "checksum", "unreadable", "bad-record", "non-finite"]


@dataclass(frozen=True, slots=True)
class BadBlock:
    """One write-block of one layer that cannot be trusted (cache_layout.md §3.2 blocks)."""

    split: str
    layer: int
    block: int
    rows: tuple[int, int]  # stored rows [start, stop)
    problem: BlockProblem  # missing: record -1; checksum: bytes differ from the record; unreadable:
    #                        the chunk cannot be decoded; bad-record: the record itself is damaged;
    #                        non-finite: inf/nan values (deep scan only)
    detail: str  # what was found, in words
    where: str  # the chunk file (zarr) or dataset and chunk (HDF5) that holds the block
    record: int | None = None  # the recorded crc32c (None: missing or unreadable record)
    stored_crc: int | None = None  # crc32c of the bytes as stored, where they could be read

    @property
    def key(self) -> tuple[str, int, int]:
        return self.split, self.layer, self.block

    def format_text(self) -> str:
        return (
            f"split={self.split} layer={self.layer} block={self.block} rows={self.rows[0]}-{self.rows[1]}  "
            f"{self.problem}: {self.detail}  [{self.where}]"
        )


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify_store`` found. ``ok`` is True only when nothing at all is wrong."""

    location: str
    format: str  # "zarr" or "h5"
    deep: bool  # values were also scanned for inf/nan
    splits: tuple[str, ...]
    layers: tuple[int, ...]
    blocks_total: int  # write-blocks x layers over all splits
    blocks_checked: int  # written blocks whose crc32c was recomputed from the stored bytes
    bytes_checked: int
    seconds: float
    problems: tuple[str, ...] = ()  # store- and split-level: metadata, provenance, ids, labels, order
    bad_blocks: tuple[BadBlock, ...] = ()
    readable: bool = True  # False: the store could not be opened at all (see ``problems``)
    writer: str | None = None  # the writer lock on the store, if any (store/ops/lock.py), described
    writer_stale: bool | None = None  # True: its process is gone (crashed); None: cannot be told
    leftovers: tuple[str, ...] = ()  # files a killed writer or repair left (.partial, .epcache-repair-*)
    version: str | None = None  # format version of the store's document ("1.0", "1.1")

    @property
    def ok(self) -> bool:
        return self.readable and not self.problems and not self.bad_blocks

    @property
    def missing(self) -> tuple[BadBlock, ...]:
        return tuple(b for b in self.bad_blocks if b.problem == "missing")

    @property
    def corrupt(self) -> tuple[BadBlock, ...]:
        return tuple(b for b in self.bad_blocks if b.problem != "missing")

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["ok"] = self.ok
        return doc

    def format_text(self) -> str:
        """Summary line, then one line per problem and per bad block."""
        head = (
            f"verify {self.location} [{self.format}{', format ' + self.version if self.version else ''}]: "
            f"{len(self.splits)} split(s), {len(self.layers)} layer(s), "
            f"{self.blocks_total} blocks; {self.blocks_checked} checksummed "
            f"({human_bytes(self.bytes_checked)}{', values scanned' if self.deep else ''}) in {self.seconds:.1f} s"
        )
        if not self.readable:
            head = f"verify {self.location} [{self.format}]: the store cannot be opened"
        lines = [head]
        if self.writer is not None:
            state = {
                True: "its process is gone (killed or crashed): re-run the extraction with --break-lock to finish",
                False: "an extraction is writing this store now: missing blocks may still come",
                None: "held from another host: missing blocks may still come",
            }[self.writer_stale]
            lines.append(f"writer: {self.writer}; {state}")
        lines.extend(f"leftover: {x}" for x in self.leftovers)
        if self.ok:
            lines.append("clean: metadata consistent, every block present and equal to its recorded crc32c")
            return "\n".join(lines)
        lines.append(
            f"BAD: {len(self.problems)} metadata/split problem(s), {len(self.corrupt)} corrupt block(s), "
            f"{len(self.missing)} missing block(s)"
        )
        lines.extend(f"  problem  {p}" for p in self.problems)
        lines.extend(f"  block    {b.format_text()}" for b in self.bad_blocks)
        if self.readable and not self.problems:
            lines.append(
                f"fix: `epcache verify {self.location} --repair` re-extracts exactly these blocks from the images "
                "(add --data ROOT if the images moved since extraction)"
            )
        elif any("already open for write" in p for p in self.problems):
            lines.append(
                "fix: a process killed while writing left the HDF5 file marked open for write; `h5clear -s FILE` "
                "(hdf5 tools) clears the mark, then re-run the extraction with --break-lock to finish it; or "
                "re-extract with `epcache extract --overwrite`"
            )
        elif any(p.startswith("array metadata:") for p in self.problems):
            lines.append(
                "fix: an array's own metadata (zarr.json / HDF5 dataset) no longer matches the store's: restore it as "
                "each problem says (the bytes are checked again then), or re-extract with `epcache extract "
                "--overwrite`; `--repair` refuses, as it would rewrite intact blocks through the wrong metadata"
            )
        elif all(_resumable(p) for p in self.problems):
            lines.append("fix: re-run the same `epcache extract` command: it resumes, writing only what is missing "
                         "(block outputs, taps and masks alike)")
        elif all(p.startswith("tap ") or _resumable(p) for p in self.problems):
            lines.append("fix: delete each damaged tap's directory (named in its problem) and re-run the same "
                         "`epcache extract`: it rebuilds the tap and keeps everything else")
        elif any(" masks" in p and not _resumable(p) for p in self.problems):
            lines.append("fix: masks changed after extraction are not repaired (`--repair` re-extracts token blocks); "
                         "re-extract the store with `epcache extract --overwrite`")
        else:
            lines.append("fix: the metadata itself is damaged; re-extract the store with `epcache extract --overwrite`")
        return "\n".join(lines)


def _resumable(problem: str) -> bool:
    """A problem that re-running the extraction fixes by itself: something not written yet, nothing wrong written."""
    return (problem.startswith("the store holds no split") or ": missing (record is -1" in problem
            or (problem.startswith("tap ") and ("  missing: " in problem or "holds no split" in problem)))
