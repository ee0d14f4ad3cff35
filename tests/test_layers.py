"""The layers of the code (docs/architecture.md, "Layers"), enforced: every import of every module is parsed, and
an import that runs up a layer, or that closes a cycle between modules, fails the test with its file and line.

Lowest first; a module may import its own layer and those below it:
- floor:      utils' low-level helpers (errors, progress, general, torch_utils, distributed, downloads, boxes,
              nms, metrics, plots, loss, coco_ids);
- data:       the data pipeline (datasets, augmentations, label_cache, sources, sampling, data_config, coco2yolo,
              calibration, cache_check, packed);
- models:     models/ (but export.py, a script), importing the floor only;
- training:   utils/train/, the training-run machinery, above models and data;
- scripts:    train.py, test.py, detect.py, hubconf.py, models/export.py;
- benchmarks: utils/benchmarks/, which measure the scripts.
"""
import ast
from pathlib import Path

from conftest import ROOT

FLOOR = {'utils', 'utils.errors', 'utils.progress', 'utils.general', 'utils.torch_utils', 'utils.distributed',
         'utils.downloads', 'utils.boxes', 'utils.nms', 'utils.metrics', 'utils.plots', 'utils.loss',
         'utils.coco_ids'}
DATA = {'utils.datasets', 'utils.augmentations', 'utils.label_cache', 'utils.sources', 'utils.sampling',
        'utils.data_config', 'utils.coco2yolo', 'utils.calibration', 'utils.cache_check', 'utils.packed'}
SCRIPTS = {'train', 'test', 'detect', 'hubconf', 'models.export'}
ALLOWED = {'floor': {'floor'}, 'data': {'floor', 'data'}, 'models': {'floor', 'models'},
           'training': {'floor', 'data', 'models', 'training'},
           'scripts': {'floor', 'data', 'models', 'training', 'scripts'},
           'benchmarks': {'floor', 'data', 'models', 'training', 'scripts', 'benchmarks'}}


def layer(module):
    if module in SCRIPTS:
        return 'scripts'
    if module in FLOOR:
        return 'floor'
    if module in DATA:
        return 'data'
    for prefix, name in (('models', 'models'), ('utils.train', 'training'), ('utils.benchmarks', 'benchmarks')):
        if module == prefix or module.startswith(prefix + '.'):
            return name
    raise AssertionError(f'{module} is in no layer: add it to tests/test_layers.py and docs/architecture.md')


def project_modules():
    """{module name: path} of every Python module of the project (not the tests)."""
    paths = list(ROOT.glob('*.py')) + list(ROOT.glob('models/**/*.py')) + list(ROOT.glob('utils/**/*.py'))
    modules = {}
    for p in paths:
        parts = p.relative_to(ROOT).with_suffix('').parts
        modules['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = p
    return modules


def imports(path, modules):
    """[(line, imported project module)] of every import in the file, inside functions too."""
    found = []
    for node in ast.walk(ast.parse(Path(path).read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n in modules]
    return found


def graph():
    modules = project_modules()
    return modules, {m: imports(p, modules) for m, p in modules.items()}


def test_no_import_runs_up_a_layer():
    modules, edges = graph()
    wrong = [f'{modules[m].relative_to(ROOT)}:{line}: {m} ({layer(m)}) imports {dep} ({layer(dep)})'
             for m, deps in edges.items() for line, dep in deps
             if layer(dep) not in ALLOWED[layer(m)] and not dep.startswith(m + '.')]
    assert not wrong, '\n'.join(wrong)


def find_cycles(deps):
    """The import cycles of {module: {modules it imports}}, each as 'a -> b -> a'."""
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = 'open'
        for d in sorted(deps.get(m, ())):
            if state.get(d) == 'open':
                cycles.append(' -> '.join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 'done'
    for m in sorted(deps):
        if m not in state:
            visit(m, [m])
    return cycles


def test_no_import_cycle():
    modules, edges = graph()
    deps = {m: {d for _, d in ds if d != m and not d.startswith(m + '.') and not m.startswith(d + '.')}
            for m, ds in edges.items()}
    cycles = find_cycles(deps)
    assert not cycles, '\n'.join(cycles)


def test_the_layer_test_sees_a_wrong_import(tmp_path):
    """The checks themselves: an upward import and a cycle, planted in parsed source, are found."""
    mods = {'models.yolo': None, 'utils.train.trainer': None, 'utils.errors': None}
    up = tmp_path / 'yolo.py'
    up.write_text('def f():\n    from utils.train.trainer import Trainer\n')
    (line, dep), = imports(up, mods)
    assert (line, dep) == (2, 'utils.train.trainer') and layer(dep) not in ALLOWED[layer('models.yolo')]
    assert find_cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == ['a -> b -> c -> a']


def test_training_code_is_made_of_small_pieces():
    """train.py and utils/train/: no function over 60 lines or with more than 8 parameters, and no constructor
    (a class's __init__, or a dataclass's fields) that takes more than 6 arguments by position."""
    wrong = []
    for path in [ROOT / 'train.py', *sorted((ROOT / 'utils' / 'train').glob('*.py'))]:
        for node in ast.walk(ast.parse(path.read_text())):
            where = f'{path.relative_to(ROOT)}:{node.lineno if hasattr(node, "lineno") else 0}'
            if isinstance(node, ast.FunctionDef):
                a = node.args
                params = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ('self', 'cls')]
                positional = [x.arg for x in a.posonlyargs + a.args if x.arg not in ('self', 'cls')]
                if node.end_lineno - node.lineno + 1 > 60:
                    wrong.append(f'{where}: {node.name} has {node.end_lineno - node.lineno + 1} lines')
                if len(params) > 8:
                    wrong.append(f'{where}: {node.name} has {len(params)} parameters')
                if node.name == '__init__' and len(positional) > 6:
                    wrong.append(f'{where}: __init__ takes {len(positional)} arguments by position')
            elif isinstance(node, ast.ClassDef) and any('dataclass' in ast.unparse(d) and 'kw_only=True' not in
                                                        ast.unparse(d) for d in node.decorator_list):
                fields = [s for s in node.body if isinstance(s, ast.AnnAssign)]
                if len(fields) > 6:
                    wrong.append(f'{where}: dataclass {node.name} takes {len(fields)} fields by position')
    assert not wrong, '\n'.join(wrong)
