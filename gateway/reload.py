"""Hot reload: watch what an app is made of, rebuild what needs it, and reload in place.

`wagi serve --watch` watches the manifest, every module, every mounted file or folder,
the `--env-file`, and the files each component's `build.watch` globs name. Changes that
come together (within the debounce) make one reload: the components whose build inputs
changed are rebuilt first, then the gateway loads the next version beside the running
one and switches to it only once it is complete (see `Gateway.reload`). A change that
breaks anything leaves the running version serving, and the log says why.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import anyio
import watchfiles

from .build import BuildError, BuildStopped, build_component, watches
from .config import Settings
from .manifest import Component, Manifest, ManifestError, load_manifest

log = logging.getLogger("wagi.reload")
T = TypeVar("T")

# Stop waiting for the file watcher's thread this often, so shutdown is quick; each time,
# folders that did not exist are looked for again.
_WATCHER_TIMEOUT_MS = 500
# After watching failed, wait this long before watching again, doubling up to the most
# while it keeps failing (an error that stays must not fill the log).
_RETRY_SECONDS = 1.0
_RETRY_MOST_SECONDS = 30.0
_IGNORED = watchfiles.DefaultFilter()


class Watched:
    """What a manifest's app is made of, to tell which changes matter."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.manifest: Manifest | None = None
        self.refresh()

    def refresh(self) -> None:
        """Read the manifest again (a broken one keeps the last good view)."""
        with contextlib.suppress(ManifestError):
            self.manifest = load_manifest(self.settings.manifest, check_sources=False)

    def roots(self) -> dict[Path, bool]:
        """Folders to watch (the app folder, and what lies outside it), each with whether
        it exists: one that does not cannot be watched, only looked for again."""
        folder = self.settings.manifest.parent.resolve()
        roots = {folder}
        for path in self._files() | self._folders():
            if folder != path and folder not in path.parents:
                roots.add(path if path.is_dir() else path.parent)
        return {root: root.exists() for root in roots}

    def matters(self, path: Path) -> bool:
        """Whether a change at `path` can change the app."""
        path = path.resolve()
        if self.manifest is None:  # no good manifest yet: anything in its folder may fix it
            return self.settings.manifest.parent.resolve() in path.parents
        return (
            path in self._files()
            or any(folder in path.parents for folder in self._folders())
            or bool(self.to_rebuild([path]))
        )

    def to_rebuild(self, paths: Sequence[Path]) -> list[Component]:
        """Components whose `build.watch` globs match one of the changed paths."""
        if self.manifest is None:
            return []
        chosen = []
        for component in self.manifest.components.values():
            build = component.build
            if build is None or not build.watch:
                continue
            if any(watches(build, path) for path in paths):
                chosen.append(component)
        return chosen

    def _files(self) -> set[Path]:
        files = {self.settings.manifest.resolve()}
        if self.settings.env_file is not None:
            files.add(self.settings.env_file.resolve())
        if self.manifest is not None:
            for component in self.manifest.components.values():
                files.add(component.source)
                files.update(item.host_path for item in component.files)
        return files

    def _folders(self) -> set[Path]:
        if self.manifest is None:
            return set()
        return {mount.host_path for c in self.manifest.components.values() for mount in c.mounts}


