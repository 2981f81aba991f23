"""Measure what the device install weighs: a fresh venv with only the runtime dependencies.

Usage: python3 bench/device_install_size.py [--keep DIR]
Installs `pip install .` (no extras) into a temporary venv, checks TensorFlow is absent, and
prints the size of site-packages per distribution, largest first.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the venv here and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="edge-device-venv-"))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        pip = [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, str(REPO)], check=True)
        site = next((root / "lib").glob("python3*/site-packages"))
        groups: dict[str, int] = {}
        for entry in site.iterdir():
            if entry.name.endswith((".dist-info", ".pth")) or entry.name == "__pycache__":
                continue
            size = folder_size(entry) if entry.is_dir() else entry.stat().st_size
            groups[entry.name] = groups.get(entry.name, 0) + size
        total = folder_size(site)
        has_tf = (site / "tensorflow").exists()
        print(f"device install (pip install . into a fresh venv, Python {sys.version.split()[0]}):")
        for name, size in sorted(groups.items(), key=lambda item: -item[1])[:15]:
            print(f"  {size / 2**20:8.1f} MiB  {name}")
        print(f"  total site-packages: {total / 2**20:.1f} MiB; TensorFlow present: {has_tf}")
        return 1 if has_tf else 0
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
