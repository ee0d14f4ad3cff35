"""The Trainer's extension points: user callbacks (which cannot break a run, and may stop it early), the MLflow
tracker against a real MLflow file store, and the results line of an epoch without a finite loss."""
import math

import pytest
import torch

from conftest import COCO8_YAML, ROOT

TINY = dict(cfg=str(ROOT / 'models' / 'yolov4-p5-tiny.yaml'), data=str(COCO8_YAML), img_size=[64, 64], batch_size=4,
            device='cpu', workers=0, noautoanchor=True)


def _run(tmp_path, name, **kw):
    import train
    return train.run(**{**TINY, 'project': str(tmp_path), 'name': name, **kw})


def _warnings(capfd, needle):
    """The lines of stderr (where train.py logs) that contain needle."""
    return [ln for ln in capfd.readouterr().err.splitlines() if needle in ln]


def test_failing_callbacks_cannot_break_a_run(tmp_path, capfd):
    from utils.train.hooks import Hook
    calls = []

    class Broken(Hook):
        def after_step(self):
            calls.append(self.trainer.batch)
            raise ValueError('a bug in my callback')

    class BrokenAtTheEnd(Hook):
        def after_train(self):
            raise OSError('disk of my logger full')

    _run(tmp_path, 'cb', epochs=2, callbacks=[Broken(), BrokenAtTheEnd()])
    assert calls == [1]  # called once, then left out
    assert _warnings(capfd, 'WARNING: callback') == [
        'WARNING: callback Broken failed in after_step (ValueError: a bug in my callback); training goes on without it',
        'WARNING: callback BrokenAtTheEnd failed in after_train (OSError: disk of my logger full); training goes on '
        'without it']
    assert len((tmp_path / 'cb' / 'results.txt').read_text().splitlines()) == 2
    assert (tmp_path / 'cb' / 'weights' / 'final.pt').is_file()


def test_callback_logs_a_metric_and_stops_early(tmp_path):
    """The README's example: a callback that reads each epoch's mAP and stops when it has not improved."""
    from utils.train.hooks import Hook
    seen = []

    class StopAfterTwoEpochs(Hook):
        def after_epoch(self):
            seen.append((self.trainer.epoch, self.trainer.results[2]))
            if len(seen) == 2:
                self.trainer.request_stop('two epochs are enough')

    _run(tmp_path, 'early', epochs=5, callbacks=[StopAfterTwoEpochs()])
    assert [e for e, _ in seen] == [0, 1]
    assert len((tmp_path / 'early' / 'results.txt').read_text().splitlines()) == 2
    ck = torch.load(tmp_path / 'early' / 'weights' / 'last.pt', weights_only=True)
    assert ck['epoch'] == 1 and ck['progress']['batch'] == 0  # the end of epoch 1: no step of epoch 2 was taken
    assert (tmp_path / 'early' / 'weights' / 'final.pt').is_file()


def test_a_callback_sees_the_run_read_only(tmp_path, capfd):
    """A callback gets a read-only view of the trainer: changing where the run stands or what it measured fails
    (one warning; the callback is left out) and the run goes on unchanged. Before, a callback held the Trainer
    itself and could rewrite its state."""
    from utils.train.hooks import Hook
    seen = []

    class Rewrite(Hook):
        def after_epoch(self):
            t = self.trainer
            seen.append((t.epoch, t.storage.get('fitness'), t.best_fitness, len(t.maps)))
            t.best_fitness = 99.0

    class Reach(Hook):
        def after_epoch(self):
            self.trainer.state.results_lines.append('not a line')

    _run(tmp_path, 'ro', epochs=2, callbacks=[Rewrite(), Reach()])
    assert [e for e, *_ in seen] == [0] and seen[0][1] == seen[0][2] and seen[0][3] > 0
    warnings = _warnings(capfd, 'WARNING: callback')
    assert len(warnings) == 2 and warnings[0].startswith('WARNING: callback Rewrite failed in after_epoch '
                                                         '(AttributeError'), warnings
    assert 'Reach failed in after_epoch (AttributeError' in warnings[1]
    ck = torch.load(tmp_path / 'ro' / 'weights' / 'last.pt', weights_only=True)
    assert ck['best_fitness'] < 1 and len(ck['results']) == 2 and 'not a line' not in ck['results']


