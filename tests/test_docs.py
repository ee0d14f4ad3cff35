"""Documentation that cannot drift from the code: every shell command in README.md and docs/ is read, and each
call of one of this project's scripts is checked against that script's own argparse parser; the commands that
run offline on a CPU are run.

What is read: the fenced ```bash (or sh, shell) blocks of README.md and docs/**/*.md, and inline code in their
prose that starts with `python`, `time python` or `torchrun`. Line continuations (a trailing backslash) are
joined, comments are split off, and a command is cut at `&`, `&&`, `|`, `;` and redirections. A script call is
`python SCRIPT ...`, `python -m MODULE ...`, `torchrun [its flags] train.py ...`, `python -m
torch.distributed.launch [its flags] train.py ...` (also after `srun` or `time`) for the scripts in SCRIPTS.

What is checked, for every script call: each `--flag` is one of the script's own option strings, written in full
(argparse would accept a prefix; a page should not), and the whole argument list parses (types, choices,
nargs). `...` stands for the arguments of the line above and is left out.

Which commands run (tests/test_docs.py::test_documented_commands_run): every script call in a bash block that
carries no `# needs: ...` comment. The convention, visible in the page:

    python test.py --data data/coco.yaml --weights weights/yolov4-p5.pt --device 0   # needs: GPU, COCO

(or `# what it does; needs: GPU, COCO`) marks a command the suite cannot run, with what it needs (NEEDS: a
GPU, the COCO dataset, the internet for released weights, several machines, SLURM, Docker, or more time than the
suite has). The comment sits on the command's own line (its last line when continued) or alone on the line just
above it. A page's commands run in order in one sandbox folder, so a command may use what an earlier one wrote:
- `data/` and `models/` of the repository are linked in, so commands read as in a clone; nothing is written in
  the repository but what every test writes (coco8's labels.cache);
- `path/to/data.yaml` is coco8 and `path/to/images` its images (the pages' placeholders for your own data);
- `runs/train/exp/weights/{best,last,final}.pt` hold the quick start's trained weights
  (tests/data/quickstart-p5-tiny.pt), the placeholder of "a run of yours";
- a train.py call trains for at most EPOCHS_CAP epochs (the quick start's 200 are tests/test_learning.py's);
- downloads go to an address that refuses them, so a command that needs the internet and is not marked fails;
- one Python process runs a page's commands, each as its script's `__main__` block runs it (`run_cli(main)` with
  the command's sys.argv), so that Python and torch start once per page rather than once per command.
"""
import ast
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPTS = {  # how the docs call a script -> module:function that builds its parser
    'train.py': 'train:build_parser', 'test.py': 'test:parse_opt', 'detect.py': 'detect:parse_opt',
    'models/export.py': 'models.export:main', 'models/yolo.py': 'models.yolo:main',
    '-m utils.benchmarks': 'utils.benchmarks:parse_opt', '-m utils.coco2yolo': 'utils.coco2yolo:main'}
NEEDS = {'GPU', 'COCO', 'internet', 'several machines', 'SLURM', 'Docker', 'time'}
EPOCHS_CAP = 2
SHELL_LANGS = {'bash', 'sh', 'shell'}
OPERATORS = {'&', '&&', '|', '||', ';'}
LAUNCHERS = {'python', 'python3', 'torchrun', 'srun', 'time'}


def doc_files():
    return [ROOT / 'README.md', *sorted((ROOT / 'docs').rglob('*.md'))]


class Command:
    """One call of a project script found in a page: where it is, the script, its arguments, what it needs."""

    def __init__(self, where, text, launcher, script, args, needs, in_block):
        self.where, self.text, self.launcher, self.script, self.args = where, text, launcher, script, args
        self.needs, self.in_block = needs, in_block

    def __repr__(self):
        return f'{self.where}: {self.text}'


