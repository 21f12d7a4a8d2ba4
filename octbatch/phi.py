"""Patient identifiers: pseudonymised by default, so that a results table does not spread them.

DICOM carries the patient's ID (and name, birth date, ...). octbatch writes only the ID, and by
default as a keyed HMAC-SHA256 of it: rows of one patient stay linkable (same key -> same pseudonym)
while the ID itself is not in the table. The key comes from, in order:

  1. ``--phi-key-file PATH`` (the file's bytes, surrounding whitespace stripped), or
  2. the ``OCTBATCH_PHI_KEY`` environment variable (the key text itself), or
  3. a random 32-byte key made for this output table, kept next to it in ``<out>.parts/phi.key``
     (mode 0600) so that incremental runs into the same table keep the same pseudonyms.

The key is never written into the table; its metadata says which source was used and a
fingerprint (an HMAC of a fixed label, not of any ID) so that two tables can be checked for the
same key. ``--phi keep`` writes the real IDs. Patient name, birth date, sex, address and other
identifying tags are never read into a row.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from .errors import OctbatchError

__all__ = ["PHI_MODES", "Pseudonymizer", "resolve_pseudonymizer", "KEY_ENV"]

PHI_MODES = ("pseudonymise", "keep")
KEY_ENV = "OCTBATCH_PHI_KEY"
KEY_FILE_NAME = "phi.key"
_MIN_KEY_BYTES = 16
_FINGERPRINT_LABEL = b"octbatch phi key fingerprint v1"


@dataclass(frozen=True)
class Pseudonymizer:
    mode: str  # pseudonymise | keep
    key: bytes = b""
    key_source: str = ""  # key-file | env | random-per-table | ""

    def __call__(self, patient_id: str | None) -> str | None:
        if patient_id is None:
            return None
        pid = str(patient_id).strip()
        if not pid:
            return None
        if self.mode == "keep":
            return pid
        return hmac.new(self.key, pid.encode("utf-8"), hashlib.sha256).hexdigest()

    @property
    def fingerprint(self) -> str | None:
        if self.mode == "keep":
            return None
        return hmac.new(self.key, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]

    def metadata(self) -> dict:
        """What goes into the table's metadata: how patient_id was written (never the key)."""
        if self.mode == "keep":
            return {"patient_id": "kept (--phi keep): real DICOM Patient IDs"}
        return {
            "patient_id": "hmac-sha256 of the DICOM Patient ID (hex)",
            "key_source": self.key_source,
            "key_fingerprint": self.fingerprint,
            "note": (
                "random key made for this table, kept in <out>.parts/phi.key; other tables get other pseudonyms"
                if self.key_source == "random-per-table"
                else "same key -> same pseudonyms across tables"
            ),
        }


def _read_key_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            key = f.read().strip()
    except FileNotFoundError:
        raise OctbatchError(
            f"PHI key file {path} does not exist", "Check --phi-key-file, or leave it out for a random key per table."
        ) from None
    except OSError as exc:
        raise OctbatchError(
            f"cannot read PHI key file {path}: {exc.strerror or exc}", "Make it readable by this user."
        ) from None
    return key


def _check_len(key: bytes, where: str) -> bytes:
    if len(key) < _MIN_KEY_BYTES:
        raise OctbatchError(
            f"the PHI key from {where} has {len(key)} bytes, fewer than {_MIN_KEY_BYTES}",
            "Use a long random key, e.g. python -c 'import secrets; print(secrets.token_hex(32))' > phi.key.",
        )
    return key


def _table_key(work_dir: str) -> bytes:
    """The random key of one output table: made once, then read back by every later run."""
    os.makedirs(work_dir, exist_ok=True)
    path = os.path.join(work_dir, KEY_FILE_NAME)
    try:
        with open(path, "rb") as f:
            key = bytes.fromhex(f.read().decode("ascii").strip())
        if len(key) >= _MIN_KEY_BYTES:
            return key
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        pass
    key = secrets.token_bytes(32)
    tmp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key.hex().encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # Create-if-absent: slices (--shard i/N) starting at once must all end up with one key.
        os.link(tmp, path)
    except FileExistsError:
        with open(path, "rb") as f:
            text = f.read()
        try:
            key = bytes.fromhex(text.decode("ascii").strip())
        except (ValueError, UnicodeDecodeError):
            raise OctbatchError(
                f"the table's PHI key {path} is damaged",
                "Delete it (new pseudonyms: also pass --overwrite) or give --phi-key-file.",
            ) from None
    finally:
        os.unlink(tmp)
    return key


def resolve_pseudonymizer(
    mode: str = "pseudonymise", *, key_file: str | None = None, work_dir: str | None = None, environ: dict | None = None
) -> Pseudonymizer:
    """The pseudonymizer of one run. `work_dir` is the output's work folder (for a random key)."""
    env = os.environ if environ is None else environ
    if mode not in PHI_MODES:
        raise OctbatchError(f"unknown --phi mode {mode!r}", f"Use one of {', '.join(PHI_MODES)}.")
    if mode == "keep":
        return Pseudonymizer("keep")
    if key_file:
        return Pseudonymizer(mode, _check_len(_read_key_file(key_file), f"--phi-key-file {key_file}"), "key-file")
    if env.get(KEY_ENV):
        return Pseudonymizer(mode, _check_len(env[KEY_ENV].strip().encode("utf-8"), KEY_ENV), "env")
    if work_dir is None:
        return Pseudonymizer(mode, secrets.token_bytes(32), "random-per-table")
    return Pseudonymizer(mode, _table_key(work_dir), "random-per-table")