def test_epoch_without_a_finite_loss_writes_a_full_results_line(tmp_path):
    """Every step of epoch 1 non-finite (its weights made NaN): the epoch's line keeps results.txt's 15 columns,
    with nan losses, and results.png is drawn (it crashed on the 7-column line before)."""
    from utils.train.hooks import Hook

    class PoisonEpoch1(Hook):
        def before_epoch(self):
            if self.trainer.epoch == 1:
                with torch.no_grad():
                    for p in self.trainer.model.parameters():
                        p.fill_(float('nan'))

    _run(tmp_path, 'nan', epochs=2, notest=True, callbacks=[PoisonEpoch1()])
    rows = [line.split() for line in (tmp_path / 'nan' / 'results.txt').read_text().splitlines()]
    assert [len(r) for r in rows] == [15, 15]
    assert rows[1][0] == '1/1' and all(math.isnan(float(v)) for v in rows[1][2:6])
    assert (tmp_path / 'nan' / 'results.png').is_file()


def test_mlflow_records_params_metrics_and_final_weights(tmp_path, monkeypatch):
    """Against MLflow's own file store: the run's params, each epoch's metrics, final.pt and results.txt as
    artifacts; a resume that extends the run continues the same MLflow run."""
    pytest.importorskip('mlflow', reason='mlflow is not installed (pip install -r requirements-test.txt)')
    from mlflow.tracking import MlflowClient
    monkeypatch.setenv('MLFLOW_ALLOW_FILE_STORE', 'true')  # MLflow 3 keeps its file store behind this switch
    monkeypatch.setenv('MLFLOW_EXPERIMENT_NAME', 'tests')
    uri = (tmp_path / 'mlruns').as_uri()
    _run(tmp_path, 'ml', epochs=2, mlflow=uri)
    import train
    train.run(resume=str(tmp_path / 'ml'), epochs=3, mlflow=uri)
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name('tests').experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    assert run.info.run_name == 'ml' and run.info.status == 'FINISHED'
    assert run.data.params['opt/epochs'] == '2' and run.data.params['hyp/lr0'] == '0.01'
    history = client.get_metric_history(run.info.run_id, 'metrics/mAP_0.5')
    assert sorted(m.step for m in history) == [0, 1, 2]
    lines = (tmp_path / 'ml' / 'results.txt').read_text().splitlines()
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [float(line.split()[10]) for line in lines], abs=1e-4)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, 'weights')}
    assert artifacts == {'weights/final.pt'}
    assert 'results.txt' in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_mlflow_failure_is_a_warning(tmp_path, capfd, monkeypatch):
    """A tracking store MLflow refuses (here its file store without the switch): one warning, the run goes on."""
    pytest.importorskip('mlflow', reason='mlflow is not installed (pip install -r requirements-test.txt)')
    monkeypatch.delenv('MLFLOW_ALLOW_FILE_STORE', raising=False)
    _run(tmp_path, 'mlbad', epochs=1, mlflow=(tmp_path / 'mlruns').as_uri())
    warnings = _warnings(capfd, 'callback mlflow failed')
    assert len(warnings) == 1 and 'training goes on without it' in warnings[0]
    assert (tmp_path / 'mlbad' / 'weights' / 'final.pt').is_file()


def test_results_png_skips_the_short_lines_of_earlier_versions(tmp_path):
    """Earlier versions wrote 7 columns for an epoch without a finite loss; results.png is drawn from the others."""
    from utils.plots import plot_results
    row = '       0/1        0G   0.05703    0.6989   0.05133    0.8073         7        96'
    full = row + '%10.4g' * 7 % ((0,) * 7)
    (tmp_path / 'results.txt').write_text(full + '\n' + '%10.4g' * 7 % ((0,) * 7) + '\n')
    plot_results(tmp_path)
    assert (tmp_path / 'results.png').is_file()
