"""Stores made by strangers (issue 21, docs/security.md): a store directory is untrusted input.

Every method's store is planted with what a crafted download could hold in place of each of its files and
folders: a symbolic link to an outside copy, a dangling link into an outside folder, a link to /dev/zero,
a FIFO, a folder replaced by a link to an outside folder. Each planted store is opened read-only and read,
then opened to add an image, in a child process under a timeout and an address-space limit
(tests/untrusted_child.py); the outside ("victim") folder must be unchanged byte for byte after. Then the
crafted contents of each format (HDF5 external links, inflating npz members, absurd declared sizes, ...),
and read-only opens: mode "r" writes nothing, and every method reads a store on a read-only file system.

The default run plants on every top-level file and folder and on up to ``PER_FOLDER`` files of each folder;
``UNTRUSTED_SWEEP=1`` plants on every file (the figures in docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from storage_impls import open_store
from storage_impls.registry import installed_methods
from tests.faults import REPO, labelled_batch, pixels_for

METHODS = installed_methods()
LIMIT = 3 << 30  # address space of a child: a crafted store must not make a reader allocate gigabytes
SWEEP = bool(os.environ.get("UNTRUSTED_SWEEP"))
PER_FOLDER = 3
TIMEOUT = 240 if SWEEP else 90
LANCE_FOLDERS = ("_indices", "_deletions", "_transactions", "_versions", "data")  # planted whether there or not
FILE_PLANTS = ("outside-copy", "dangling", "dev-zero", "fifo")
NAMED = re.compile(r"[^0-9]*|(OPTIONS|MANIFEST)-\d+")  # a file a format names, not one of its numbered data files


def make_store(method: str, directory: Path, singles: bool = True) -> list[int]:
    """A store of 21 images with a replaced one (lance: past 16 versions, so that the next write cleans up);
    the labels it holds. Without ``singles``: written by one store_many (no journal, whose checks a crafted
    checkpoint would meet first)."""
    labels = list(range(20 + (not singles)))
    with open_store(method, directory) as store:
        store.store_many(*labelled_batch(labels))
        if not singles:
            return labels
        store.store_single(pixels_for(20), 20, 20)
        labels.append(20)
        for version in range(17 if method == "lance" else 1):
            store.store_single(pixels_for(100 + version), 3, 100 + version)
            labels[3] = 100 + version
    return labels


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry below ``folder``: its kind, and a regular file's content hash and mtime."""
    seen = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root, name)
            info = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else None
            seen[str(path.relative_to(folder))] = (info.st_mode, digest, info.st_mtime_ns if digest else None)
    return seen


def targets(store: Path) -> tuple[list[str], list[str]]:
    """(files, folders) of ``store`` to plant on, relative to it: every file when SWEEP; else the top level's,
    the named ones (a library's own: CURRENT, OPTIONS-*, meta.json, ...) and PER_FOLDER numbered ones a folder."""
    files, folders = [], []
    for root, dirs, names in os.walk(store):
        relative = Path(root).relative_to(store)
        folders += [str(relative / name) for name in sorted(dirs)]
        named = [name for name in sorted(names) if NAMED.fullmatch(name)]
        numbered = [name for name in sorted(names) if name not in named]
        chosen = sorted(names) if SWEEP or relative == Path(".") else named + numbered[:PER_FOLDER]
        files += [str(relative / name) for name in chosen]
    return files, folders


def plant(store: Path, victim: Path, relative: str, kind: str) -> None:
    """Put ``kind`` in place of ``store/relative``, with whatever it points to in ``victim`` (outside the store)."""
    path = store / relative
    victim.mkdir(parents=True)
    if kind == "outside-folder":
        target = victim / "folder"
        if path.exists():
            shutil.move(path, target)
        else:
            target.mkdir()
            (target / "precious.txt").write_bytes(b"outside the store\n")
        path.symlink_to(target, target_is_directory=True)
        return
    if kind == "outside-copy":
        shutil.copy2(path, victim / "copy")
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        targets = {"outside-copy": victim / "copy", "dangling": victim / "created", "dev-zero": Path("/dev/zero")}
        path.symlink_to(targets[kind])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, tuple[Path, list[int]]]:
    """A store of every method, made once: (its folder, the labels it holds)."""
    made = {}
    for method in METHODS:
        folder = tmp_path_factory.mktemp("pristine") / method
        made[method] = folder, make_store(method, folder)
    return made


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[Path, list[int]]]:
    """A store of every method written by one store_many, made once: (its folder, the labels it holds)."""
    made = {}
    for method in METHODS:
        folder = tmp_path_factory.mktemp("checkpoint") / method
        made[method] = folder, make_store(method, folder, singles=False)
    return made


