"""Hot reload: changes are picked up in place, broken ones never take the server down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
import watchfiles

from conftest import (
    ROOT,
    Server,
    cgi_guest,
    get,
    run_wagi,
    spin_toml,
    wait_for_log,
    wait_until,
    workers_of,
)
from gateway.build import is_up_to_date, watches
from gateway.config import Settings
from gateway.manifest import Build, load_manifest
from gateway.reload import Reloader
from gateway.server import Supervisor


def says(text: str) -> str:
    return cgi_guest(f"Content-Type: text/plain\n\n{text}".encode())


def write(path: Path, text: str) -> None:
    """Replace a file the way editors do: write a new one, then rename it over."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    os.replace(temporary, path)


def greeter(app: Path, workdir: str = ".") -> str:
    """Give component `greet` a build, returning its manifest table: it turns
    WORKDIR/greeting.txt into greet.wat, a module that says the text, as a compiler would
    turn source into wasm (a text that says "break" does not build)."""
    builder = app / "make_greet.py"
    builder.write_text(
        "import pathlib, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from conftest import cgi_guest\n"
        "text = pathlib.Path('greeting.txt').read_text()\n"
        "if 'break' in text: sys.exit('cannot build: ' + text)\n"
        "body = b'Content-Type: text/plain\\n\\n' + text.encode()\n"
        "pathlib.Path(sys.argv[2]).write_text(cgi_guest(body))\n"
    )
    command = f"python {builder} {Path(__file__).parent} {app / 'greet.wat'}"
    return (
        f'[component.greet.build]\ncommand = "{command}"\nworkdir = "{workdir}"\n'
        'watch = ["greeting.txt"]\n'
    )


# A build that never ends by itself: its shell waits for a child, whose pid it writes down.
ENDLESS_BUILD = (
    '[component.one.build]\ncommand = "sleep 30 & echo $! > sleeper.pid; wait"\n'
    'watch = ["one.src"]\n'
)


def endless_build_started(app: Path) -> int:
    """Wait until the endless build runs; the pid of the shell's child."""
    pid_file = app / "sleeper.pid"
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), "no build started")
    return int(pid_file.read_text())


