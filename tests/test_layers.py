"""The layers of the code (docs/architecture.md, "Layers"), enforced: every import of every module is parsed, and
an import that runs up a layer, or that closes a cycle between modules, fails the test with its file and line.

Lowest first; a module may import its own layer and those below it:
- floor:      utils' low-level helpers (errors, progress, general, torch_utils, distributed, downloads, boxes,
              nms, metrics, plots, loss, coco_ids);
- data:       the data pipeline (datasets, augmentations, label_cache, sources, sampling, data_config, coco2yolo,
              calibration, cache_check, packed, label_formats/);
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
    for prefix, name in (('models', 'models'), ('utils.label_formats', 'data'), ('utils.train', 'training'),
                         ('utils.benchmarks', 'benchmarks')):
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


CONFIG_NAMES = {'opt', 'cfg', 'options', 'config', 'saved', 'run_config'}  # what a run's configuration is called


def training_files():
    """train.py and utils/train/*.py: the training run's code."""
    return [ROOT / 'train.py', *sorted((ROOT / 'utils' / 'train').glob('*.py'))]


def assigned_targets(node):
    """The places an assignment, augmented assignment or deletion writes, tuples unpacked; [] for other nodes."""
    def unpack(t):
        return [x for e in t.elts for x in unpack(e)] if isinstance(t, (ast.Tuple, ast.List)) else [t]
    if isinstance(node, (ast.Assign, ast.Delete)):
        return [x for t in node.targets for x in unpack(t)]
    if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        return unpack(node.target)
    return []


def config_assignments(source, filename='<source>'):
    """['file:line: what'] for each place in `source` that changes a run's configuration in place: an assignment or
    deletion of an attribute of a name in CONFIG_NAMES (`opt.epochs = 3`, `opt.a, opt.b = ...`, `opt.x += 1`),
    setattr/delattr on one, or a write through its vars(). Options and RunConfig refuse these at run time; this finds
    them in code that no test runs."""
    found = []

    def is_config(node):
        return isinstance(node, ast.Name) and node.id in CONFIG_NAMES

    for node in ast.walk(ast.parse(source, filename)):
        where = f'{filename}:{getattr(node, "lineno", 0)}'
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            for t in assigned_targets(node):
                if isinstance(t, ast.Attribute) and is_config(t.value):
                    found.append(f'{where}: {ast.unparse(t)} assigned')
                if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Call) and \
                        ast.unparse(t.value.func) == 'vars' and any(is_config(a) for a in t.value.args):
                    found.append(f'{where}: {ast.unparse(t)} assigned')
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in ('setattr', 'delattr') and node.args and is_config(node.args[0]):
                found.append(f'{where}: {name}({ast.unparse(node.args[0])}, ...)')
            if isinstance(node.func, ast.Attribute) and node.func.attr in ('update', 'pop', 'setdefault', 'clear') \
                    and isinstance(node.func.value, ast.Call) and ast.unparse(node.func.value.func) == 'vars' \
                    and any(is_config(a) for a in node.func.value.args):
                found.append(f'{where}: {name}(...)')
    return found


def test_no_code_changes_the_resolved_configuration():
    """train.py and utils/train/: the run's options and configuration are resolved once (train.resolve_config makes
    them with Options.replace and dataclasses.replace) and never changed in place afterwards."""
    wrong = [w for path in training_files() for w in config_assignments(path.read_text(), str(path.relative_to(ROOT)))]
    assert not wrong, '\n'.join(wrong)


def test_the_configuration_check_sees_planted_changes():
    planted = ('opt.epochs = 3\n'
               'opt.batch_size, x = 4, 1\n'
               'cfg.save_dir += "x"\n'
               'setattr(saved, "weights", path)\n'
               'vars(opt).update(a=1)\n'
               'vars(opt)["b"] = 2\n'
               'del options.hyp\n'
               'other.epochs = 3\n'
               'opt = opt.replace(epochs=3)\n')
    found = config_assignments(planted)
    assert sorted(int(f.split(':')[1]) for f in found) == list(range(1, 8)), found


# --- no training setting in models/ ----------------------------------------------------------------------------
BLOCKS = {'models.common': {'models.activations'},  # a building block: the project modules it may import
          'models.activations': {'utils.errors', 'models.mish_cuda'}}
TRAINING = ('utils.train', 'train', 'test', 'detect')  # the training run's machinery and the scripts' options


def _module_aliases(tree, modules):
    """{name in this file: the project module of models/ it is bound to} (import models.x as y, from models import
    x, import models.x: 'models.x' as a dotted name)."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith('models.') and a.name in modules:
                    bound[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or '').split('.')[0] == 'models':
            for a in node.names:
                if f'{node.module}.{a.name}' in modules:
                    bound[a.asname or a.name] = f'{node.module}.{a.name}'
    return bound


def training_settings(path, module, modules):
    """[(line, what)] of the places in one module's source where a training setting reaches models/. A training
    setting is state that the training code sets and the model's computation reads, other than the model's own
    attributes (`model.activation_checkpointing`, set on the instance, is the switch). The rules:
    1. no function of models/ declares `global`: module state rebound at run time and read by other code, as
       `_pieces` was, set by the checkpointing policy and read by every Conv;
    2. no module of models/ imports the training machinery or a script (utils/train/, train, test, detect);
    3. the building blocks import from the project only what BLOCKS lists: activation checkpointing
       (models/activation_checkpointing.py) is applied to them from outside and never imported by them;
    4. no module of the project assigns to an attribute of a module of models/ (`common.X = 1`, `setattr(ac, ...)`,
       `models.yolo.X = 1`): a module-level setting set from outside."""
    tree = ast.parse(Path(path).read_text(), str(path))
    found = []
    in_models = module == 'models' or module.startswith('models.')
    for line, dep in imports(path, modules):
        if in_models and any(dep == t or dep.startswith(t + '.') for t in TRAINING):
            found.append((line, f'imports the training code {dep}'))
        if module in BLOCKS and dep.startswith(('models', 'utils', 'train', 'test', 'detect')) \
                and dep not in BLOCKS[module] and dep != 'models':
            found.append((line, f'a building block imports {dep}'))
    aliases = _module_aliases(tree, modules)

    def models_module(node):
        name = ast.unparse(node)
        return aliases.get(name) or (name if name.startswith('models.') and name in modules else None)
    for node in ast.walk(tree):
        if in_models and isinstance(node, ast.Global):
            found.append((node.lineno, f'global {", ".join(node.names)}'))
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        if isinstance(node, ast.Call) and ast.unparse(node.func) == 'setattr' and node.args:
            targets = [ast.Attribute(value=node.args[0], attr='?')]
        for t in targets:
            for a in ast.walk(t):
                if isinstance(a, ast.Attribute) and models_module(a.value):
                    found.append((node.lineno, f'sets {models_module(a.value)}.{a.attr}'))
    return found


def test_no_module_of_models_imports_a_training_setting():
    modules = project_modules()
    wrong = [f'{p.relative_to(ROOT)}:{line}: {what}' for m, p in modules.items()
             for line, what in training_settings(p, m, modules)]
    assert not wrong, '\n'.join(wrong)


def test_the_training_setting_check_catches_planted_cases(tmp_path):
    """Each rule of training_settings, on a planted source: the old module global of the checkpointing policy, an
    import of the training code, a building block importing the policy, a module setting a models/ module's state."""
    mods = dict.fromkeys(['models.common', 'models.yolo', 'models.activation_checkpointing', 'models.activations',
                          'utils.train.trainer', 'utils.benchmarks.modes', 'utils.errors'])

    def check(source, module):
        path = tmp_path / 'planted.py'
        path.write_text(source)
        return training_settings(path, module, mods)
    assert check('_pieces = False\n\ndef pieces(on):\n    global _pieces\n    _pieces = on\n',
                 'models.activation_checkpointing') == [(4, 'global _pieces')]
    assert check('from utils.train.trainer import Trainer\n', 'models.yolo') == \
        [(1, 'imports the training code utils.train.trainer')]
    assert check('import torch\nfrom models import activation_checkpointing\n', 'models.common') == \
        [(2, 'a building block imports models.activation_checkpointing')]
    assert check('from models import activation_checkpointing as ac\nac.MAX_RUN = 3\n', 'utils.benchmarks.modes') == \
        [(2, 'sets models.activation_checkpointing.MAX_RUN')]
    assert check('import models.common\nmodels.common.ACTIVATIONS["x"] = 1\n', 'utils.benchmarks.modes') == \
        [(2, 'sets models.common.ACTIVATIONS')]
    assert check('from models import common\nsetattr(common, "X", 1)\n', 'utils.benchmarks.modes') == \
        [(2, 'sets models.common.?')]
    assert check('import torch\nfrom models.activations import Mish\n', 'models.common') == []
    switch = ('from models import yolo\n\ndef f(cfg):\n    model = yolo.Model(cfg)\n'
              '    model.activation_checkpointing = 1\n')
    assert check(switch, 'utils.benchmarks.modes') == []  # the switch is an attribute of the model, not of a module


# --- one module reads a checkpoint's keys ------------------------------------------------------------------------
CHECKPOINT_OWNERS = {'utils.train.checkpoint_layout',  # the training checkpoint's layout (TrainingCheckpoint)
                     'models.checkpoint'}  # the files, the model payloads and the released pickles
CHECKPOINT_NAMES = {'ckpt', 'ck', 'checkpoint', 'preloaded', 'loaded'}  # what a loaded checkpoint is called
DICT_METHODS = {'get', 'items', 'keys', 'values', 'pop', 'setdefault', 'update'}


def _is_index(node):
    return isinstance(node, ast.Constant) and isinstance(node.value, int)


def _names_a_checkpoint(node):
    """ckpt, plan.ckpt, or an item of a (path, checkpoint) tuple: preloaded[1]."""
    if isinstance(node, ast.Name):
        return node.id in CHECKPOINT_NAMES
    if isinstance(node, ast.Attribute):
        return node.attr in CHECKPOINT_NAMES
    return isinstance(node, ast.Subscript) and _is_index(node.slice) and _names_a_checkpoint(node.value)


def checkpoint_key_reads(source, filename='<source>'):
    """[(line, code)] of each place in source that reads (or writes) a checkpoint dict's keys: ckpt['epoch'],
    ckpt.get('opt'), plan.ckpt.items(), preloaded[1].get('opt'), 'hooks' in ckpt."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Subscript) and not _is_index(node.slice) and _names_a_checkpoint(node.value):
            found.append(node)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in DICT_METHODS
              and _names_a_checkpoint(node.func.value)):
            found.append(node)
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) and \
                any(_names_a_checkpoint(c) for c in node.comparators):
            found.append(node)
    return sorted((n.lineno, ast.unparse(n)) for n in found)


def test_no_code_reads_a_checkpoints_keys_but_its_schema():
    """Only utils/train/checkpoint_layout.py (TrainingCheckpoint: the layout of a training checkpoint, its older
    layouts) and models/checkpoint.py (file I/O, model payloads, the released pickles) read a checkpoint's keys;
    everything else asks a TrainingCheckpoint (docs/architecture.md, "Checkpoint format")."""
    wrong = [f'{p.relative_to(ROOT)}:{line}: {code}' for m, p in project_modules().items()
             if m not in CHECKPOINT_OWNERS for line, code in checkpoint_key_reads(p.read_text(), str(p))]
    assert not wrong, '\n'.join(wrong)


def test_the_checkpoint_key_check_catches_planted_cases():
    planted = ("epoch = ckpt['epoch'] + 1\n"
               "saved = ckpt.get('opt') or {}\n"
               "total = plan.ckpt.get('opt', {}).get('total_batch_size')\n"
               "device = preloaded[1].get('opt')\n"
               "if 'hooks' not in checkpoint: pass\n"
               "extra = {k: v for k, v in ck.items()}\n"
               "ckpt[HOOKS_KEY] = {}\n"
               "path, ckpt = preloaded[0], preloaded[1]\n"  # a (path, checkpoint) tuple's items are no keys
               "epoch, batch = ckpt.position()\n"  # the schema's accessors
               "options = plan.ckpt.options\n")
    found = checkpoint_key_reads(planted)
    assert [line for line, _ in found] == list(range(1, 8)), found
    assert found[3] == (4, "preloaded[1].get('opt')")
    owners = {m: p for m, p in project_modules().items() if m in CHECKPOINT_OWNERS}
    assert set(owners) == CHECKPOINT_OWNERS  # the owners exist (a renamed one would exempt nothing)
    assert checkpoint_key_reads(owners['models.checkpoint'].read_text())  # which do read keys: exempted


# --- hooks talk through events, not the trainer's attributes -------------------------------------------------------
MUTATORS = {'append', 'extend', 'insert', 'clear', 'setdefault', 'pop', 'remove'}


def trainer_writes(source, filename='<source>'):
    """['file:line: what'] for each place in `source` that writes the trainer's state from outside it: an
    assignment (or augmented assignment, deletion, setattr) whose target is reached through `self.trainer` or a name
    bound to it (`t = self.trainer`), at any depth (`t.state.best_fitness = ...`), or an in-place change of a
    container reached that way (`t.state.results_lines.append(...)`). Calls of the trainer's own methods and of its
    storage (`t.storage.put`, `t.request_stop`) are the way in, and are not writes."""
    tree = ast.parse(source, filename)
    aliases = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and ast.unparse(n.value) == 'self.trainer'
               for t in n.targets if isinstance(t, ast.Name)}

    def through_trainer(node, depth=0):
        if isinstance(node, ast.Attribute):
            if ast.unparse(node) == 'self.trainer':
                return depth > 0
            return through_trainer(node.value, depth + 1)
        if isinstance(node, ast.Subscript):
            return through_trainer(node.value, depth + 1)
        return isinstance(node, ast.Name) and node.id in aliases and depth > 0

    found = []
    for node in ast.walk(tree):
        where = f'{filename}:{getattr(node, "lineno", 0)}'
        found += [f'{where}: {ast.unparse(t)} assigned' for t in assigned_targets(node) if through_trainer(t)]
        if isinstance(node, ast.Call):
            f = node.func
            if ast.unparse(f) in ('setattr', 'delattr') and node.args and \
                    (ast.unparse(node.args[0]) == 'self.trainer' or through_trainer(node.args[0])):
                found.append(f'{where}: {ast.unparse(f)}({ast.unparse(node.args[0])}, ...)')
            elif isinstance(f, ast.Attribute) and f.attr in MUTATORS and through_trainer(f.value):
                found.append(f'{where}: {ast.unparse(f)}(...)')
    return found


def test_no_hook_writes_the_trainers_attributes():
    """The hooks, trackers and train.py change the run only through the Trainer's methods and its EventStorage:
    none assigns to the trainer's attributes or its run state (docs/architecture.md, "Hooks")."""
    wrong = [w for path in training_files() if path.name != 'trainer.py'  # the Trainer's own code writes its state
             for w in trainer_writes(path.read_text(), str(path.relative_to(ROOT)))]
    assert not wrong, '\n'.join(wrong)


def test_the_trainer_write_check_catches_planted_cases():
    planted = ('self.trainer.signal = signum\n'
               't = self.trainer\n'
               't.state.results, t.state.maps = (1,), [2]\n'
               't.state.results_lines.append(line)\n'
               'self.trainer.state.best_fitness += 1\n'
               'setattr(self.trainer, "watchdog", dog)\n'
               'del t.epoch_images\n'
               't.storage.put(epoch, scalars)\n'  # the way in: no writes
               'self.trainer.request_stop("enough")\n'
               'self.trainer = trainer\n'
               'other.state.results = (1,)\n')
    found = trainer_writes(planted)
    assert sorted({int(f.split(':')[1]) for f in found}) == [1, 3, 4, 5, 6, 7], found
    assert len(found) == 6 + 1  # line 3 has two targets