def run_plants(method: str, plants: list[tuple[str, str, list[int]]], *, write: bool = True) -> list[dict]:
    """Run tests/untrusted_child.py on ``plants`` (reads, and a write if ``write``); its outcomes, one per plant
    (fails on a hang or a signal)."""
    command = [sys.executable, "-m", "tests.untrusted_child", method, str(LIMIT), str(int(write)), json.dumps(plants)]
    timeout = TIMEOUT
    try:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        done = (error.stdout or b"").decode().splitlines()
        hung = plants[len(done)][0] if len(done) < len(plants) else "?"
        pytest.fail(f"{method}: hung (no answer in {timeout} s) at {hung} after {len(done)} plants")
    outcomes = [json.loads(line) for line in result.stdout.splitlines()]
    if result.returncode or len(outcomes) != len(plants):
        stuck = plants[len(outcomes)][0] if len(outcomes) < len(plants) else "?"
        pytest.fail(f"{method}: child exited {result.returncode} at {stuck}:\n{result.stderr[-3000:]}")
    return outcomes


@pytest.mark.parametrize("planted", ["links", "fifos"])  # apart, so that a hang does not hide an escape
@pytest.mark.parametrize("method", METHODS)
def test_planted_links_and_fifos_are_refused(method, planted, pristine, tmp_path):
    """A link (to an outside copy, dangling, to /dev/zero, to an outside folder) or a FIFO in place of any file
    or folder: every open refuses it (CorruptStoreError naming it), nothing hangs, nothing outside changes."""
    source, labels = pristine[method]
    files, folders = targets(source)
    kinds = ("fifo",) if planted == "fifos" else tuple(kind for kind in FILE_PLANTS if kind != "fifo")
    cases = [(relative, kind) for relative in files for kind in kinds]
    cases += [(relative, "outside-folder") for relative in folders if planted == "links"]
    if method == "lance" and planted == "links":
        images = next(name for name in folders if name.endswith(".lance"))
        cases += [(f"{images}/{name}", "outside-folder") for name in LANCE_FOLDERS if f"{images}/{name}" not in folders]
    plants = []
    for number, (relative, kind) in enumerate(cases):
        store = tmp_path / "stores" / str(number)
        shutil.copytree(source, store, symlinks=True)
        plant(store, tmp_path / "victim" / str(number), relative, kind)
        plants.append((f"{kind}:{relative}", str(store), labels))
    before = snapshot(tmp_path / "victim")
    outcomes = run_plants(method, plants)
    assert snapshot(tmp_path / "victim") == before, f"{method}: a planted store changed files outside it"
    wrong = [outcome for outcome in outcomes if {outcome["read"], outcome["write"]} != {"typed CorruptStoreError"}]
    assert not wrong, f"{method}: {len(wrong)} of {len(outcomes)} planted stores not refused: {wrong[:5]}"


# -- crafted contents: each format's own ways to reach outside or to make a reader allocate -------------------
RSS_MB = 400  # peak memory of a child reading a crafted store (about 150 MB is the interpreter and its imports)
RECORD_METHODS = [method for method in METHODS if method not in ("disk", "lmdb", "hdf5")]  # metadata: records.py


def crafted(method: str, store: Path, labels: list[int], *, refused: bool = False) -> dict:
    """Run the child on one crafted store; assert it is refused (typed) or, unless ``refused``, read right; in
    bounded memory."""
    outcome = run_plants(method, [("crafted", str(store), labels)], write=False)[0]
    assert outcome["read"] in ("typed CorruptStoreError",) + ("same",) * (not refused), outcome
    assert outcome["rss_mb"] < RSS_MB, f"{method}: reading a crafted store took {outcome['rss_mb']} MB"
    return outcome


def rewrite_meta(path: Path, **fields: object) -> None:
    """Change ``fields`` of a records.py metadata file, with a valid CRC (as a crafted store would)."""
    from storage_impls.core.records import write_meta

    meta = json.loads(path.read_bytes().partition(b"\n")[0])
    write_meta(path, {**meta, **fields}, durable=False)


def copy_of(stores, method: str, tmp_path: Path) -> tuple[Path, list[int]]:
    source, labels = stores[method]
    store = tmp_path / method
    shutil.copytree(source, store)
    return store, labels


@pytest.mark.parametrize("method", RECORD_METHODS)
@pytest.mark.parametrize("fields", [{"count": 10**9}, {"image_shape": [60000, 60000, 3]}], ids=["count", "shape"])
def test_absurd_declared_sizes_are_refused_unallocated(method, fields, checkpoints, tmp_path):
    """Metadata declaring 10**9 images, or images of 10**10 values, in a store of a few kB: a typed error,
    in bounded memory (zarr built a path per declared shard, npy_format allocated before its size check)."""
    store, labels = copy_of(checkpoints, method, tmp_path)
    rewrite_meta(store / f"{method}.json", **fields)
    if method == "zarr" and "count" in fields:  # and the arrays' own metadata, which the store checks against its own
        for array in store.glob("ckpt-*/*/zarr.json"):
            node = json.loads(array.read_bytes())
            node["shape"][0] = fields["count"]
            array.write_text(json.dumps(node))
    crafted(method, store, labels)


