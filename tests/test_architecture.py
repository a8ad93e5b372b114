"""Dependencies run one way: front doors -> service -> ingest / search / models -> store -> db -> shared leaves.

Every import in src/pixsearch (module level or inside functions) is checked against the layers of the README's
Architecture section.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pixsearch"
LAYERS = {
    "cli": 5, "api": 5, "client": 5, "web": 4,
    "service": 3,
    "ingest": 2, "search": 2, "models": 2,
    "sources": 1.5,
    "store": 1,
    "db": 0.5,
    "imaging": 0, "config": 0, "samples": 0, "file_errors": 0,
    "limits": -1,
}
# Siblings that may use one another: search and ingest use the embedder protocol of models.
ALLOWED_SIBLINGS = {("search", "models"), ("ingest", "models")}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "pixsearch" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    package = "pixsearch." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.append((node.lineno, f"{base}.{node.module}" if node.module else base))
            elif node.module:
                found.append((node.lineno, node.module))
    return found


def test_no_module_imports_a_layer_above_it():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        own = relative.parts[0].removesuffix(".py")
        if own not in LAYERS:
            continue
        for line, module in _imports(path):
            target = _layer(module)
            if target is None or target == own or target not in LAYERS:
                continue
            if LAYERS[target] > LAYERS[own] or (LAYERS[target] == LAYERS[own] and (own, target) not in
                                                 ALLOWED_SIBLINGS | {("cli", "api"), ("api", "web")}):
                violations.append(f"{relative}:{line} ({own}) imports {module} ({target})")
    assert not violations, "\n".join(violations)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_graph() -> dict[str, set[str]]:
    """Every module of src/pixsearch -> the pixsearch modules it imports (module level, inside functions, and under
    TYPE_CHECKING alike: a cycle for the type checker is a cycle for the reader too). `from package import name`
    counts as importing package.name when that is a module."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for _, imported in _imports(path):
            targets.add(imported)
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycle_among_the_files_of_a_package():
    """Inside each package, imports between its files run one way (a package's __init__, which re-exports, is left
    out): e.g. service/'s feature modules import the index core, and only the facade imports them."""
    graph = _module_graph()
    cycles = []
    for package in {name.rsplit(".", 1)[0] for name in graph if name.count(".") >= 2}:
        members = {name for name in graph if name.rsplit(".", 1)[0] == package and name != package}
        edges = {name: graph[name] & members for name in members}
        visiting: list[str] = []
        done: set[str] = set()

        def visit(node: str) -> None:
            if node in done:
                return
            if node in visiting:
                cycles.append(" -> ".join(visiting[visiting.index(node):] + [node]))
                return
            visiting.append(node)
            for target in sorted(edges[node]):
                visit(target)
            visiting.pop()
            done.add(node)

        for member in sorted(members):
            visit(member)
    assert not cycles, "\n".join(sorted(cycles))


def test_images_are_decoded_and_embedded_in_batches_only_by_the_image_stage():
    """Ingest, regions and reindex share one read -> decode -> prepare -> embed stage (ingest/stage.py) with one
    set of error rules and bounds: no other module starts a thread pool or embeds images, except search embedding
    its one query image and models/ warming a model up."""
    allowed_embed = {Path("ingest/stage.py"), Path("search/context.py")}
    # models/hosted.py sends a hosted model's HTTP requests a few at a time: waiting on a service, not image work.
    allowed_pools = {Path("ingest/stage.py"), Path("models/hosted.py")}
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = (node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                    ) if isinstance(node, ast.Call) else None
            if name in ("ThreadPoolExecutor", "ProcessPoolExecutor") and relative not in allowed_pools:
                violations.append(f"{relative}:{node.lineno} starts a {name}")
            if name == "embed_images" and relative not in allowed_embed and relative.parts[0] != "models":
                violations.append(f"{relative}:{node.lineno} embeds images outside the image stage")
    assert not violations, "\n".join(violations)



# Everything outside store/ and db/ reaches the database only through store/ (IndexStore and its readers) and db/'s
# error types.
CONNECTION_FREE = ("search", "api", "cli", "web", "client", "service", "ingest", "models", "sources", "imaging", "config",
                   "limits", "samples", "file_errors")
DRIVER_CALLS = ("connection", "side_connection", "read_snapshot")


def _driver_uses(path: Path) -> list[tuple[int, str]]:
    """Imports of psycopg (or psycopg_pool), and calls of .connection(), .side_connection() or read_snapshot()."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names
                      if a.name.split(".")[0].startswith("psycopg")]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0].startswith("psycopg"):
                found.append((node.lineno, f"from {node.module} import ..."))
            found += [(node.lineno, f"import {a.name}") for a in node.names if a.name in DRIVER_CALLS]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name in DRIVER_CALLS:
                found.append((node.lineno, f"{name}()"))
    return found


def test_no_connection_or_driver_outside_the_store():
    checked, violations = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0].removesuffix(".py") not in CONNECTION_FREE:
            continue
        checked.append(relative)
        violations += [f"{relative}:{line} {what}" for line, what in _driver_uses(path)]
    assert len({p.parts[0].removesuffix(".py") for p in checked}) == len(CONNECTION_FREE), checked
    assert not violations, "only store/ and db/ may use the driver or connections:\n" + "\n".join(violations)
