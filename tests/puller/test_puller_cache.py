"""The disk cache: budget and LRU eviction around pinned models, restart validation,
one process per cache directory, safe directory names, re-pointed model ids."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from mesh.clock import FakeClock
from mesh.errors import CacheFull, FailedPrecondition, InvalidModelId
from puller.fetcher import PullerFetcher


def _files(tmp_path: Path, **sizes: int) -> dict[str, str]:
    out = {}
    for name, size in sizes.items():
        p = tmp_path / "src" / f"{name}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(name.encode()[:1] * size)
        out[name] = str(p)
    return out


async def test_eviction_is_lru_and_never_removes_a_pinned_model(
        tmp_path: Path, make_fetcher: Any, clock: FakeClock) -> None:
    src = _files(tmp_path, a=1000, b=1000, c=1000, d=1000)
    fetcher = await make_fetcher(cache_budget=2500)
    a = await fetcher.fetch("a", src["a"], {})  # held by the runtime throughout
    clock.advance(1)
    b = await fetcher.fetch("b", src["b"], {})
    await fetcher.release("b")
    clock.advance(1)
    c = await fetcher.fetch("c", src["c"], {})  # needs room: b goes, a stays though older
    assert a.path.exists() and c.path.exists() and not b.path.exists()
    with pytest.raises(CacheFull, match="held by the runtime"):
        await fetcher.fetch("d", src["d"], {})  # a and c pinned: no room
    await fetcher.release("a")
    d = await fetcher.fetch("d", src["d"], {})
    assert not a.path.exists() and c.path.exists() and d.path.exists()
    assert fetcher.cache.used_bytes() == 2000
    assert [e.model_id for e in fetcher.cache.entries()] == ["c", "d"]


async def test_each_fetch_pins_once_and_each_release_unpins_once(
        tmp_path: Path, make_fetcher: Any, clock: FakeClock) -> None:
    src = _files(tmp_path, a=1000, b=1000, c=1000)
    fetcher = await make_fetcher(cache_budget=2000)
    a = await fetcher.fetch("a", src["a"], {})
    await fetcher.fetch("a", src["a"], {})  # a second holder
    await fetcher.release("a")
    await fetcher.fetch("b", src["b"], {})
    await fetcher.release("b")
    clock.advance(1)
    await fetcher.fetch("c", src["c"], {})  # b (unpinned) goes; a is still held once
    assert a.path.exists()


async def test_a_model_larger_than_the_budget_is_refused(tmp_path: Path, make_fetcher: Any) -> None:
    src = _files(tmp_path, big=5000)
    fetcher = await make_fetcher(cache_budget=4000)
    with pytest.raises(CacheFull, match="MESHSERVE_CACHE_BUDGET"):
        await fetcher.fetch("big", src["big"], {})
    assert list((fetcher.settings.cache_dir / "tmp").iterdir()) == []


async def test_restart_keeps_valid_entries_and_removes_half_written_ones(
        tmp_path: Path, make_settings: Any) -> None:
    src = _files(tmp_path, good=100, damaged=100)
    settings = make_settings()
    async with PullerFetcher(settings) as fetcher:
        good = await fetcher.fetch("team/good:v1", src["good"], {})
        damaged = await fetcher.fetch("damaged", src["damaged"], {})
    cache = settings.cache_dir
    models = cache / "models"
    (cache / "tmp" / "pull-cut-short" / "data").mkdir(parents=True)  # a pull killed mid-download
    (cache / "tmp" / "pull-cut-short" / "data" / "part").write_bytes(b"xx")
    (models / "no-manifest-entry" / "data").mkdir(parents=True)  # renamed in, manifest missing
    damaged.path.write_bytes(b"short")  # a file that no longer matches its manifest
    (models / good.path.parent.parent.name / ".manifest.json.1234").write_text("{")  # manifest update cut short
    async with PullerFetcher(settings) as fetcher:
        assert [e.model_id for e in fetcher.cache.entries()] == ["team/good:v1"]
        assert list((cache / "tmp").iterdir()) == []
        assert sorted(p.name for p in models.iterdir()) == [good.path.parent.parent.name]
        assert not list(models.glob("*/.manifest.json.*"))
        again = await fetcher.fetch("team/good:v1", src["good"], {})
        assert again.from_cache and again.path == good.path


async def test_lru_order_survives_a_restart(tmp_path: Path, make_settings: Any) -> None:
    src = _files(tmp_path, a=1000, b=1000, c=1000)
    settings = make_settings(cache_budget=2000)
    clock = FakeClock()
    async with PullerFetcher(settings, clock=clock) as fetcher:
        for name in ("a", "b"):
            await fetcher.fetch(name, src[name], {})
            await fetcher.release(name)
            clock.advance(10)
        await fetcher.fetch("a", src["a"], {})  # a is now the most recent
        await fetcher.release("a")
    async with PullerFetcher(settings, clock=clock) as fetcher:
        await fetcher.fetch("c", src["c"], {})
        assert sorted(e.model_id for e in fetcher.cache.entries()) == ["a", "c"]


async def test_a_cache_hit_writes_nothing_to_disk_until_the_lru_order_is_saved(
        tmp_path: Path, make_settings: Any) -> None:
    src = _files(tmp_path, a=1000)
    settings = make_settings(lru_save_interval_s=3600)
    async with PullerFetcher(settings) as fetcher:
        first = await fetcher.fetch("a", src["a"], {})
        await fetcher.save_lru()
        entry_dir = first.path.parent.parent
        before = {p.name: p.stat().st_mtime_ns for p in [*entry_dir.rglob("*"), settings.cache_dir / "lru.json"]}
        for _ in range(20):
            assert (await fetcher.fetch("a", src["a"], {})).from_cache
        after = {p.name: p.stat().st_mtime_ns for p in [*entry_dir.rglob("*"), settings.cache_dir / "lru.json"]}
        assert after == before


_CRASH = """
import asyncio, os, sys
from mesh.clock import FakeClock
from puller.fetcher import PullerFetcher
from puller.settings import PullerSettings

