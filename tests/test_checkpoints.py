"""Loading weights: released-format pickles without mish_cuda, project checkpoints, refusing bad files."""
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import ROOT, tiny_cfg
from published_fixtures import OUT as PUBLISHED
from models.experimental import Ensemble, attempt_load
from models.yolo import Model
from models.checkpoint import CheckpointError, load_checkpoint, model_payload, save_checkpoint


def _released_checkpoint(path, spelling='mish_cuda.MishCuda', family='p5', numpy_path='numpy1'):
    """A release-format checkpoint made by the published code (tests/data/published/<family>-<numpy_path>.pt, see
    tests/published_fixtures.py) copied to path; with another spelling, its one pickled name of MishCuda is
    renamed as a community rebuild of mish_cuda pickles it (nothing else changes). Returns the published
    model's outputs on its input, (image uint8 CHW, outputs)."""
    src = PUBLISHED / f'{family}-{numpy_path}.pt'
    module, name = spelling.rsplit('.', 1)
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as w:
        for info in z.infolist():
            data = z.read(info.filename)
            if info.filename.endswith('/data.pkl'):
                assert data.count(b'cmish_cuda\nMishCuda\n') == 1
                data = data.replace(b'cmish_cuda\nMishCuda\n', f'c{module}\n{name}\n'.encode())
            w.writestr(info, data)
    families = np.load(PUBLISHED / 'families.npz')
    return families['image'], families[family]


LOADER = r'''
import sys, numpy as np, torch
try:
    import mish_cuda  # noqa: F401
    sys.exit("mish_cuda must not be importable here")
except ImportError:
    pass
from models.experimental import attempt_load
m = attempt_load(sys.argv[1])
assert m.names == ['person', 'bicycle', 'car'], m.names
assert not m.training and all(p.dtype == torch.float32 for p in m.parameters())
with torch.no_grad():
    y = m(torch.from_numpy(np.load(sys.argv[2])).float() / 255)[0]
torch.save(y, sys.argv[3])
'''


@pytest.mark.parametrize('spelling, family, numpy_path', [('mish_cuda.MishCuda', 'p6', 'numpy1'),
                                                          ('mc.build.lib.mish_mish.MishCuda', 'p7', 'numpy2'),
                                                          ('mish_mish.MishCuda', 'p5', 'numpy1')])
def test_released_checkpoint_loads_without_mish_cuda(tmp_path, spelling, family, numpy_path):
    """A published release-format pickle, in a process where mish_cuda cannot be imported: the published
    model's outputs (tests/data/published/families.npz)."""
    image, published = _released_checkpoint(tmp_path / 'yolov4-p5.pt', spelling, family, numpy_path)
    np.save(tmp_path / 'x.npy', image)
    r = subprocess.run([sys.executable, '-c', LOADER, str(tmp_path / 'yolov4-p5.pt'), str(tmp_path / 'x.npy'),
                        str(tmp_path / 'y.pt')], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    y = torch.load(tmp_path / 'y.pt').numpy()
    np.testing.assert_allclose(y[..., :4], published[..., :4], rtol=0, atol=2e-3)
    np.testing.assert_allclose(y[..., 4:], published[..., 4:], rtol=0, atol=1e-5)


def test_project_checkpoint_round_trip(tmp_path):
    model = Model(tiny_cfg('yolov4-csp', nc=2)).eval()
    model.names = ['a', 'b']
    save_checkpoint({'epoch': 3, 'model': model_payload(model)}, tmp_path / 'last.pt')
    assert not list(tmp_path.glob('.*tmp'))  # no temporary left behind
    torch.load(tmp_path / 'last.pt', weights_only=True)  # plain data: loads with no allow-list at all
    loaded = attempt_load(tmp_path / 'last.pt')
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x)[0], model.fuse()(x)[0], atol=1e-5)
    assert loaded.names == ['a', 'b']


def test_loaded_model_is_moved_to_map_location(tmp_path, monkeypatch):
    """A checkpoint's model is rebuilt on the CPU; attempt_load must move it to map_location (test.py --device 0
    on a GPU failed with 'Input type (torch.cuda.HalfTensor) and weight type (torch.HalfTensor)')."""
    save_checkpoint({'model': model_payload(Model(tiny_cfg('yolov4-p5', nc=2)))}, tmp_path / 'w.pt')
    if torch.cuda.is_available():
        assert next(attempt_load(tmp_path / 'w.pt', map_location='cuda:0').parameters()).is_cuda
        return
    moved = []

    def record_to(self, *args, **kwargs):  # this machine has no second device: record where it would go
        moved.append(args[0] if args else kwargs.get('device'))
        return self
    monkeypatch.setattr(nn.Module, 'to', record_to)
    attempt_load(tmp_path / 'w.pt', map_location='cuda:0')
    assert moved == ['cuda:0']


def test_ensemble_of_two(tmp_path):
    for i in range(2):
        m = Model(tiny_cfg('yolov4-p5', nc=2))
        save_checkpoint({'model': model_payload(m)}, tmp_path / f'w{i}.pt')
    ens = attempt_load([tmp_path / 'w0.pt', tmp_path / 'w1.pt'])
    assert isinstance(ens, Ensemble) and ens.stride.tolist() == [8, 16, 32]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y = ens(x)[0]
        assert torch.allclose(y, (ens[0](x)[0] + ens[1](x)[0]) / 2, atol=1e-6)