def running(pid: int) -> bool:
    """Whether a process runs (one that ended but is not reaped yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def app(tmp_path):
    (tmp_path / "one.wat").write_text(says("one v1"))
    (tmp_path / "two.wat").write_text(says("two v1"))
    (tmp_path / "spin.toml").write_text(spin_toml({"/one": "one", "/two": "two"}))
    return tmp_path


def test_editing_a_module_reloads_it_alone(serve, app):
    server = serve("-c", str(app / "spin.toml"), "--watch")
    assert get(server, "/one").text == "one v1"
    write(app / "one.wat", says("one v2"))
    log = wait_for_log(server, "reloaded to version 2")
    assert get(server, "/one").text == "one v2"
    assert get(server, "/two").text == "two v1"
    line = next(line for line in log.splitlines() if "reloaded to version 2" in line)
    assert "changed: one.wat" in line
    assert "recompiled one" in line and "unchanged two" in line  # two was reused


def test_adding_removing_and_rerouting_components(serve, app):
    server = serve("-c", str(app / "spin.toml"), "--watch")
    (app / "three.wat").write_text(says("three"))
    write(app / "spin.toml", spin_toml({"/one": "one", "/two": "two", "/three": "three"}))
    wait_for_log(server, "reloaded to version 2")
    assert get(server, "/three").text == "three"

    write(app / "spin.toml", spin_toml({"/one": "one", "/three": "three"}))
    wait_for_log(server, "reloaded to version 3")
    assert get(server, "/two").status_code == 404

    write(app / "spin.toml", spin_toml({"/uno": "one", "/three": "three"}))
    wait_for_log(server, "reloaded to version 4")
    assert get(server, "/one").status_code == 404
    assert get(server, "/uno").text == "one v1"
    info = get(server, "/.well-known/wagi/info").json()
    assert info["version"] == 4
    assert info["routes"] == {"/uno": "one", "/three": "three"}
    assert info["loaded_at"].endswith("Z")


def test_a_broken_manifest_keeps_the_old_version_until_it_is_fixed(serve, app):
    server = serve("-c", str(app / "spin.toml"), "--watch")
    write(app / "spin.toml", spin_toml({"/one": "one", "/two": "two"}) + "sorce = 'x'\n")
    log = wait_for_log(server, "reload failed")
    line = next(line for line in log.splitlines() if "reload failed" in line)
    assert "spin.toml:" in line and "unknown key" in line
    assert "version 1 is still live" in line
    assert get(server, "/one").text == "one v1"  # still serving, unchanged
    assert get(server, "/.well-known/wagi/info").json()["version"] == 1

    write(app / "spin.toml", spin_toml({"/one": "one", "/two": "two", "/1": "one"}))
    wait_for_log(server, "reloaded to version 2")
    assert get(server, "/1").text == "one v1"


@pytest.mark.parametrize("damage", ["garbage", "missing", "bad-import"])
def test_a_broken_module_keeps_the_old_version(serve, app, damage):
    server = serve("-c", str(app / "spin.toml"), "--watch")
    if damage == "garbage":
        write(app / "one.wat", "(module (this is not webassembly")
        expected = "not a valid WebAssembly module"
    elif damage == "missing":
        (app / "one.wat").unlink()
        expected = "module file not found"
    else:
        write(app / "one.wat", '(module (import "env" "magic" (func)))')
        expected = "imports env::magic"
    log = wait_for_log(server, "reload failed")
    assert expected in log
    assert get(server, "/one").text == "one v1"
    write(app / "one.wat", says("one v3"))
    wait_for_log(server, "reloaded to version 2")
    assert get(server, "/one").text == "one v3"


def test_putting_back_the_live_module_after_a_failed_reload_applies_what_waited(serve, app):
    """The manifest changed while a module was missing; restoring the module (the very
    bytes that are live) must load the manifest's change, not be skipped as loaded."""
    server = serve("-c", str(app / "spin.toml"), "--watch")
    kept = (app / "one.wat").read_text()
    (app / "one.wat").unlink()
    wait_for_log(server, "reload failed")
    write(app / "spin.toml", spin_toml({"/one": "one", "/two": "two", "/1": "one"}))
    wait_for_log(server, "reload failed", count=2)
    write(app / "one.wat", kept)
    wait_for_log(server, "reloaded to version 2")
    assert get(server, "/1").text == "one v1"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_module_given_the_bytes_of_another_component_is_reloaded(serve, app, workers):
    """The running version had those bytes (two runs them), so the change was skipped
    as a build's output already loaded, and /one kept its old module."""
    server = serve("-c", str(app / "spin.toml"), "--watch", "--workers", str(workers))
    wait_for_log(server, "wagi: ready", count=workers)
    write(app / "one.wat", (app / "two.wat").read_text())
    log = wait_for_log(server, "reloaded to version 2", count=workers)
    assert "; changed to a module already loaded one; unchanged two" in log  # not "unchanged one"
    assert {get(server, "/one").text for _ in range(10)} == {"two v1"}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_module_in_a_folder_that_does_not_exist_is_waited_for(serve, app, tmp_path, workers):
    """The folder could not be watched, and the watcher died: nothing was reloaded after."""
    server = serve("-c", str(app / "spin.toml"), "--watch", "--workers", str(workers))
    wait_for_log(server, "wagi: ready", count=workers)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"  # outside the app's folder
    write(app / "spin.toml", spin_toml({"/one": f"{elsewhere}/one.wat", "/two": "two"}))
    wait_for_log(server, "reload failed")
    wait_for_log(server, f"waiting for {elsewhere} to exist")

    write(app / "spin.toml", spin_toml({"/one": "one", "/two": "two", "/1": "one"}))  # fixed
    wait_for_log(server, "reloaded to version 2", count=workers)
    assert get(server, "/1").text == "one v1"

    write(app / "spin.toml", spin_toml({"/one": f"{elsewhere}/one.wat", "/two": "two"}))
    wait_for_log(server, "reload failed", count=2)
    elsewhere.mkdir()  # made, with the module in it: seen once it exists
    (elsewhere / "one.wat").write_text(says("one from elsewhere"))
    wait_for_log(server, "reloaded to version 3", count=workers)
    assert {get(server, "/one").text for _ in range(10)} == {"one from elsewhere"}
    (elsewhere / "one.wat").write_text(says("one from elsewhere v2"))  # and then watched
    wait_for_log(server, "reloaded to version 4", count=workers)
    assert {get(server, "/one").text for _ in range(10)} == {"one from elsewhere v2"}
    assert "Traceback" not in server.log()