JOURNALED = [method for method in ("disk", "hdf5", "npy-memmap") if method in METHODS]  # journal.py, one format


@pytest.mark.parametrize("method", JOURNALED)
def test_a_journal_declaring_huge_images_is_refused_unallocated(method, pristine, tmp_path):
    """A journal whose header (its CRC made valid, its length and so its records' places unchanged) declares
    images of 60000 x 60000 x 3: refused before a record of that shape is read."""
    store, labels = copy_of(pristine, method, tmp_path)
    (journal,) = [path for path in store.iterdir() if path.name.endswith("journal")]
    data = journal.read_bytes()
    line, _, rest = data.partition(b"\n")
    header = {**json.loads(line), "image_shape": [60000, 60000, 3]}
    crafted_line = json.dumps(header, separators=(",", ":")).encode().ljust(len(line))  # JSON allows the padding
    assert len(crafted_line) == len(line)
    journal.write_bytes(crafted_line + b"\n" + zlib.crc32(crafted_line + b"\n").to_bytes(4, "little") + rest[4:])
    crafted(method, store, labels, refused=True)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def test_disk_png_bomb_over_the_maximum_image_size(checkpoints, tmp_path):
    """A disk store whose images are 20000 x 20000 x 3 (over MAX_IMAGE_VALUES): refused at open, not decoded."""
    from storage_impls.methods.disk.format import LABELS_HEADER, image_crc

    store, labels = copy_of(checkpoints, "disk", tmp_path)
    generation = store / (store / "CURRENT").read_text()
    side = 20000
    compressor, rows = zlib.compressobj(1), b"\0" * (side * 3 + 1)
    pixels = b"".join(compressor.compress(rows) for _ in range(side)) + compressor.flush()
    png = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0]))
        + png_chunk(b"IDAT", pixels)
        + png_chunk(b"IEND", b"")
    )
    meta = json.loads((generation / "meta.json").read_bytes())
    (generation / "meta.json").write_text(json.dumps({**meta, "image_shape": [side, side, 3]}))
    for image_id in range(len(labels)):
        (generation / f"{image_id}.png").write_bytes(png)
    rows_text = "".join(f"{image_id},{label},{image_crc(png, label)}\n" for image_id, label in enumerate(labels))
    (generation / "labels.csv").write_bytes(LABELS_HEADER + rows_text.encode())
    crafted("disk", store, labels)


def test_disk_pointer_error_quotes_no_content(checkpoints, tmp_path):
    """A CURRENT holding something else (a secret, in a crafted store linked or copied): the error does not show it."""
    from storage_impls import CorruptStoreError

    store, _ = copy_of(checkpoints, "disk", tmp_path)
    (store / "CURRENT").write_bytes(b"root:x:0:0:the-secret\n")
    with pytest.raises(CorruptStoreError) as raised:
        open_store("disk", store, "r")
    assert "secret" not in str(raised.value) and "CURRENT" in str(raised.value)


