"""The data pipelines' import graph: no circles, and no models or converters (read with `ast`).

`data_pipelines` may use the library's audio/video ops; work that runs a model (codes of a
codebook, visual features) is a callable the pipelines receive (CONTRIBUTING.md, Layers).
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "data_pipelines"
FORBIDDEN = ("avjax.models", "avjax.convert", "avjax.train", "launch", "configs")


def _imports(path: pathlib.Path) -> set[str]:
    """Every module `path` imports, at top level or inside functions (absolute names)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _graph() -> dict[str, set[str]]:
    modules = {p.stem: _imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {
        name: {i.split(".")[1] for i in imps if i.startswith("data_pipelines.")} & set(modules)
        for name, imps in modules.items()
    }


def test_data_pipelines_never_import_models_converters_or_launchers():
    bad = [
        f"{p.name}: {name}"
        for p in sorted(PACKAGE.glob("*.py"))
        for name in sorted(_imports(p))
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    ]
    assert not bad, bad


def test_no_import_circle_among_data_pipelines():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path, node, dep]))
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_pipelines_import_base_not_the_dispatcher():
    graph = _graph()
    users = sorted(name for name, deps in graph.items() if "inputs" in deps)
    assert users == [], f"only launchers and tests import data_pipelines.inputs: {users}"
    for name in ("spec_inputs", "codes_inputs", "wave_inputs", "video_inputs"):
        assert "base" in graph[name], name