def test_an_error_while_handling_changes_is_logged_and_watching_goes_on(serve, app):
    # Its workdir gone, the manifest no longer loads; the last good one has a build that
    # cannot start there (an OSError, not a failed build). The watcher died of it.
    (app / "src").mkdir()
    (app / "src" / "greeting.txt").write_text("hello v1")
    (app / "spin.toml").write_text(spin_toml({"/greet": "greet"}, greeter(app, "src")))
    assert run_wagi("build", "-c", str(app / "spin.toml")).returncode == 0
    server = serve("-c", str(app / "spin.toml"), "--watch")
    shutil.rmtree(app / "src")
    wait_for_log(server, "handling the changes failed; the running version stays live")
    assert get(server, "/greet").text == "hello v1"

    (app / "src").mkdir()
    time.sleep(0.5)  # the file watcher's own race: a new folder is watched once it sees it
    (app / "src" / "greeting.txt").write_text("hello v2")
    log = wait_for_log(server, "reloaded to version 2")
    assert "rebuilt greet" in log
    assert get(server, "/greet").text == "hello v2"


def test_watching_that_fails_starts_again(app, monkeypatch, caplog):
    """The file watcher itself failing (as it does for a folder that went away just
    before) is logged, and watching starts again."""
    real_awatch = watchfiles.awatch
    starts = []

    def awatch(*roots: Path, **options: object) -> AsyncIterator[set]:
        starts.append(roots)
        if len(starts) == 1:
            return failing_watch()
        return real_awatch(*roots, **options)

    async def failing_watch() -> AsyncIterator[set]:
        raise FileNotFoundError("No path was found.")
        yield set()  # an async generator, as watchfiles.awatch is

    async def scenario() -> list[str]:
        reasons: list[str] = []

        async def reload(reason: str, rebuilt: Sequence[str]) -> bool:
            reasons.append(reason)
            return True

        reloader = Reloader(Settings(manifest=app / "spin.toml"), reload, set)
        watching = asyncio.create_task(reloader.run())
        try:
            async with asyncio.timeout(10):
                while len(starts) < 2:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # the watcher's thread is running
                write(app / "one.wat", says("one v2"))
                while not reasons:
                    await asyncio.sleep(0.05)
        finally:
            watching.cancel()
        return reasons

    monkeypatch.setattr(watchfiles, "awatch", awatch)
    with caplog.at_level(logging.INFO, "wagi.reload"):
        assert asyncio.run(scenario()) == ["changed: one.wat"]
    assert "watching for changes failed; watching again in 1 s" in caplog.text
    assert "No path was found." in caplog.text


def test_changes_that_come_together_make_one_reload(serve, app):
    server = serve("-c", str(app / "spin.toml"), "--watch", "--watch-debounce", "0.3")
    for n in range(5):
        write(app / "one.wat", says(f"one v{n}"))
        write(app / "two.wat", says(f"two v{n}"))
        time.sleep(0.02)
    wait_for_log(server, "reloaded to version 2")
    time.sleep(1)
    assert "reloaded to version 3" not in server.log()
    assert (get(server, "/one").text, get(server, "/two").text) == ("one v4", "two v4")


def test_a_component_is_rebuilt_when_its_build_inputs_change(serve, app):
    (app / "greeting.txt").write_text("hello v1")
    (app / "spin.toml").write_text(spin_toml({"/greet": "greet"}, greeter(app)))

    assert run_wagi("build", "-c", str(app / "spin.toml")).returncode == 0
    server = serve("-c", str(app / "spin.toml"), "--watch")
    assert get(server, "/greet").text == "hello v1"

    write(app / "greeting.txt", "hello v2")
    log = wait_for_log(server, "reloaded to version 2")
    assert get(server, "/greet").text == "hello v2"
    assert "rebuilt greet" in log

    write(app / "greeting.txt", "please break")
    log = wait_for_log(server, "building component `greet` failed")
    assert "cannot build: please break" in log  # the build's own output is shown
    assert "the running version stays live" in log
    assert get(server, "/greet").text == "hello v2"

    write(app / "greeting.txt", "hello v3")
    wait_for_log(server, "reloaded to version 3")
    assert get(server, "/greet").text == "hello v3"
    time.sleep(0.5)  # the module the build wrote needs no second reload
    assert "reloaded to version 4" not in server.log()