async def main() -> None:
    clock = FakeClock()
    fetcher = PullerFetcher(PullerSettings(cache_dir=sys.argv[1], cache_budget=2000, lru_save_interval_s=3600),
                            clock=clock)
    for name in sys.argv[2:]:
        if name == "save":
            await fetcher.save_lru()
            continue
        await fetcher.fetch(name, os.path.join(sys.argv[1], "..", "src", name + ".bin"), {})
        await fetcher.release(name)
        clock.advance(10)
    os._exit(9)  # killed: no close, no final save

asyncio.run(main())
"""


async def test_lru_order_after_a_crash_is_the_last_saved_one(tmp_path: Path, make_settings: Any) -> None:
    src = _files(tmp_path, a=1000, b=1000, c=1000)
    settings = make_settings(cache_budget=2000)
    assert Path(src["a"]).parent == settings.cache_dir.parent / "src"
    # a, then b, used and saved; then a used again, and the process dies before the next save.
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _CRASH, str(settings.cache_dir),
                                                "a", "b", "save", "a", cwd=Path(__file__).parents[2])
    assert await proc.wait() == 9
    async with PullerFetcher(settings, clock=FakeClock(wall_ms=1_700_000_100_000)) as fetcher:
        # Rebuilt from the last save: a older than b (its last use was lost with the process).
        assert [e.model_id for e in fetcher.cache.entries()] == ["a", "b"]
        await fetcher.fetch("c", src["c"], {})
        assert sorted(e.model_id for e in fetcher.cache.entries()) == ["b", "c"]


async def test_a_damaged_lru_file_falls_back_to_pull_order(tmp_path: Path, make_settings: Any) -> None:
    src = _files(tmp_path, a=1000, b=1000)
    settings = make_settings()
    clock = FakeClock()
    async with PullerFetcher(settings, clock=clock) as fetcher:
        for name in ("a", "b", "a"):
            await fetcher.fetch(name, src[name], {})
            await fetcher.release(name)
            clock.advance(10)
    (settings.cache_dir / "lru.json").write_text("{not json")
    async with PullerFetcher(settings, clock=clock) as fetcher:
        assert [e.model_id for e in fetcher.cache.entries()] == ["a", "b"]  # pulled a, then b


async def test_one_process_per_cache_directory(make_settings: Any) -> None:
    settings = make_settings()
    async with PullerFetcher(settings):
        with pytest.raises(FailedPrecondition, match="in use by another puller"):
            await PullerFetcher(settings).start()


async def test_model_ids_map_to_safe_directory_names(tmp_path: Path, make_fetcher: Any) -> None:
    src = _files(tmp_path, m=10)
    fetcher = await make_fetcher()
    got = await fetcher.fetch("org/team/model:v1@2", src["m"], {})
    entry_dir = got.path.parent.parent
    assert entry_dir.parent == fetcher.settings.cache_dir / "models"
    assert "/" not in entry_dir.name and ":" not in entry_dir.name
    manifest = json.loads((entry_dir / "manifest.json").read_text())
    assert manifest["model_id"] == "org/team/model:v1@2"
    for bad in ("../escape", "/abs", "a//b", ""):
        with pytest.raises(InvalidModelId):
            await fetcher.fetch(bad, src["m"], {})


async def test_a_model_id_pointed_at_new_content_is_re_pulled_only_when_not_held(
        tmp_path: Path, make_fetcher: Any) -> None:
    src = _files(tmp_path, old=10, new=20)
    fetcher = await make_fetcher()
    await fetcher.fetch("m", src["old"], {})
    with pytest.raises(FailedPrecondition, match="new model id"):
        await fetcher.fetch("m", src["new"], {})
    await fetcher.release("m")
    got = await fetcher.fetch("m", src["new"], {})
    assert got.size_bytes == 20 and not got.from_cache
    assert len(fetcher.cache.entries()) == 1


async def test_files_removed_behind_the_cache_are_pulled_again(tmp_path: Path, make_fetcher: Any) -> None:
    import shutil

    src = _files(tmp_path, m=10)
    fetcher = await make_fetcher()
    first = await fetcher.fetch("m", src["m"], {})
    await fetcher.release("m")
    shutil.rmtree(fetcher.settings.cache_dir / "models")
    (fetcher.settings.cache_dir / "models").mkdir()
    again = await fetcher.fetch("m", src["m"], {})
    assert not again.from_cache and again.path == first.path and again.path.read_bytes() == b"m" * 10


async def test_closing_during_a_pull_leaves_no_entry(make_settings: Any) -> None:
    import asyncio
    import threading

    from load_tests.storage_servers import FileServer, Route

    server = FileServer()
    stall = threading.Event()
    route = server.routes["/slow.bin"] = Route(b"s" * 200_000, stall=stall)
    settings = make_settings(read_timeout_s=30)
    fetcher = PullerFetcher(settings)
    await fetcher.start()
    task = asyncio.create_task(fetcher.fetch("slow", f"{server.url}/slow.bin", {}))
    while route.gets == 0 or not list((settings.cache_dir / "tmp").iterdir()):  # the download is under way
        await asyncio.sleep(0.01)
    stall.set()  # (lets the download thread go, so close() need not wait for the read timeout)
    await fetcher.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert route.gets == 1
    server.stop()
    async with PullerFetcher(settings) as again:
        assert again.cache.entries() == []
    assert list((settings.cache_dir / "tmp").iterdir()) == []


async def test_an_unwritable_cache_directory_is_a_clear_error(tmp_path: Path, make_settings: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(FailedPrecondition, match="MESHSERVE_CACHE_DIR"):
        await PullerFetcher(make_settings(cache_dir=blocker / "cache")).start()
