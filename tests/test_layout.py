"""The shape of the code: no import cycles in src/ (between modules, and between the job folders of
src/tools), dependencies that point one way, and benchmarks that do not lean on the tests.

Imports are read from the source (every ``import`` and ``from ... import``, also those inside
functions), so a cycle hidden in a function body counts.
"""
import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / 'src'
# What each part of src/ may import from the others (itself always).
ALLOWED = {
    'src.tools.base': set(),
    'src.variants': set(),
    'src.repvgg': {'src.tools.base', 'src.variants'},
    'src.ema': set(),
    'src.augment': {'src.tools.base'},
    'src.config': {'src.variants', 'src.tools.base'},
    'src.image_check': {'src.tools.base'},
    'src.dataset': {'src.tools.base', 'src.augment', 'src.image_check'},
    'src.tools.image_folders': set(),  # the one writer of image folders: demo data, tests, benchmarks
    'src.tools.demo_data': {'src.tools.base', 'src.tools.image_folders'},
    'src.tools.checkpoints': {'src.tools.base', 'src.variants', 'src.config', 'src.dataset'},  # model_card.py
    'src.tools.conversion': {'src.tools.base', 'src.tools.checkpoints', 'src.repvgg'},
    'src.tools.deployment': {'src.tools.base', 'src.tools.checkpoints', 'src.repvgg', 'src.dataset', 'src.image_check',
                             'src.config'},
    'src.tools.training': {'src.tools.base', 'src.tools.checkpoints', 'src.tools.deployment', 'src.repvgg',
                           'src.dataset', 'src.image_check', 'src.config', 'src.ema', 'src.augment'},
}


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def modules():
    return {module_name(path): path for path in SRC.rglob('*.py')}


def imported(path, known):
    """The src modules that ``path`` imports, resolved to modules (``from pkg import module`` too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f'{node.module}.{alias.name}' for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            module = name
            while module and module not in known:
                module = module.rpartition('.')[0]
            if module.startswith('src'):
                found.add(module)
    return found


def part_of(module):
    """The part of src/ a module belongs to (a key of ALLOWED)."""
    return max((part for part in ALLOWED if module == part or module.startswith(part + '.')), key=len,
               default=module)


def find_cycle(graph):
    """One cycle of ``graph`` ({node: {node}}) as a list, or None."""
    state = {}

    def visit(node, path):
        state[node] = 'open'
        for other in sorted(graph.get(node, ())):
            if state.get(other) == 'open':
                return [*path[path.index(other):], other]
            if other not in state:
                cycle = visit(other, [*path, other])
                if cycle:
                    return cycle
        state[node] = 'done'
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


@pytest.fixture(scope='module', name='graph')
def fixture_graph():
    known = modules()
    return {name: imported(path, known) - {name} for name, path in known.items()}


def test_no_import_cycle_between_modules(graph):
    assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))


def test_no_import_cycle_between_parts_and_dependencies_point_one_way(graph):
    parts = defaultdict(set)
    for module, targets in graph.items():
        for target in targets:
            if part_of(target) != part_of(module):
                parts[part_of(module)].add(part_of(target))
    assert find_cycle(parts) is None, ' -> '.join(find_cycle(parts))
    for part, targets in parts.items():
        assert part in ALLOWED, f'{part} is not in the layout; add it to ALLOWED with its dependencies'
        assert targets <= ALLOWED[part], f'{part} imports {sorted(targets - ALLOWED[part])}'


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}}) is None


def test_tools_folders_show_the_jobs():
    folders = sorted(path.name for path in (SRC / 'tools').iterdir() if path.is_dir() and path.name != '__pycache__')
    assert folders == ['base', 'checkpoints', 'conversion', 'deployment', 'training']


def test_benchmarks_do_not_import_tests():
    known = {'tests': None}
    for path in (ROOT / 'benchmarks').glob('*.py'):
        tree = ast.parse(path.read_text(encoding='utf-8'))
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
            assert not any(name.split('.')[0] in known for name in names), f'{path.name} imports {names}'