@pytest.mark.parametrize("workers", [1, 2])
def test_stopping_the_gateway_kills_a_build_in_progress(serve, app, workers):
    """Shutdown waited for the build to end, however long (forever, for a stuck one)."""
    (app / "spin.toml").write_text(spin_toml({"/one": "one", "/two": "two"}, ENDLESS_BUILD))
    server = serve("-c", str(app / "spin.toml"), "--watch", "--workers", str(workers))
    wait_for_log(server, "wagi: ready", count=workers)
    (app / "one.src").write_text("edited")
    sleeper = endless_build_started(app)
    asked = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=15) == 0
    assert time.monotonic() - asked < 5
    assert "stopped building one: the gateway is stopping" in server.log()
    assert not running(sleeper)  # the build's whole process group is gone


def test_a_reloader_cancelled_kills_its_build(app, caplog):
    (app / "spin.toml").write_text(spin_toml({"/one": "one"}, ENDLESS_BUILD))

    async def reload(reason: str, rebuilt: Sequence[str]) -> bool:
        return True

    async def scenario() -> int:
        reloader = Reloader(Settings(manifest=app / "spin.toml"), reload, set)
        watching = asyncio.create_task(reloader.run())
        async with asyncio.timeout(10):  # a watcher that never starts fails, not hangs
            while "watching" not in caplog.text:
                await asyncio.sleep(0.05)
        (app / "one.src").write_text("edited")
        sleeper = await asyncio.to_thread(endless_build_started, app)
        try:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            async with asyncio.timeout(5):
                while running(sleeper):
                    await asyncio.sleep(0.05)
        finally:  # not to wait for it, if it was not killed
            with contextlib.suppress(ProcessLookupError):
                os.kill(sleeper, signal.SIGKILL)
        return sleeper

    with caplog.at_level(logging.INFO, "wagi.reload"):
        asyncio.run(scenario())
    assert "stopped building one" in caplog.text


def test_editing_a_c_source_rebuilds_it_with_its_build_command(serve, tmp_path):
    app = tmp_path / "capp"
    app.mkdir()
    (app / "hi.c").write_text(
        "#include <stdio.h>\nint main(void) { "
        'printf("Content-Type: text/plain\\n\\nC v1"); return 0; }\n'
    )
    (app / "spin.toml").write_text(
        'spin_manifest_version = 2\n[application]\nname = "c"\n'
        '[[trigger.http]]\nroute = "/hi"\ncomponent = "hi"\nexecutor = { type = "wagi" }\n'
        '[component.hi]\nsource = "hi.wasm"\n[component.hi.build]\n'
        'command = "python -m ziglang cc -target wasm32-wasi -O1 hi.c -o hi.wasm"\n'
        'watch = ["*.c"]\n'
    )

    assert run_wagi("build", "-c", str(app / "spin.toml"), timeout=300).returncode == 0
    server = serve("-c", str(app / "spin.toml"), "--watch")
    assert get(server, "/hi").text == "C v1"
    write(app / "hi.c", (app / "hi.c").read_text().replace("C v1", "C v2"))
    wait_for_log(server, "reloaded to version 2", timeout=120)
    assert get(server, "/hi").text == "C v2"


@pytest.mark.parametrize(
    ("pattern", "path", "watched"),
    [
        ("src/**/*.rs", "src/main.rs", True),  # `**` may be no folder at all
        ("src/**/*.rs", "src/a/b/lib.rs", True),
        ("src/**/*.rs", "srcs/main.rs", False),
        ("*.c", "app.c", True),
        ("*.c", "lib/app.c", False),  # `*` stays within one name
        ("lib/?.[ch]", "lib/a.h", True),
        ("lib/?.[!ch]", "lib/a.h", False),
        ("assets/**", "assets/css/site.css", True),
        ("greeting.txt", "greeting.txt", True),
        ("greeting.txt", "../greeting.txt", False),  # outside the workdir
        ("../shared/*.h", "../shared/common.h", True),  # unless the pattern goes there
        ("lib/[!]]x", "lib/ax", True),  # brackets as fnmatch reads them, never an error
        ("[^a].c", "b.c", False),  # `^` is no negation in a glob
    ],
)
def test_watch_patterns_match_as_glob_finds_files(tmp_path, pattern, path, watched):
    build = Build(commands=("make",), workdir=tmp_path / "app", watch=(pattern,))
    assert watches(build, tmp_path / "app" / path) is watched


