"""What a guest sees of the host filesystem: read-only directory mounts.

WASI can only grant directories, so the single files a Spin `files` pattern selects are
staged first: hard-linked (or copied, across filesystems) into a private folder that is
mounted at `/`. Only the selected files are in it, so excluded files stay invisible.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .manifest import Component


class StagedFiles:
    """A private folder holding a component's individual files; removed by `close`."""

    def __init__(self, component: Component) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=f"wagi-{component.id}-"))
        try:
            for item in component.files:
                self._stage(item.host_path, self.folder / item.guest_path.lstrip("/"))
        except OSError:
            self.close()
            raise

    @staticmethod
    def _stage(source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:  # another filesystem, or links not allowed: copy
            shutil.copyfile(source, target)

    def close(self) -> None:
        """Delete the staging folder."""
        shutil.rmtree(self.folder, ignore_errors=True)


def guest_mounts(component: Component, staged: StagedFiles | None) -> list[tuple[str, str]]:
    """(host directory, guest path) pairs for a component, staged files first at `/`."""
    mounts = [(str(staged.folder), "/")] if staged is not None else []
    mounts.extend((str(mount.host_path), mount.guest_path) for mount in component.mounts)
    return mounts