class Reloader:
    """Watches an app's files and reloads it when they change."""

    def __init__(
        self,
        settings: Settings,
        reload: Callable[[str, Sequence[str]], Awaitable[bool]],
        current_digests: Callable[[], set[str]],
    ) -> None:
        """`reload(reason, rebuilt)` loads the next version; `current_digests()` tells
        which module contents the running version already has."""
        self.settings = settings
        self._reload = reload
        self._current_digests = current_digests
        self.watched = Watched(settings)
        self._stop = anyio.Event()
        # The digest of each module file the last build wrote, read just before the reload
        # that took it over: that version loaded those bytes from there, or newer ones that
        # the watcher reports as a change of their own. Empty unless that reload succeeded.
        self._built: dict[Path, str | None] = {}
        self._roots: dict[Path, bool] = {}  # as the last round found them
        # Folders that came into being, whose content the app has not seen yet.
        self._appeared: set[Path] = set()

    async def run(self) -> None:
        """Watch until cancelled; the set of watched folders follows the manifest.

        An error never ends the watching: it is logged, and watching starts again.
        """
        delay = _RETRY_SECONDS
        try:
            while True:
                try:
                    await self._watch_round()
                    delay = _RETRY_SECONDS
                except Exception:
                    log.exception("watching for changes failed; watching again in %g s", delay)
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, _RETRY_MOST_SECONDS)
        finally:
            self._stop.set()

    async def _watch_round(self) -> None:
        """Watch the folders that exist, until the set of folders (or their existence) changes."""
        roots = self.watched.roots()
        self._appeared |= {
            root for root, exists in roots.items() if exists and self._roots.get(root) is False
        }
        self._roots = roots
        present = sorted(root for root, exists in roots.items() if exists)
        missing = sorted(root for root, exists in roots.items() if not exists)
        log.info("watching %s", ", ".join(str(root) for root in present))
        if missing:
            log.info("waiting for %s to exist", ", ".join(str(root) for root in missing))
        async for changes in watchfiles.awatch(
            *present,
            watch_filter=self._filter,
            step=self._step_ms(),
            stop_event=self._stop,
            rust_timeout=_WATCHER_TIMEOUT_MS,
            yield_on_timeout=True,  # to look for the missing folders again
        ):
            # The folders that appeared are handled once their watcher runs: nothing
            # written to them is then missed.
            paths = {Path(path) for _, path in changes} | self._appeared
            self._appeared = set()
            if paths:
                await self._changed_or_log(sorted(paths))
            if self.watched.roots() != roots:
                return  # watch the new set of folders

    async def _changed_or_log(self, paths: Sequence[Path]) -> None:
        try:
            await self.changed(paths)
        except Exception:  # the next change may well fix it: keep watching
            self._built = {}  # what is on disk may not be what runs
            log.exception("handling the changes failed; the running version stays live")

    def _step_ms(self) -> int:
        return max(1, round(self.settings.watch_debounce * 1000))

    def _filter(self, change: watchfiles.Change, path: str) -> bool:
        return _IGNORED(change, path) and self.watched.matters(Path(path))

    async def changed(self, paths: Sequence[Path]) -> None:
        """Rebuild what the changes call for, then reload (unless nothing really changed)."""
        await asyncio.to_thread(self.watched.refresh)  # reading may walk mounted folders
        if self._only_built_modules(paths):
            return  # the module files a build just wrote, already loaded
        self._built = {}
        rebuilt = []
        for component in self.watched.to_rebuild(paths):
            if not await _build_until_cancelled(component):
                return
            rebuilt.append(component)
        written = {c.source.resolve(): _digest(c.source) for c in rebuilt}
        reason = f"changed: {_describe(paths, self.settings.manifest.parent)}"
        if await self._reload(reason, [component.id for component in rebuilt]):
            self._built = written

    def _only_built_modules(self, paths: Sequence[Path]) -> bool:
        """Whether the changes are the module files the last build wrote, each with the
        bytes the running version loaded from it (another module's bytes are a change)."""
        if not paths:
            return False
        running = self._current_digests()
        for path in paths:
            digest = _digest(path)
            if digest is None or digest != self._built.get(path.resolve()) or digest not in running:
                return False
        return True


async def _build_until_cancelled(component: Component) -> bool:
    """Build a component (see `_build`); cancelled, as the gateway stops, kill the build."""
    stop = threading.Event()
    try:
        # Not in the loop's executor: the interpreter waits for its threads as it exits,
        # and a supervisor's watcher is never cancelled (its build is stopped at exit).
        return await _in_daemon_thread(lambda: _build(component, stop))
    finally:
        stop.set()  # cancelled: the build is killed rather than waited for


async def _in_daemon_thread(function: Callable[[], T]) -> T:
    """`function()`, run in a thread of its own that does not hold up the process's exit."""
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if done.set_running_or_notify_cancel():
            try:
                done.set_result(function())
            except BaseException as error:  # for the awaiting task to raise
                done.set_exception(error)

    threading.Thread(target=run, daemon=True).start()
    return await asyncio.wrap_future(done)


def _build(component: Component, stop: threading.Event) -> bool:
    """Run a component's build; on failure log its output and say the old version stays."""
    try:
        build_component(component, echo=log.debug, capture=True, stop=stop)
    except BuildError as error:
        log.error("%s; the running version stays live. Its output:\n%s", error, error.output)
        return False
    except BuildStopped:
        log.info("stopped building %s: the gateway is stopping", component.id)
        return False
    log.info("rebuilt %s", component.id)
    return True


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _describe(paths: Sequence[Path], folder: Path) -> str:
    names = []
    for path in paths[:5]:
        try:
            names.append(str(path.resolve().relative_to(folder.resolve())))
        except ValueError:
            names.append(str(path))
    more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
    return ", ".join(names) + more