@pytest.mark.skipif("npz" not in METHODS, reason="npz is not installed")
def test_npz_member_inflating_past_its_declared_size(checkpoints, tmp_path):
    """An npz shard whose images member inflates to 320 MB from under 1 MB: refused before inflating."""
    import zipfile

    store, labels = copy_of(checkpoints, "npz", tmp_path)
    shard = next(store.glob("ckpt-*/shard-000000.npz"))
    with zipfile.ZipFile(shard) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(shard, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, data in members.items():
            if name != "images.npy":
                archive.writestr(name, data)
        with archive.open("images.npy", "w", force_zip64=True) as member:
            block = bytes(8 << 20)
            for _ in range(40):
                member.write(block)
    crafted("npz", store, labels)


@pytest.mark.skipif("hdf5" not in METHODS, reason="h5py is not installed")
@pytest.mark.parametrize("link", ["external", "soft"])
def test_hdf5_links_in_place_of_datasets(link, checkpoints, tmp_path):
    """``images`` replaced by an external link to another file's pixels (or a soft link): refused, not followed."""
    import h5py

    store, labels = copy_of(checkpoints, "hdf5", tmp_path)
    outside = tmp_path / "outside.h5"
    with h5py.File(store / "images.h5", "a") as file:
        images = file["images"][()]
        with h5py.File(outside, "w") as other:
            other["images"] = images[::-1]  # another file's pixels: the wrong images if followed
        file.move("images", "original")
        file["images"] = h5py.ExternalLink(str(outside), "images") if link == "external" else h5py.SoftLink("/original")
    crafted("hdf5", store, labels, refused=True)  # following a link out is an escape, whatever it reads


@pytest.mark.skipif("lance" not in METHODS, reason="pylance is not installed")
@pytest.mark.parametrize("naming", ["base-path", "absolute-name", "dotted-name"])
def test_lance_manifest_naming_files_outside(naming, checkpoints, tmp_path):
    """A Lance version whose data file lies outside the store, committed with Lance's own API: in a registered
    base path (``add_bases``, then an overwrite with ``target_bases``: Lance itself reads the outside file, the
    images reversed), or named by an absolute or ``..`` path. Refused (CorruptStoreError) on a read and on an
    open to add, the outside file unread (its access time, set to the epoch, unchanged) and unchanged."""
    import dataclasses

    import lance
    from lance.fragment import DataFile

    store, labels = copy_of(checkpoints, "lance", tmp_path)
    (folder,) = store.glob("images-*.lance")
    table = lance.dataset(str(folder)).to_table()
    reversed_images = table.set_column(2, "image", table.column("image").take(list(range(len(labels)))[::-1]))
    outside = tmp_path / "victim"
    if naming == "base-path":
        lance.dataset(str(folder)).add_bases([lance.DatasetBasePath(str(outside / "data"), name="outside")])
        lance.write_dataset(reversed_images, str(folder), mode="overwrite", target_bases=["outside"])
        read = lance.dataset(str(folder)).to_table().column("image")
        assert read == reversed_images.column("image")  # Lance itself reads the outside file
    else:
        other = lance.write_dataset(reversed_images, str(outside / "other.lance"))
        (fragment,) = [piece.metadata for piece in other.get_fragments()]
        (data,) = fragment.files
        path = outside / "other.lance" / "data" / data.path
        name = str(path) if naming == "absolute-name" else os.path.relpath(path, folder / "data")
        named = DataFile(name, data.fields, data.column_indices, data.file_major_version, data.file_minor_version)
        named.file_size_bytes = data.file_size_bytes  # else the commit looks the file up by its name
        overwrite = lance.LanceOperation.Overwrite(table.schema, [dataclasses.replace(fragment, files=[named])])
        lance.LanceDataset.commit(str(folder), overwrite, read_version=lance.dataset(str(folder)).version)
    (outside_file,) = (outside / ("data" if naming == "base-path" else "other.lance/data")).glob("*.lance")
    before = snapshot(outside)  # which reads it: the access time is set after
    os.utime(outside_file, ns=(0, outside_file.stat().st_mtime_ns))  # relatime: the next read sets the access time
    outcome = run_plants("lance", [(naming, str(store), labels)])[0]
    assert (outcome["read"], outcome["write"]) == ("typed CorruptStoreError",) * 2, outcome
    assert outside_file.stat().st_atime == 0, "the store read a data file outside it"
    assert snapshot(outside) == before


# -- read-only means read-only ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_mode_r_writes_nothing(method, pristine, tmp_path):
    """Opening and reading in mode "r" leaves every file as it was (LMDB: lock.mdb is its readers' table, used
    where a writer may run; with readonly_media=True not even that)."""
    store, labels = copy_of(pristine, method, tmp_path)
    before = snapshot(store)
    assert run_plants(method, [("read", str(store), labels)], write=False)[0]["read"] == "same"
    after = snapshot(store)
    if method == "lmdb":
        for state in before, after:
            state.pop("lock.mdb", None)
    assert after == before
    if method == "lmdb":
        (store / "lock.mdb").unlink()
        with open_store("lmdb", store, "r", readonly_media=True) as reader:
            assert len(reader) == len(labels)
        assert not (store / "lock.mdb").exists()


def read_only_mount_unavailable() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount --bind /tmp /tmp && mount -o remount,bind,ro /tmp"],
        capture_output=True,
        text=True,
    )
    return None if probe.returncode == 0 else f"no read-only bind mount in a user namespace: {probe.stderr.strip()}"


@pytest.mark.parametrize("method", METHODS)
def test_reads_a_store_on_a_read_only_file_system(method, pristine, tmp_path):
    """Every method opens and reads a store on a read-only bind mount (EROFS for any write), in a user namespace."""
    why = read_only_mount_unavailable()
    if why:
        pytest.skip(why)
    store, labels = copy_of(pristine, method, tmp_path)
    code = (
        "import json, sys; from tests.untrusted_child import outcome, read_all; "
        f"print(outcome(read_all, {method!r}, {str(store)!r}, {labels!r}))"
    )
    mount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", mount, str(store), sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.stdout.strip() == "same", result.stderr[-3000:]