def split_comment(line):
    """(code, comment) of one shell line: a # that starts a word, outside quotes, begins the comment."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in '\'"':
            quote = c
        elif c == '#' and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i + 1:].strip()
    return line, ''


def parse_needs(comment):
    """The set named by a `needs: a, b` comment, or None when the comment is not one."""
    m = re.search(r'(?:^|;\s*)needs:\s*(.*)$', comment)  # `# needs: ...` or `# what it does; needs: ...`
    return None if m is None else {w.strip() for w in m.group(1).split(',') if w.strip()}


def script_calls(code):
    """[(launcher, script, args)] of the project-script calls in one logical shell line (comment removed)."""
    tokens = shlex.split(code)  # operators and redirections are separate words in the pages
    calls, simple = [], []
    for tok in tokens + [';']:
        if tok in OPERATORS:
            if simple:
                calls.extend(_call(simple))
            simple = []
        else:
            simple.append(tok)
    return calls


def _call(tokens):
    redirect = re.compile(r'^\d*[<>]')
    tokens = [t for i, t in enumerate(tokens) if not (redirect.match(t) or (i and redirect.match(tokens[i - 1])))]
    if not tokens or Path(tokens[0]).name not in LAUNCHERS:
        return []
    for i, tok in enumerate(tokens):
        if tok == '-m' and i + 1 < len(tokens) and f'-m {tokens[i + 1]}' in SCRIPTS:
            return [(tokens[:i], f'-m {tokens[i + 1]}', tokens[i + 2:])]
        if tok.removeprefix('./') in SCRIPTS:
            return [(tokens[:i], tok.removeprefix('./'), tokens[i + 1:])]
    return []


def commands(path, text=None):
    """Every project-script call in a page, from its shell blocks and from inline code in its prose."""
    text = path.read_text() if text is None else text
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    lines = text.splitlines()
    found, prose, i = [], [], 0
    while i < len(lines):
        fence = re.match(r'^\s*(```+|~~~+)\s*([\w-]*)', lines[i])
        if not fence:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        lang, end = fence.group(2).lower(), i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence.group(1)):
            end += 1
        if lang in SHELL_LANGS:
            found.extend(_block_commands(name, lines[i + 1:end], i + 2))
        i = end + 1
    para = ' '.join(f'\0{n}\0{line}' for n, line in prose)
    for m in re.finditer(r'`((?:time )?(?:python3?|torchrun) [^`]+)`', para):
        line_no = int(re.findall(r'\0(\d+)\0', para[:m.start()])[-1])
        code = re.sub(r'\0\d+\0', '', m.group(1))
        for launcher, script, args in script_calls(code):
            found.append(Command(f'{name}:{line_no}', code, launcher, script, args, None, False))
    return found


def _block_commands(name, block, first_line):
    found, above, j = [], None, 0
    while j < len(block):
        start, parts, comment = j, [], ''
        while True:
            code, comment = split_comment(block[j])
            if not comment and code.rstrip().endswith('\\') and j + 1 < len(block):
                parts.append(code.rstrip()[:-1])
                j += 1
                continue
            parts.append(code)
            break
        j += 1
        code = ' '.join(parts)
        needs = parse_needs(comment)
        if not code.strip():  # a comment line: a needs: on it applies to the command below
            above = needs
            continue
        for launcher, script, args in script_calls(code):
            found.append(Command(f'{name}:{first_line + start}', ' '.join(code.split()), launcher, script, args,
                                 needs if needs is not None else above, True))
        above = None
    return found


class _Captured(Exception):
    pass


_PARSERS = {}


def parser(script):
    """The argparse parser the script builds, captured where it would parse (no script is run)."""
    if script not in _PARSERS:
        import importlib

        from utils.errors import ArgumentParser
        module, function = SCRIPTS[script].split(':')
        built = getattr(importlib.import_module(module), function)

        def capture(self, *args, **kwargs):
            raise _Captured(self)
        saved = ArgumentParser.parse_args
        ArgumentParser.parse_args = capture
        try:
            p = built() if function == 'build_parser' else built([])
        except _Captured as e:
            p = e.args[0]
        finally:
            ArgumentParser.parse_args = saved
        _PARSERS[script] = p
    return _PARSERS[script]


def problems(cmd):
    """What is wrong with a documented call: unknown flags, flags written as a prefix, arguments that do not parse,
    a needs: word outside NEEDS."""
    p = parser(cmd.script)
    known = {s for a in p._actions for s in a.option_strings}
    args = [a for a in cmd.args if a != '...']
    found = [f'{flag} is not a flag of {cmd.script}' for flag in (a.split('=')[0] for a in args)
             if flag.startswith('--') and flag not in known]
    if not found:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                p.parse_args(args)
        except SystemExit as e:
            placeholder = re.search(r"invalid (int|float) value: '[A-Z][A-Z0-9_]*'", err.getvalue())
            if e.code and not placeholder:  # --img N: a placeholder in capitals stands for a number
                found.append(f'does not parse: {err.getvalue().strip()}')
    if cmd.needs is not None and cmd.needs - NEEDS:
        found.append(f'needs: {", ".join(sorted(cmd.needs - NEEDS))} is not one of {sorted(NEEDS)}')
    return found


def report(cmds):
    return '\n'.join(f'{c.where}: {c.text}\n    {p}' for c in cmds for p in problems(c))


# --- every documented flag exists ----------------------------------------------------------------------------------
@pytest.mark.parametrize('page', doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_flag_exists(page):
    assert not (bad := report(commands(page))), f'documented commands that do not match the scripts:\n{bad}'


def test_the_pages_document_commands():
    """The reader finds the commands: README.md has the quick start's and the main tasks', every script is called."""
    readme = commands(ROOT / 'README.md')
    assert {c.script for c in readme} >= {'train.py', 'test.py', 'detect.py', 'models/export.py'}
    assert sum(not c.needs for c in readme if c.in_block) >= 3  # the quick start, run below
    everywhere = {c.script for page in doc_files() for c in commands(page)}
    assert everywhere == set(SCRIPTS), set(SCRIPTS) - everywhere


def test_checker_reports_a_planted_wrong_flag(tmp_path):
    """A page with a flag that does not exist fails, in a block (continued, under torchrun) and in prose."""
    page = tmp_path / 'page.md'
    page.write_text('Train:\n\n```bash\n'
                    'python train.py --data data/coco8.yaml --no-such-flag 3   # needs: GPU\n'
                    'torchrun --nproc_per_node 2 train.py --cfg models/yolov4-p5.yaml \\\n'
                    '    --img 640 --sync-bnn\n'
                    'python detect.py --source data/coco8/images --conf 0.25\n'
                    'python -m utils.benchmarks --mode infer --quik\n'
                    '```\n\nor `python test.py --data x.yaml --weigths w.pt`, and `python models/export.py '
                    '--include darknet\nonnx --img 64`.\n')
    cmds = commands(page)
    assert [(c.script, c.needs) for c in cmds] == [('train.py', {'GPU'}), ('train.py', None), ('detect.py', None),
                                                   ('-m utils.benchmarks', None), ('test.py', None),
                                                   ('models/export.py', None)]
    bad = report(cmds)
    for flag in ('--no-such-flag', '--sync-bnn', '--quik', '--weigths'):
        assert f'{flag} is not a flag' in bad, bad
    assert 'detect.py' not in bad and 'models/export.py' not in bad and 'page.md:4:' in bad and 'page.md:5:' in bad


def test_checker_reports_values_prefixes_and_needs_words(tmp_path):
    page = tmp_path / 'page.md'
    page.write_text('```bash\n'
                    '# needs: GPU, COCO\n'
                    'python test.py --task eval --batch 8\n'
                    'python detect.py --img 640 --conf-th 0.3   # needs: GPUs\n'
                    'python train.py --epochs ten   # a comment, not a needs: line\n'
                    '```\n')
    cmds = commands(page)
    assert [c.needs for c in cmds] == [{'GPU', 'COCO'}, {'GPUs'}, None]
    bad = report(cmds)
    assert "argument --task: invalid choice: 'eval'" in bad
    assert '--conf-th is not a flag of detect.py' in bad and 'needs: GPUs is not one of' in bad
    assert "argument --epochs: invalid int value: 'ten'" in bad


# --- the commands that run offline on a CPU run ---------------------------------------------------------------------
def sandbox(path):
    """A folder where the pages' commands read as in a clone (see the module docstring)."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ('data', 'models'):
        (path / name).symlink_to(ROOT / name, target_is_directory=True)
    (path / 'path' / 'to').mkdir(parents=True)
    (path / 'path' / 'to' / 'images').symlink_to(ROOT / 'data' / 'coco8' / 'images', target_is_directory=True)
    data = (ROOT / 'data' / 'coco8.yaml').read_text()
    for key in ('train', 'val', 'val_annotations'):
        data = re.sub(rf'^({key}): (.*)$', lambda m: f'{m.group(1)}: {ROOT / "data" / m.group(2)}', data, flags=re.M)
    (path / 'path' / 'to' / 'data.yaml').write_text(data)
    weights = path / 'runs' / 'train' / 'exp' / 'weights'
    weights.mkdir(parents=True)
    for name in ('best.pt', 'last.pt', 'final.pt'):
        shutil.copy(ROOT / 'tests' / 'data' / 'quickstart-p5-tiny.pt', weights / name)
    return path


