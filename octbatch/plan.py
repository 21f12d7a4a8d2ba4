"""Plan: what a run has left to do. Reads, never writes.

`keyed_entries` is the one discover -> expand -> limit -> key loop (runs, their progress count and
merges all walk the archive through it). `plan()` gathers the keys already committed (the previous
table and the part files) and returns a Plan whose `pending()` yields the entries still to classify.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .archive import FileEntry, discover
from .frames import DEFAULT_MAX_VOLUME_PIXELS, discovery_filters, entry_row_key, expand
from .results import row_keys
from .shards import in_slice

__all__ = ["Selection", "Plan", "plan", "keyed_entries", "committed_keys"]

Pseudonymizer = Callable[[str], object]


def no_pseudonyms(patient_id: str) -> None:
    """For walks that only need keys (patient IDs do not enter a row key)."""
    return None


@dataclass(frozen=True)
class Selection:
    """Which entries of an archive a run looks at (stored in run.json; a merge walks the same ones)."""

    archive: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    limit: int | None = None
    max_pixels: int = 64_000_000
    max_volume_pixels: int = DEFAULT_MAX_VOLUME_PIXELS

    @classmethod
    def from_state(cls, state: dict, archive: str) -> Selection:
        """The selection a run recorded in its work folder's run.json."""
        return cls(
            archive=archive,
            include=tuple(state.get("include") or ()),
            exclude=tuple(state.get("exclude") or ()),
            formats=tuple(state.get("formats") or ()),
            limit=state.get("limit"),
            max_pixels=state.get("max_pixels") or 64_000_000,
            max_volume_pixels=state.get("max_volume_pixels") or DEFAULT_MAX_VOLUME_PIXELS,
        )


def keyed_entries(sel: Selection, skip_dir: str, pseudo: Pseudonymizer) -> Iterator[tuple[FileEntry, int]]:
    """(entry, row key) for the first `limit` entries: files (octbatch.archive) with volumes expanded
    into frames (octbatch.frames), in discovery order; `skip_dir` (the work folder) is never entered."""
    exts, sniff = discovery_filters(sel.formats)
    files = discover(
        sel.archive, include=sel.include, exclude=sel.exclude, skip_dirs=[skip_dir], extensions=exts, sniff=sniff
    )
    entries = expand(files, pseudonymize=pseudo, max_pixels=sel.max_pixels, max_volume_pixels=sel.max_volume_pixels)
    for n, e in enumerate(entries):
        if sel.limit is not None and n >= sel.limit:
            break
        yield e, entry_row_key(e)


def committed_keys(sources: Iterable[str], *, retry_errors: bool) -> tuple[set[int], set[int]]:
    """(committed, retry) row keys of results/part files: `failed` rows (and `error` rows with
    retry_errors) are to be done again; a key to retry in one source is not committed by another."""
    committed: set[int] = set()
    retry: set[int] = set()
    for src in sources:
        for key, status in row_keys(src):
            if status == "failed" or (retry_errors and status == "error"):
                retry.add(key)
            else:
                committed.add(key)
    committed -= retry
    return committed, retry


@dataclass
class Plan:
    """The committed keys and, lazily, the pending entries. `pending()` records what it walked past:
    every discovered key (the merge keeps exactly these) and how many were already committed."""

    selection: Selection
    skip_dir: str
    committed: set[int]
    retry: set[int]
    slice: tuple[int, int] | None = None
    pseudo: Pseudonymizer = no_pseudonyms
    discovered: set[int] = field(default_factory=set)
    n_discovered: int = 0
    skipped: int = 0

    def pending(self) -> Iterator[FileEntry]:
        for e, key in keyed_entries(self.selection, self.skip_dir, self.pseudo):
            self.n_discovered += 1
            self.discovered.add(key)
            if key in self.committed:
                self.skipped += 1
                continue
            if in_slice(e.path, self.slice):
                yield e

    def count_pending(self) -> int:
        """How many entries pending() will yield (a second walk of the archive; records nothing)."""
        return sum(
            1
            for e, key in keyed_entries(self.selection, self.skip_dir, self.pseudo)
            if key not in self.committed and in_slice(e.path, self.slice)
        )

    @property
    def unchanged(self) -> bool:
        """After pending() ran out: every discovered entry was committed and none is to be retried."""
        return not self.retry and self.skipped == self.n_discovered


def plan(
    sel: Selection,
    sources: Iterable[str],
    *,
    skip_dir: str,
    retry_errors: bool = False,
    slice_: tuple[int, int] | None = None,
    pseudo: Pseudonymizer = no_pseudonyms,
) -> Plan:
    """What is left to do for `sel`, given the result files already committed (`sources`)."""
    committed, retry = committed_keys(sources, retry_errors=retry_errors)
    return Plan(sel, skip_dir, committed, retry, slice=slice_, pseudo=pseudo)
