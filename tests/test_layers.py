"""layerfs._transfer.layers: adding an image's layers in parallel, each after the ones below it.

A layer's implicit directories (and its root without a ``./`` entry) take their attributes from
the layers below (``_layer.unpack.inherit_attributes``), so each layer is published once those
below are in the store: the layers of one image unpack in parallel and wait for each other only
then, and a layer below that fails makes the ones above fail rather than wait for ever.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from _images import TarEntry, blob_path, gzip_bytes, sha256, tar_bytes, write_layout
from _oracles import read_image
from conftest import require_root

from layerfs import LayerfsError, Store
from layerfs._transfer.layers import Lowers, add_layer
from layerfs._transfer.load import load

D = tarfile.DIRTYPE


def test_a_layer_waits_for_those_below(tmp_path: Path) -> None:
    lowers = Lowers(Store(tmp_path / "store"), ["sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "a" * 64])
    got: list[object] = []
    assert lowers.below(2)(False) is None, "not waiting: the layers below are not in"
    waiter = threading.Thread(target=lambda: got.append(lowers.below(2)(True)))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive(), "returned before the layers below were in"
    lowers.done("sha256:" + "a" * 64)
    lowers.done("sha256:" + "b" * 64)
    waiter.join(5)
    assert [Path(p).parent.name for p in got[0]] == ["a" * 64, "b" * 64]   # type: ignore[attr-defined]
    assert lowers.below(0)(True) == []


def test_a_failed_layer_below_fails_those_above(tmp_path: Path) -> None:
    lowers = Lowers(Store(tmp_path / "store"), ["sha256:" + "a" * 64, "sha256:" + "b" * 64])
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            lowers.below(1)(True)
        except LayerfsError as err:
            errors.append(err)

    waiter = threading.Thread(target=wait)
    waiter.start()
    lowers.done("sha256:" + "a" * 64, ok=False)
    waiter.join(5)
    assert not waiter.is_alive()
    assert len(errors) == 1 and "cancelled" in str(errors[0]) and "a" * 64 in str(errors[0])


def _image(tmp_path: Path, layers: list[list[TarEntry]]) -> str:
    tars = [tar_bytes(layer) for layer in layers]
    return write_layout(tmp_path / "layout", "t", [(gzip_bytes(t), sha256(t)) for t in tars]).source


def test_every_layer_inherits_from_those_below(tmp_path: Path) -> None:
    """Four layers unpacked two at a time, each with the implicit dir ``a`` and no root entry:
    each takes ``a`` and the root from the layer below, whatever order the threads run in."""
    require_root()
    base = [TarEntry("./", D, mode=0o750, uid=3, mtime=1_000_000), TarEntry("a/", D, mode=0o700, uid=5, mtime=1234),
            TarEntry("a/f", data=b"big" * 200_000)]
    uppers = [[TarEntry(f"a/f{i}", data=b"x")] for i in range(3)]
    store = Store(tmp_path / "store")
    (image,) = load(store, _image(tmp_path, [base, *uppers]))
    for layer in store.layer_dirs(image):
        for path, want in (("", (0o750, 3, 1_000_000)), ("a", (0o700, 5, 1234))):
            st = os.lstat(layer / path)
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime_ns // 10**9) == want, (layer, path)


def test_a_corrupt_base_fails_the_load_without_waiting(tmp_path: Path) -> None:
    """The layers above a corrupt base wait for it (they have implicit dirs), then fail with it."""
    source = _image(tmp_path, [[TarEntry("a/b", data=b"x" * 100_000)], [TarEntry("a/c", data=b"y")],
                               [TarEntry("a/d", data=b"z")]])
    blob = blob_path(tmp_path / "layout", read_image(tmp_path / "layout", "t")[0]["layers"][0]["digest"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    store = Store(tmp_path / "store")
    started = time.monotonic()
    with pytest.raises(LayerfsError) as info:
        load(store, source)
    assert time.monotonic() - started < 30
    assert "cancelled" not in str(info.value), "the cause is the corrupt blob, not the layers it stopped"
    assert store.images() == []
    assert list((store.root / "layers").iterdir()) == []


def test_a_layer_waiting_for_those_below_holds_no_stage(tmp_path: Path) -> None:
    """Command 1 adds image [A, C], command 2 image [C, A], neither layer with a root entry: each
    command's upper layer unpacks first and waits for its lower one.  Had they kept their stages
    while waiting, each command's lower layer would wait for the other's stage for ever."""
    require_root()
    blobs = {name: tar_bytes([TarEntry(f"{name}/f", data=name.encode())]) for name in ("a", "c")}
    ids = {name: sha256(tar) for name, tar in blobs.items()}
    store = Store(tmp_path / "store")
    errors: list[BaseException] = []

    def add(name: str, lowers: Lowers, index: int, waiting: threading.Event | None = None) -> None:
        below = lowers.below(index)

        def dirs(wait: bool) -> Sequence[Path] | None:
            if wait and waiting is not None:
                waiting.set()
            return below(wait)

        ok = False
        try:
            add_layer(store, lambda: contextlib.nullcontext(io.BytesIO(blobs[name])), diff_id=ids[name],
                      lowers=dirs)
            ok = True
        except BaseException as err:  # noqa: BLE001 - collected and asserted empty below
            errors.append(err)
        finally:
            lowers.done(ids[name], ok)

    one, two = Lowers(store, [ids["a"], ids["c"]]), Lowers(store, [ids["c"], ids["a"]])
    waiting = [threading.Event(), threading.Event()]
    with store.hold(ids.values()):
        uppers = [threading.Thread(target=add, args=("c", one, 1, waiting[0]), daemon=True),
                  threading.Thread(target=add, args=("a", two, 1, waiting[1]), daemon=True)]
        for t in uppers:
            t.start()
        assert all(w.wait(10) for w in waiting), "the upper layers never came to wait"
        lowers = [threading.Thread(target=add, args=("a", one, 0), daemon=True),
                  threading.Thread(target=add, args=("c", two, 0), daemon=True)]
        for t in lowers:
            t.start()
        deadline = time.monotonic() + 20
        for t in uppers + lowers:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in uppers + lowers), "the two commands wait for each other"
    assert not errors, errors
    assert store.has_layer(ids["a"]) and store.has_layer(ids["c"])


def test_a_layer_parked_by_a_command_that_never_goes_on_is_waited_for_minutes_not_for_ever(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another command has the layer parked (it waits for the layers below its own, which may
    never come): this one says it waits for it, then, :data:`PARKED_WAIT_LONGEST` later (cut to a
    second here), fetches the layer itself."""
    import subprocess
    import sys

    from layerfs._oci.digest import short
    from layerfs._transfer import layers

    monkeypatch.setattr(layers, "PARKED_WAIT_LONGEST", 1.0)
    blob = tar_bytes([TarEntry("a/f", data=b"a")])
    diff_id = sha256(blob)
    store = Store(tmp_path / "store")
    store._ensure_layout()
    holder = subprocess.Popen([sys.executable, "-c", """
import sys, time
from pathlib import Path
from layerfs._store import lease
lease.new_dir(Path(sys.argv[1]), sys.argv[2])
print("parked", flush=True)
time.sleep(600)
""", str(store.tmp_dir), f"parked-{short(diff_id)}"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "parked\n"
        said: list[float] = []
        got: list[object] = []
        started = time.monotonic()

        def add() -> None:
            with store.hold([diff_id]):
                got.append(add_layer(store, lambda: contextlib.nullcontext(io.BytesIO(blob)), diff_id=diff_id,
                                     on_wait=lambda: said.append(time.monotonic() - started)))

        adder = threading.Thread(target=add, daemon=True)
        adder.start()
        adder.join(30)
        assert not adder.is_alive(), "it waits for the parked layer for ever"
        assert len(said) == 1 and said[0] < 1.0, said  # said at once, and once
        assert time.monotonic() - started >= 1.0  # waited before it fetched
        assert len(got) == 1 and store.has_layer(diff_id)
    finally:
        holder.kill()
        holder.wait()
