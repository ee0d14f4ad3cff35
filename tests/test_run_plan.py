"""The run plan's decision table (docs/architecture.md, "The run plan"), one test per row: where a run writes and
what it resumes, as utils.train.run_dir.plan_run decides it from the flags, the run folders on disk and torchrun's
environment. No training runs here: the folders hold a training checkpoint written by an earlier version."""
import shutil

import pytest

from conftest import ROOT

CKPT = ROOT / 'tests' / 'data' / 'legacy-last.pt'  # any training checkpoint will do


def _opt(project, *flags):
    import train
    return train.parse_opt(['--cfg', 'models/yolov4-p5-tiny.yaml', '--data', 'data/coco8.yaml', '--project',
                            str(project), '--name', 'exp', *flags])


def _run_with(project, name, *files):
    """project/name/weights holding a training checkpoint under each of `files`."""
    weights = project / name / 'weights'
    weights.mkdir(parents=True)
    for f in files:
        shutil.copy(CKPT, weights / f)
    return project / name


def _plan(opt):
    import train
    from utils.train.run_dir import plan_run
    plan = plan_run(opt, train.named_resume(opt))
    plan.lock.release()
    return plan


def test_new_run_takes_its_name(tmp_path):
    plan = _plan(_opt(tmp_path))
    assert plan.save_dir == tmp_path / 'exp' and plan.checkpoint is None and plan.ckpt is None


def test_new_run_numbers_a_taken_name(tmp_path):
    (tmp_path / 'exp').mkdir()
    assert _plan(_opt(tmp_path)).save_dir == tmp_path / 'exp2'


def test_new_run_with_exist_ok_takes_the_name_itself(tmp_path):
    (tmp_path / 'exp').mkdir()
    assert _plan(_opt(tmp_path, '--exist-ok')).save_dir == tmp_path / 'exp'


def test_resume_auto_continues_a_run_with_a_checkpoint(tmp_path):
    run = _run_with(tmp_path, 'exp', 'last.pt')
    plan = _plan(_opt(tmp_path, '--resume', 'auto'))
    assert plan.save_dir == run and plan.checkpoint == run / 'weights' / 'last.pt' and plan.ckpt is not None


def test_resume_auto_starts_a_run_without_one(tmp_path):
    plan = _plan(_opt(tmp_path, '--resume', 'auto'))
    assert plan.save_dir == tmp_path / 'exp' and plan.checkpoint is None


def test_resume_of_a_run_folder_takes_its_last_pt(tmp_path):
    run = _run_with(tmp_path, 'other', 'last.pt')
    plan = _plan(_opt(tmp_path, '--resume', str(run)))
    assert plan.save_dir == run and plan.checkpoint == run / 'weights' / 'last.pt'


def test_resume_of_a_file_takes_that_file(tmp_path):
    run = _run_with(tmp_path, 'other', 'last.pt', 'best.pt')
    plan = _plan(_opt(tmp_path, '--resume', str(run / 'weights' / 'best.pt')))
    assert plan.save_dir == run and plan.checkpoint == run / 'weights' / 'best.pt'


def test_bare_resume_takes_the_newest_run(tmp_path):
    import os
    old, new = _run_with(tmp_path, 'a', 'last.pt'), _run_with(tmp_path, 'b', 'last.pt')
    os.utime(old / 'weights' / 'last.pt', (1, 1))
    assert _plan(_opt(tmp_path, '--resume')).save_dir == new


def test_elastic_restart_continues_the_jobs_folder(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCHELASTIC_RUN_ID', 'job1')
    first = _plan(_opt(tmp_path))  # the job's first attempt claims a folder
    (first.save_dir / 'weights').mkdir()
    shutil.copy(CKPT, first.save_dir / 'weights' / 'last.pt')
    monkeypatch.setenv('TORCHELASTIC_RESTART_COUNT', '1')
    plan = _plan(_opt(tmp_path))
    assert plan.save_dir == first.save_dir and plan.checkpoint == first.save_dir / 'weights' / 'last.pt'


def test_elastic_restart_without_a_checkpoint_starts_again_in_the_jobs_folder(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCHELASTIC_RUN_ID', 'job1')
    first = _plan(_opt(tmp_path))
    monkeypatch.setenv('TORCHELASTIC_RESTART_COUNT', '1')
    plan = _plan(_opt(tmp_path))
    assert plan.save_dir == first.save_dir and plan.checkpoint is None


def test_unreadable_last_pt_falls_back_and_is_set_aside(tmp_path):
    run = _run_with(tmp_path, 'exp', 'last.pt', 'last-previous.pt')
    data = (run / 'weights' / 'last.pt').read_bytes()
    (run / 'weights' / 'last.pt').write_bytes(data[:len(data) // 2])
    plan = _plan(_opt(tmp_path, '--resume', 'auto'))
    assert plan.checkpoint == run / 'weights' / 'last-previous.pt'
    assert (run / 'weights' / 'last-damaged.pt').is_file() and not (run / 'weights' / 'last.pt').exists()


def test_an_unreadable_named_file_is_refused(tmp_path):
    from models.checkpoint import CheckpointError
    run = _run_with(tmp_path, 'exp', 'last.pt', 'last-previous.pt')
    data = (run / 'weights' / 'last.pt').read_bytes()
    (run / 'weights' / 'last.pt').write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError):
        _plan(_opt(tmp_path, '--resume', str(run / 'weights' / 'last.pt')))


def test_a_file_without_training_state_is_refused(tmp_path):
    from models.checkpoint import CheckpointError, strip_optimizer
    run = tmp_path / 'exp' / 'weights'
    run.mkdir(parents=True)
    strip_optimizer(CKPT, run / 'last.pt')
    with pytest.raises(CheckpointError, match='holds no training state'):
        _plan(_opt(tmp_path, '--resume', str(run / 'last.pt')))


def test_a_folder_in_use_is_refused(tmp_path):
    from utils.train.run_dir import RunInUseError, RunLock
    _run_with(tmp_path, 'exp', 'last.pt')
    held = RunLock(tmp_path / 'exp')
    try:
        with pytest.raises(RunInUseError, match='is being written by another run'):
            _plan(_opt(tmp_path, '--resume', 'auto'))
    finally:
        held.release()