def test_a_file_under_a_trailing_double_star_makes_the_module_stale(tmp_path):
    (tmp_path / "spin.toml").write_text(
        'spin_manifest_version = 2\n[application]\nname = "a"\n'
        '[[trigger.http]]\nroute = "/"\ncomponent = "a"\nexecutor = { type = "wagi" }\n'
        '[component.a]\nsource = "a.wasm"\n'
        '[component.a.build]\ncommand = "true"\nwatch = ["assets/**"]\n'
    )
    (tmp_path / "a.wasm").write_bytes(b"\0asm\1\0\0\0")
    changed = tmp_path / "assets" / "css" / "site.css"
    changed.parent.mkdir(parents=True)
    changed.write_text("body {}")
    os.utime(tmp_path / "a.wasm", (1, 1))  # built long before the change
    component = load_manifest(tmp_path / "spin.toml").components["a"]
    assert not is_up_to_date(component)
    assert watches(component.build, changed)  # and the watcher agrees


def test_sighup_reloads_without_watching(serve, app):
    server = serve("-c", str(app / "spin.toml"))
    (app / "one.wat").write_text(says("one after hup"))
    server.process.send_signal(signal.SIGHUP)
    wait_for_log(server, "reloaded to version 2 in")
    assert "(SIGHUP)" in server.log()
    assert get(server, "/one").text == "one after hup"


def test_env_file_changes_reload(serve, app, example_apps):
    env_wasm = (ROOT / "apps/env/env.wasm").read_bytes()
    (app / "env.wasm").write_bytes(env_wasm)
    (app / "vars.env").write_text("MOOD=calm\n")
    (app / "spin.toml").write_text(
        'spin_manifest_version = 2\n[application]\nname = "e"\n'
        '[[trigger.http]]\nroute = "/env"\ncomponent = "env"\nexecutor = { type = "wagi" }\n'
        '[component.env]\nsource = "env.wasm"\n'
    )
    server = serve("-c", str(app / "spin.toml"), "--watch", "--env-file", str(app / "vars.env"))
    assert "MOOD=calm\n" in get(server, "/env").text
    write(app / "vars.env", "MOOD=excited\n")
    wait_for_log(server, "reloaded to version 2")
    assert "MOOD=excited\n" in get(server, "/env").text


def test_workers_reload_together(serve, app):
    server = serve("-c", str(app / "spin.toml"), "--watch", "--workers", "2")
    wait_for_log(server, "wagi: ready", count=2)
    write(app / "one.wat", says("one v2"))
    wait_for_log(server, "reloaded to version 2", count=2)  # both workers
    assert "telling the workers to reload" in server.log()
    assert {get(server, "/one").text for _ in range(20)} == {"one v2"}


def test_a_worker_replaced_after_a_failed_reload_serves_the_last_good_version(serve, app):
    # The replacement used to read the broken file, exit, and after three tries the
    # supervisor stopped every worker.
    server = serve("-c", str(app / "spin.toml"), "--workers", "2")
    wait_for_log(server, "wagi: ready", count=2)
    (app / "one.wat").write_text(says("one v2"))
    server.process.send_signal(signal.SIGHUP)
    wait_for_log(server, "reloaded to version 2", count=2)
    write(app / "spin.toml", spin_toml({"/one": "one"}) + "[[[\n")
    server.process.send_signal(signal.SIGHUP)
    line = wait_for_log(server, "reload failed (SIGHUP)").splitlines()[-1]
    assert "the workers keep the running version" in line
    assert "reloaded to version 3" not in server.log()  # the workers were not told

    os.kill(workers_of(server)[0], signal.SIGKILL)
    wait_for_log(server, "wagi: ready", count=3)  # the replacement
    assert {get(server, "/one").text for _ in range(20)} == {"one v2"}
    assert get(server, "/two").text == "two v1"  # the route the broken file dropped
    assert server.process.poll() is None
    assert "keep exiting" not in server.log()