class _Evil:
    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_malicious_pickle_refused(tmp_path):
    marker = tmp_path / 'pwned'
    evil = _Evil()
    _Evil.marker = marker
    path = tmp_path / 'evil.pt'
    torch.save({'model': evil}, path)
    with pytest.raises(CheckpointError) as e:
        attempt_load(path)
    msg = str(e.value)
    assert str(path) in msg and 'system' in msg and 'refused' in msg
    assert not marker.exists()


def test_unknown_class_refused(tmp_path):
    """A class outside the allow-list that could do harm (PyTorch's own loader admits harmless builtins such as
    exception classes, so those are no test of the allow-list)."""
    import subprocess
    path = tmp_path / 'other.pt'
    torch.save({'model': {'state_dict': {}}, 'x': subprocess.Popen}, path)
    with pytest.raises(CheckpointError, match=r"refused to load: it asks for 'subprocess.Popen'"):
        load_checkpoint(path)


def test_missing_weights_message(tmp_path):
    with pytest.raises(CheckpointError) as e:
        attempt_load(tmp_path / 'my-p5.pt')  # a release name would be downloaded (tests/test_hub_downloads.py)
    msg = str(e.value)
    assert 'my-p5.pt not found' in msg and 'ScaledYOLOv4' in msg and 'train.py' in msg


@pytest.mark.parametrize('content', [b'', b'not a checkpoint at all', None])
def test_truncated_or_foreign_file(tmp_path, content):
    path = tmp_path / 'bad.pt'
    if content is None:  # a real checkpoint cut in half
        save_checkpoint({'model': model_payload(Model(tiny_cfg('yolov4-p5')))}, path)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match='not a readable PyTorch checkpoint'):
        attempt_load(path)


CURRENT = ROOT / 'tests' / 'data' / 'current-last.pt'  # this layout (tests/legacy_fixture.py, run at 0ff618c)
LEGACY = ROOT / 'tests' / 'data' / 'legacy-last.pt'  # before hooks had a namespace and options were apart (2a41ef7)


def test_training_checkpoints_of_each_layout_load_through_the_schema():
    """A last.pt of the current layout reads into a TrainingCheckpoint and back into the same dict, key for key
    and in order; one of the older layout reads too: its callback's state from the top level, its batch the total.
    Both were stopped at epoch 1 batch 3 of the same run, with a callback (`Counter`) that had counted 7 steps."""
    from utils.train.checkpoint_layout import TrainingCheckpoint, load_training_checkpoint
    raw = load_checkpoint(CURRENT, download=False)
    ck = load_training_checkpoint(CURRENT)
    assert ck.resumable and ck.version == 1 and ck.position() == (1, 3) and ck.epoch == 0
    assert ck.hooks == {'Counter': {'counter_steps': 7}} and not ck.extra
    assert ck.hook_states(['Counter', 'mlflow']) == {'Counter': {'counter_steps': 7}, 'mlflow': {}}
    assert ck.user_options({'batch_size', 'epochs'}) == {'batch_size': 2, 'epochs': 3}
    assert ck.option('total_batch_size') == 2 and ck.ema_state_dict.keys() == ck.model['state_dict'].keys()
    again = ck.to_dict()
    assert list(again) == list(raw) and all(again[k] is raw[k] or again[k] == raw[k] for k in
                                            ('format', 'version', 'epoch', 'best_fitness', 'date', 'opt', 'hyp',
                                             'results', 'fitness', 'torch', 'ema_updates', 'hooks'))
    assert TrainingCheckpoint.from_dict(ck) is ck
    old = load_training_checkpoint(LEGACY)
    assert old.resumable and old.position() == (1, 3) and old.hooks is None and 'global_rank' in old.options
    assert old.hook_states(['Counter', 'mlflow']) == {'Counter': {'counter_steps': 7}, 'mlflow': {}}
    assert old.user_options({'batch_size'}) == {'batch_size': 2}
    assert list(old.to_dict()) == list(load_checkpoint(LEGACY, download=False))  # written back as it was


def test_released_and_stripped_files_are_no_training_state(tmp_path):
    """A released pickle and a stripped file read as checkpoints that hold no training state (a resume refuses
    them); a file of a later format version is refused with its version named."""
    from models.checkpoint import strip_optimizer
    from utils.train.checkpoint_layout import load_training_checkpoint
    _released_checkpoint(tmp_path / 'yolov4-p5.pt')
    assert not load_training_checkpoint(tmp_path / 'yolov4-p5.pt', download=False).resumable
    strip_optimizer(CURRENT, tmp_path / 'final.pt')
    stripped = load_training_checkpoint(tmp_path / 'final.pt')
    assert not stripped.resumable and stripped.epoch == -1 and stripped.ema is None
    newer = dict(load_checkpoint(tmp_path / 'final.pt'), version=99)
    save_checkpoint(newer, tmp_path / 'newer.pt')
    with pytest.raises(CheckpointError, match='format version 99, newer'):
        load_training_checkpoint(tmp_path / 'newer.pt')
