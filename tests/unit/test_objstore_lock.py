"""The lock of an s3:// --out (octbatch.objstore_lock) against obstore's in-memory store: the same
conditional puts as on S3, no server, no sleeping."""

from __future__ import annotations

import json
import os
import time

import pytest

pytest.importorskip("obstore")

from obstore.store import MemoryStore  # noqa: E402

from octbatch.errors import OctbatchError  # noqa: E402
from octbatch.objstore_lock import S3Lock  # noqa: E402
from octbatch.objstore_out import RemoteOut  # noqa: E402

URL = "s3://bkt/results/run.parquet"


@pytest.fixture
def remote(monkeypatch):
    store = MemoryStore()
    r = RemoteOut(URL)
    monkeypatch.setattr(r, "_store", lambda: store)
    return r


def put_lock(remote, name, **holder):
    import obstore

    body = {"token": "t", "pid": 4242, "host": "other-node", "what": name, "heartbeat_at": time.time()} | holder
    obstore.put(remote._store(), f"results/run.parquet.lock/{name}.json", json.dumps(body).encode())


def locks(remote) -> list[str]:
    return remote._list_under("results/run.parquet.lock/")


def test_a_second_run_is_refused_and_the_first_releases(remote):
    with S3Lock(remote):
        assert locks(remote) == ["results/run.parquet.lock/run.json"]
        with pytest.raises(OctbatchError) as e:
            S3Lock(remote).acquire()
        assert e.value.what.startswith(
            f"another octbatch run is writing {URL} (pid {os.getpid()} on {os.uname().nodename}, run, last heartbeat"
        )
        assert e.value.fix.startswith("Wait for it to finish, or give a different --out.")
        with pytest.raises(OctbatchError, match="another octbatch run is writing"):
            S3Lock(remote, (0, 2)).acquire()  # nor a slice beside a run
        assert locks(remote) == ["results/run.parquet.lock/run.json"]  # the refused slice left nothing
    assert locks(remote) == []


def test_slices_coexist_but_not_with_a_run_or_merge(remote):
    with S3Lock(remote, (0, 2)), S3Lock(remote, (1, 2)):
        assert len(locks(remote)) == 2
        with pytest.raises(OctbatchError, match=r"\(pid \d+ on .*, slice-0-of-2"):
            S3Lock(remote).acquire()
        with pytest.raises(OctbatchError, match="slice-1-of-2"):
            S3Lock(remote, (1, 2)).acquire()  # one slice twice
    assert locks(remote) == []


def test_stale_locks_are_taken_over_with_a_warning(remote, capsys):
    put_lock(remote, "run", heartbeat_at=time.time() - 1000)  # another machine, silent for 1000 s
    with S3Lock(remote):
        pass
    err = capsys.readouterr().err
    assert err.startswith(
        f"octbatch: warning: taking over the lock results/run.parquet.lock/run.json of {URL} held by pid 4242 "
        "on other-node: no heartbeat for 100"
    )
    assert "(over OCTBATCH_S3_LOCK_STALE_S=300); its committed parts are kept" in err

    put_lock(remote, "slice-0-of-2", host=os.uname().nodename, pid=2**22 + 12345)  # this machine, pid gone
    with S3Lock(remote):
        pass
    assert (
        f"held by pid {2**22 + 12345} on {os.uname().nodename}: its process {2**22 + 12345} on this machine is gone"
        in (capsys.readouterr().err)
    )

    put_lock(remote, "run")  # alive elsewhere: kept, refused
    with pytest.raises(OctbatchError, match=r"\(pid 4242 on other-node, run, last heartbeat 0 s ago\)"):
        S3Lock(remote).acquire()
    assert locks(remote) == ["results/run.parquet.lock/run.json"]


def test_the_stale_timeout_comes_from_the_environment(remote, monkeypatch):
    monkeypatch.setenv("OCTBATCH_S3_LOCK_STALE_S", "5")
    put_lock(remote, "run", heartbeat_at=time.time() - 10)
    with S3Lock(remote) as lock:
        assert lock.stale_s == 5
    monkeypatch.setenv("OCTBATCH_S3_LOCK_STALE_S", "soon")
    with pytest.raises(OctbatchError, match="OCTBATCH_S3_LOCK_STALE_S='soon' is not a number of seconds"):
        S3Lock(remote)


def test_a_lock_taken_over_is_not_deleted_by_its_old_owner(remote):
    lock = S3Lock(remote)
    lock.acquire()
    put_lock(remote, "run")  # another run took it over
    lock.release()
    assert locks(remote) == ["results/run.parquet.lock/run.json"]


def test_heartbeats_refresh_the_lock_until_another_run_takes_it(remote, capsys):
    import obstore

    lock = S3Lock(remote)
    lock.acquire()
    key = "results/run.parquet.lock/run.json"
    first = json.loads(bytes(obstore.get(remote._store(), key).bytes()))
    assert lock.beat() and lock.beat()
    again = json.loads(bytes(obstore.get(remote._store(), key).bytes()))
    assert again["token"] == first["token"] and again["heartbeat_at"] >= first["heartbeat_at"]
    put_lock(remote, "run")  # taken over (its ETag changed): the old owner never writes it back
    assert not lock.beat()
    assert "octbatch: warning: lost the lock results/run.parquet.lock/run.json" in capsys.readouterr().err
    assert json.loads(bytes(obstore.get(remote._store(), key).bytes()))["token"] == "t"
    lock.release()