MAINS = {'train.py': 'train', 'test.py': 'test', 'detect.py': 'detect', 'models/export.py': 'models.export',
         'models/yolo.py': 'models.yolo', '-m utils.benchmarks': 'utils.benchmarks',
         '-m utils.coco2yolo': 'utils.coco2yolo'}
# One process runs a page's commands: each is its script's main() under run_cli, as its `if __name__ ==
# '__main__'` block runs it, with sys.argv as the shell gives it; Python and torch start once per page, not once
# per command. A line `@@ seconds status where` follows each; the first failure ends the process with its status.
DRIVER = """
import importlib, json, sys, time
sys.path[0] = sys.argv[2]  # the repository first, as for `python train.py` there
from utils.errors import run_cli
for where, prog, module, args in json.loads(sys.argv[1]):
    sys.argv, t0 = [prog, *args], time.time()
    try:
        run_cli(importlib.import_module(module).main, prog)
        status = 0
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else int(e.code is not None)
    print(f'@@ {time.time() - t0:.1f} {status} {where}', flush=True)
    if status:
        sys.exit(status)
"""


def args_here(cmd):
    """The arguments that run cmd in the suite: `...` left out, a train.py call's epochs capped."""
    if cmd.launcher[-1:] not in (['python'], ['python3']):
        raise AssertionError(f'{cmd.where}: only `python ...` commands run in the suite; mark it: # needs: ...')
    args = [a for a in cmd.args if a != '...']
    if cmd.script == 'train.py':
        if '--epochs' in args:
            k = args.index('--epochs') + 1
            args[k] = str(min(int(args[k]), EPOCHS_CAP))
        else:
            args += ['--epochs', str(EPOCHS_CAP)]
    return args


