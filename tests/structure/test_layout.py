"""The package's shape, checked on its source: imports run one way (no circle, counting the
imports inside functions too), and functions stay short enough to read."""

import ast
from pathlib import Path

import pybert
from helpers import TEXT_CONFIG, VOCAB, random_model

PACKAGE = Path(pybert.__file__).parent
# A longer function must say why in a comment starting with this, on the line above its def.
LONG_FUNCTION_NOTE = "# Long:"
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    """{dotted name: file} of every module of the installed package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (module level, inside
    functions, under TYPE_CHECKING alike). ``from X import y`` counts as importing X.y when that
    is a module, else X."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A list of modules that import each other in a circle, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports}; compiled extensions (pybert._C) are
    leaves."""
    found = modules()
    extensions = {f"{PACKAGE.name}.{path.name.split('.')[0]}" for path in PACKAGE.glob("*.so")}
    known = set(found) | extensions
    graph = {name: imports_of(name, path, known) for name, path in found.items()}
    return {**graph, **{name: set() for name in extensions}}


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 30 and "pybert.engine.engine" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_circles():
    """The checker itself, on graphs with and without a circle (one through a subpackage)."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"p": {"p.x"}, "p.x": {"q"}, "q": {"p"}}) is not None


def test_imports_inside_functions_count(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from .engine import Engine\n    from . import loader\n")
    known = {"pybert.engine", "pybert.loader", "pybert.m"}
    assert imports_of("pybert.m", module, known) == {"pybert.engine", "pybert.loader"}


def test_the_layers_import_downward_only():
    """The engine knows neither text nor checkpoints; checkpoint readers build no runtime
    objects; nothing below the CLI imports it."""
    graph = import_graph()

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    for module in graph:
        if module.startswith("pybert.engine"):
            assert not {m for m in reaches(module) if m.startswith(
                ("pybert.text", "pybert.checkpoint", "pybert.loader", "pybert.tokenization"))}
        if module.startswith("pybert.checkpoint"):
            assert not {m for m in reaches(module) if m in ("pybert.engine.engine",
                                                             "pybert.loader") or
                        m.startswith("pybert.text")}
        if module != "pybert.cli" and module != "pybert.__main__":
            assert "pybert.cli" not in graph[module]


def test_functions_are_short_or_say_why():
    long = []
    for name, path in modules().items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            length = node.end_lineno - node.lineno + 1
            said = first >= 2 and lines[first - 2].strip().startswith(LONG_FUNCTION_NOTE)
            if length > MAX_FUNCTION_LINES and not said:
                long.append(f"{name}.{node.name}: {length} lines")
    assert not long, long


def test_the_command_lines_help_loads_no_torch():
    """`pybert --help` answers at once (under 0.5 s): neither `import pybert` nor the command
    line's top level imports torch or the extension; a command's own arguments may."""
    import subprocess
    import sys

    code = ("import sys, contextlib, io, pybert.cli\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n"
            "        pybert.cli.main(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "assert 'serve' in out.getvalue()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy') "
            "or m == 'pybert._C'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def cmake_link_graph(text: str) -> dict[str, set[str]]:
    """{target: the project's targets it links} from a CMakeLists.txt's add_library and
    target_link_libraries calls."""
    import re

    text = re.sub(r"#[^\n]*", "", text)
    targets = set(re.findall(r"\b(?:add_library|Python_add_library)\((\w+)", text))
    graph = {t: set() for t in targets}
    for target, body in re.findall(r"target_link_libraries\((\w+)([^)]*)\)", text):
        graph.setdefault(target, set()).update(w for w in body.split() if w in targets)
    return graph


def test_the_cmake_targets_link_one_way():
    """No link circle between the build's libraries (the CPU kernels and the ATen adapter
    once used each other)."""
    cmake = Path(__file__).resolve().parents[2] / "CMakeLists.txt"
    if not cmake.exists():
        import pytest

        pytest.skip("no CMakeLists.txt beside the tests")
    graph = cmake_link_graph(cmake.read_text(encoding="utf-8"))
    assert {"pybert_cpu_kernels", "pybert_aten_adapter", "_C"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert "pybert_aten_adapter" not in graph["pybert_cpu_kernels"]
    circle = "add_library(a STATIC x)\nadd_library(b STATIC y)\n" \
             "target_link_libraries(a PRIVATE b)\ntarget_link_libraries(b PUBLIC a)\n"
    assert find_cycle(cmake_link_graph(circle)) is not None


def literal_name_lists(names: set[str], allowed_module: str) -> list[str]:
    """Tuples, lists and sets of two or more string literals, all in ``names``, written in any
    module but ``allowed_module``: a second spelling of a registry."""
    found = []
    for module, path in modules().items():
        if module == allowed_module:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 and \
                    all(isinstance(e, ast.Constant) and e.value in names for e in node.elts):
                found.append(f"{module}:{node.lineno}")
    return found


def test_one_task_registry_and_one_precision_spec():
    """Task names are listed once (pybert.tasks), precisions once (pybert.engine.precision);
    everything else reads them."""
    from pybert.engine.precision import PRECISIONS
    from pybert.tasks import TASKS

    assert not literal_name_lists(set(TASKS), "pybert.tasks")
    assert not literal_name_lists(set(PRECISIONS), "pybert.engine.precision")


def reads_of(tree: ast.AST, holder: str) -> set[str]:
    """Attributes read of ``holder`` in a module: ``holder.x`` and ``<anything>.holder.x``."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            value = node.value
            if (isinstance(value, ast.Name) and value.id == holder) or \
                    (isinstance(value, ast.Attribute) and value.attr == holder):
                found.add(node.attr)
    return found


def protocol_members(protocol) -> set[str]:
    return set(protocol.__annotations__) | {name for name in vars(protocol)
                                            if not name.startswith("_")}


def test_the_server_reads_the_model_through_its_declared_interface():
    """serve/ reads the model, its engine and its tokenizer only as serve/interface.py
    declares them; and TextModel has all of it."""
    from pybert.serve.interface import ServedEngine, ServedModel, ServedTokenizer
    from pybert.text import TextModel

    declared = {"model": ServedModel, "engine": ServedEngine, "tokenizer": ServedTokenizer}
    undeclared = []
    for path in sorted((PACKAGE / "serve").glob("*.py")):
        if path.name == "interface.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for holder, protocol in declared.items():
            undeclared += [f"{path.name}: {holder}.{name}" for name in
                           reads_of(tree, holder) - protocol_members(protocol)]
    assert not undeclared, undeclared
    model = TextModel.from_model(random_model(TEXT_CONFIG), VOCAB)
    for part, protocol in ((model, ServedModel), (model.engine, ServedEngine),
                           (model.tokenizer, ServedTokenizer)):
        optional = {"describe", "decode"} if protocol is ServedTokenizer else set()
        assert not {name for name in protocol_members(protocol) - optional
                    if not hasattr(part, name)}, protocol


def test_the_interface_check_finds_a_read_it_does_not_declare():
    tree = ast.parse("def f(self):\n    return self.model.weights, model.dim, x.engine.qux\n")
    assert reads_of(tree, "model") == {"weights", "dim"} and reads_of(tree, "engine") == {"qux"}
