"""Sample photos for the demo and the tests, taken from files that installed packages ship (no downloads)."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

# package -> (folder inside the package, {file in the package: name to write})
_SOURCES: dict[str, tuple[str, dict[str, str]]] = {
    "skimage": (
        "data",
        {
            "astronaut.png": "astronaut.png",
            "chelsea.png": "cat-chelsea.png",
            "coffee.png": "coffee.png",
            "rocket.jpg": "rocket.jpg",
            "motorcycle_left.png": "motorcycle.png",
            "hubble_deep_field.jpg": "hubble-deep-field.jpg",
            "camera.png": "cameraman.png",
            "coins.png": "coins.png",
            "moon.png": "moon.png",
            "brick.png": "brick-wall.png",
        },
    ),
    "sklearn": ("datasets/images", {"china.jpg": "china-temple.jpg", "flower.jpg": "flower.jpg"}),
    # foolbox ships 20 labelled ImageNet validation photos: imagenet_<nn>_<class index>.jpg
    "foolbox": ("data", {f"imagenet_{i:02d}_{label}.jpg": f"imagenet-{i:02d}-{label}.jpg" for i, label in enumerate(
        [243, 559, 438, 990, 949, 853, 609, 609, 915, 455, 541, 630, 741, 471, 129, 99, 251, 22, 317, 305]
    )}),
}

# The demo keeps each package's photos in a folder of their own, so folder filters and facets have something to show.
GROUP_FOLDERS = {"skimage": "scikit-image", "sklearn": "scikit-learn", "foolbox": "imagenet"}

DEMO_QUERIES = ("a cat", "a cup of coffee", "a rocket launch", "strawberries", "a dog with black spots")


def package_dir(package: str) -> Path | None:
    """Where an installed package lives, found without importing it (foolbox's import pulls heavy dependencies)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sample_files(grouped: bool = False) -> dict[str, Path]:
    """Name to write (`group/name` when grouped) -> source file, for every sample whose package is installed."""
    files: dict[str, Path] = {}
    for package, (subdir, names) in _SOURCES.items():
        root = package_dir(package)
        if root is None:
            continue
        for source, target in names.items():
            path = root / subdir / source
            if path.is_file():
                files[f"{GROUP_FOLDERS[package]}/{target}" if grouped else target] = path
    return files


def write_samples(folder: Path, grouped: bool = False) -> list[Path]:
    """Copy the sample photos into `folder`, in a subfolder per source when `grouped` (existing copies are kept, so
    re-indexing finds nothing new)."""
    files = sample_files(grouped)
    if not files:
        raise ValueError(
            "no sample photos found: install the demo extras (pip install 'pixsearch[demo]'; foolbox with --no-deps)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for target, source in sorted(files.items()):
        dest = folder / target
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
        written.append(dest)
    return written