RUNNABLE = {page: [c for c in commands(page) if c.in_block and not c.needs] for page in doc_files()}


@pytest.mark.parametrize('page', [p for p in doc_files() if RUNNABLE[p]], ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_commands_run(page, tmp_path):
    """Each unmarked command of the page, in order, in a sandbox: exit status 0."""
    work = sandbox(tmp_path / 'work')
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'MPLBACKEND': 'Agg', 'YOLO_WEIGHTS_MIRROR': 'http://127.0.0.1:9'}
    todo = [(c.where, f'python {c.script}' if c.script.startswith('-m ') else c.script, MAINS[c.script],
             args_here(c)) for c in RUNNABLE[page]]
    r = subprocess.run([sys.executable, '-c', DRIVER, json.dumps(todo), str(ROOT)], cwd=work, env=env,
                       capture_output=True, text=True, timeout=900)
    done = re.findall(r'^@@ (\S+) (\S+) (.*)$', r.stdout, flags=re.M)
    for seconds, status, where in done:  # shown with pytest -s: what each documented command costs here
        print(f'{float(seconds):5.1f} s  {where}' + ('' if status == '0' else f'  exit status {status}'))
    assert r.returncode == 0 and len(done) == len(todo), \
        f'{RUNNABLE[page][len(done) - 1 if r.returncode else len(done)]}\nexit status {r.returncode}\n' \
        f'{r.stdout[-3000:]}\n{r.stderr[-3000:]}'


def test_resume_table_is_resume_rules():
    """docs/training.md's "What a resume may change" lists each flag where utils/train/resume.py decides it."""
    from utils.train import resume
    text = (ROOT / 'docs' / 'training.md').read_text().split('## What a resume may change')[1].split('\n## ')[0]
    dests = {s: a.dest for a in parser('train.py')._actions for s in a.option_strings}
    table = {'refused': set(), 'taken': set(), 'say': set()}
    for flags, decision in re.findall(r'^\| (`--.*?) \| (\w+)', text, flags=re.M):
        table[decision] |= {dests[f] for f in re.findall(r'`(--[\w-]+)`', flags)}
    assert table == {'refused': set(resume.REFUSED), 'taken': set(resume.ACCEPTED), 'say': set(resume.NOT_COMPARED)}


PUBLISHED_PATHS = {'models/models.py'}  # files of the published code, named where the pages compare with it


def test_named_files_exist():
    """Every repository file or folder a page names in code (`models/...`, `utils/...`, `tests/...`, `data/...`,
    `docs/...`, `.ci/...`) exists: a rename or a removal that leaves a page behind fails here. Placeholders (a part
    in capitals, as models/X.cfg) and what runs write (runs/, weights/) are not checked."""
    missing = []
    for page in doc_files():
        for m in re.finditer(r'`((?:models|utils|tests|data|docs|\.ci)/[\w./-]*)', page.read_text()):
            path = m.group(1).rstrip('.')
            if path in PUBLISHED_PATHS or any(re.fullmatch(r'[A-Z][A-Z0-9_]*', Path(part).stem) for part in
                                              Path(path).parts):
                continue
            if not (ROOT / path).exists():
                missing.append(f'{page.relative_to(ROOT)}: {path}')
    assert not missing, missing


def test_python_examples_are_python():
    """The ```python blocks parse (their names are the modules' own: tests/test_second_hour.py and others run them)."""
    for page in doc_files():
        for m in re.finditer(r'^```python\n(.*?)^```', page.read_text(), flags=re.S | re.M):
            code = re.sub(r'\[\.\.\.[^]]*\]', '[...]', m.group(1))  # [...the flags...] stands for a list
            ast.parse(code, f'{page.relative_to(ROOT)}')
