"""Dependencies point one way (CONTRIBUTING.md "Layers"), read from the source with `ast`.

`launch -> (configs, data_pipelines, avjax)`, `data_pipelines -> avjax` (audio / video ops,
not models or converters), and inside `avjax` nothing below the trainer imports
`avjax.train`: runs come back through `avjax.runs.load_run`, models are built by each
family's `make_model`. Imports inside functions count for the layer rules (they run
sooner or later); the cycle check follows the imports a module runs when it is imported.
"""

import ast
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
BELOW_TRAINER = ("models", "audio", "metrics", "convert", "nn", "losses", "evals")


def module_name(path: pathlib.Path) -> str:
    """`avjax/models/__init__.py` -> `avjax.models`; `avjax/runs.py` -> `avjax.runs`."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_files(package: str) -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted((REPO / package).rglob("*.py"))}


AVJAX = package_files("avjax")
PIPELINES = package_files("data_pipelines")


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: pathlib.Path, top_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, module) for each import in the file.

    `import a.b` gives `a.b`. `from x import y` gives `x.y` when that is a module of the
    repository (a submodule import), else `x`. Relative imports are resolved. With
    `top_level_only`, only what runs at import time: not function bodies, nor
    `if TYPE_CHECKING:` blocks.
    """
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if _is_module(sub) else base))
        if top_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return
        if top_level_only and isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def _is_module(name: str) -> bool:
    rel = REPO.joinpath(*name.split("."))
    return rel.with_suffix(".py").is_file() or (rel / "__init__.py").is_file()


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def offences(files: dict[str, pathlib.Path], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in files.values():
        for line, target in imports(path):
            if any(_under(target, f) for f in forbidden):
                bad.append(f"{path.relative_to(REPO)}:{line}: imports {target}")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def import_graph(files: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    """Module -> the modules of `files` it imports when imported."""
    return {
        name: {t for _, t in imports(path, top_level_only=True) if t in files and t != name}
        for name, path in files.items()
    }


# --- tests ------------------------------------------------------------------------------------


def test_nothing_below_the_trainer_imports_it():
    for package in BELOW_TRAINER:
        assert f"avjax.{package}" in AVJAX, package  # the scan sees the package
    files = {n: p for n, p in AVJAX.items() if any(_under(n, f"avjax.{b}") for b in BELOW_TRAINER)}
    assert not offences(files, ("avjax.train",)), "\n".join(offences(files, ("avjax.train",)))


def test_the_library_imports_no_launcher_config_or_pipeline():
    bad = offences(AVJAX, ("launch", "configs", "data_pipelines"))
    assert not bad, "\n".join(bad)


def test_data_pipelines_import_no_models_converters_trainer_or_launchers():
    assert PIPELINES
    bad = offences(PIPELINES, ("avjax.models", "avjax.convert", "avjax.train", "launch", "configs"))
    assert not bad, "\n".join(bad)


def test_no_import_cycle_in_the_library_or_the_pipelines():
    for files, min_edges in ((AVJAX, 50), (PIPELINES, 10)):
        graph = import_graph(files)
        assert sum(map(len, graph.values())) > min_edges  # the edges were found
        found = cycles(graph)
        assert not found, "\n".join(" <-> ".join(c) for c in found)


def test_pipelines_import_base_not_the_dispatcher():
    graph = import_graph(PIPELINES)
    users = sorted(name for name, deps in graph.items() if "data_pipelines.inputs" in deps)
    assert users == [], f"only launchers and tests import data_pipelines.inputs: {users}"
    for name in ("spec_inputs", "codes_inputs", "wave_inputs", "video_inputs"):
        assert "data_pipelines.base" in graph[f"data_pipelines.{name}"], name


def test_launch_holds_launchers_only():
    helpers = {"__init__.py", "common.py"}
    missing = []
    for path in sorted((REPO / "launch").glob("*.py")):
        if path.name in helpers:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        if not any(
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__"
            for node in tree.body
        ):
            missing.append(path.name)
    assert not missing, f"launch/ modules that are not launchers (no __main__ block): {missing}"


def test_the_scans_see_what_they_look_for(tmp_path, monkeypatch):
    """The import reader resolves submodules and relative imports; the cycle finder works."""
    pkg = tmp_path / "avjax" / "models"
    pkg.mkdir(parents=True)
    (tmp_path / "avjax" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text(
        "import avjax.train.loop\nfrom avjax.models import b\nfrom .b import f\n"
        "def g():\n    import launch.common\n"
    )
    (pkg / "b.py").write_text("from avjax.models.a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    path = pkg / "a.py"
    assert imports(path) == [
        (1, "avjax.train.loop"),
        (2, "avjax.models.b"),
        (3, "avjax.models.b"),
        (5, "launch.common"),
    ]
    assert imports(path, top_level_only=True)[-1] == (3, "avjax.models.b")
    assert imports(pkg / "__init__.py") == [(1, "avjax.models.a")]
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