def test_a_worker_that_cannot_start_while_others_serve_is_retried_not_fatal(serve, app):
    # A broken module on disk: the manifest the replacement gets is good, its module not.
    server = serve("-c", str(app / "spin.toml"), "--workers", "2")
    wait_for_log(server, "wagi: ready", count=2)
    time.sleep(Supervisor.QUICK_DEATH)  # the survivor has served for a while
    (app / "one.wat").write_text("(module (func")
    server.process.send_signal(signal.SIGHUP)
    wait_for_log(server, "reload failed (SIGHUP)")

    os.kill(workers_of(server)[0], signal.SIGKILL)
    wait_for_log(server, "could not start (status 1); the other workers serve")
    # Its socket is closed meanwhile, and each new try's listens only once it serves:
    # every connection goes to the worker that serves, through two more tries too (each
    # reset the connections that came to it while it loaded).
    answers, started = set(), time.monotonic()
    while server.log().count("could not start (status 1)") < 3:
        answers.add(get(server, "/one").text)
        assert time.monotonic() - started < 30, "the worker was not tried again"
    assert answers == {"one v1"}

    (app / "one.wat").write_text(says("one v2"))
    server.process.send_signal(signal.SIGHUP)  # a good reload: the worker is tried again
    wait_for_log(server, "wagi: ready", count=3)
    wait_until(lambda: {get(server, "/one").text for _ in range(20)} == {"one v2"}, "both on v2")
    assert len(workers_of(server)) == 2
    assert "keep exiting" not in server.log()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_while_the_gateway_starts_reloads_it_once_up(tmp_path, app, workers):
    server = Server(["-c", str(app / "spin.toml"), "--workers", workers,
                     "--cache-dir", str(tmp_path / "c")], ROOT, tmp_path / "log")  # fmt: skip
    try:
        wait_for_log(server, "wagi:   two")  # before the app (or its workers) is up
        (app / "one.wat").write_text(says("one after hup"))
        server.process.send_signal(signal.SIGHUP)  # with workers: passed on as they start
        server.wait_ready()
        # Each worker either reloads once it is up, or loaded the new module to begin with.
        wait_until(
            lambda: {get(server, "/one").text for _ in range(20)} == {"one after hup"},
            "a worker still serves the module from before the SIGHUP",
        )
        assert server.process.poll() is None
        assert "exited with status" not in server.log()
    finally:
        server.stop()


def test_no_request_fails_while_the_app_reloads_again_and_again(serve, app):
    """A client keeps asking while the app is reloaded many times: nothing may fail, and
    every answer comes from one of the two versions."""
    versions = {"one version A", "one version B"}
    (app / "one.wat").write_text(says("one version A"))
    server = serve("-c", str(app / "spin.toml"), "--watch", "--watch-debounce", "0.02")
    stop = threading.Event()
    answers: list[tuple[int, str]] = []

    def keep_asking() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while not stop.is_set():
                try:
                    response = client.get("/one")
                    answers.append((response.status_code, response.text))
                except httpx.HTTPError as error:
                    answers.append((0, repr(error)))

    clients = [threading.Thread(target=keep_asking) for _ in range(4)]
    for client in clients:
        client.start()
    reloads = 12
    for n in range(reloads):
        write(app / "one.wat", says("one version B" if n % 2 == 0 else "one version A"))
        wait_for_log(server, f"reloaded to version {n + 2}")
    stop.set()
    for client in clients:
        client.join()
    failures = [answer for answer in answers if answer[0] != 200 or answer[1] not in versions]
    assert failures == []
    assert len(answers) > 100
    seen = {text for _, text in answers}
    assert seen == versions  # both versions were really served
    assert "Traceback" not in server.log()


def test_old_versions_are_released_once_their_requests_end(tmp_path):
    """A retired version stays open while a request uses it, then closes."""
    sys.path.insert(0, str(Path(__file__).parent))
    from gateway.config import Settings
    from gateway.engine import Engine
    from gateway.loader import load_app
    from gateway.manifest import load_manifest

    (tmp_path / "one.wat").write_text(says("x"))
    (tmp_path / "spin.toml").write_text(spin_toml({"/one": "one"}, 'files = ["one.wat"]\n'))
    settings = Settings(manifest=tmp_path / "spin.toml", cache_dir=tmp_path / "cache")
    engine = Engine(settings.cache_dir)
    old = load_app(load_manifest(settings.manifest), settings, engine)
    staged = Path(old.components["one"].mounts[0][0])
    old.requests += 1  # a request in flight
    new = load_app(load_manifest(settings.manifest), settings, engine, known=old.modules())
    assert new.components["one"].module.how == "reused"
    old.retire()
    assert staged.exists()  # still in use
    old.request_done()
    assert not staged.exists()  # released with its last request
    new.close()
