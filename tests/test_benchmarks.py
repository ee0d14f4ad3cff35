"""The benchmark script: quick mode prints its tables, CUDA graphs are refused on CPU by name,
JSON lines round-trip, peaks are looked up by GPU name (speed figures are reported, not asserted)."""
import json
import re
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from utils.benchmarks.modes import fp16_peak_tflops, main

INFER_ROW = r'\n\s+{bs}\s+float32\s+contiguous\s+{runner}\s+native\s+{nms}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+-'


def test_infer_quick_prints_table(capsys, tmp_path):
    log = tmp_path / 'bench.jsonl'
    for _ in range(2):  # --json appends one line per run
        main(['--cfg', 'models/yolov4-csp.yaml', '--img', '64', '--batch-size', '1', '--device', 'cpu', '--quick',
              '--json', str(log)])
    out = capsys.readouterr().out
    assert out.startswith('infer benchmark: models/yolov4-csp.yaml on CPU')
    assert re.search(r'\n[\d.]+ GFLOPs per image at 64\n', out)
    assert re.search(r'batch\s+dtype\s+memory format\s+runner\s+mish\s+NMS\s+ms/batch\s+images/s\s+TFLOP/s\s+'
                     r'% fp16 peak', out)
    assert re.search(INFER_ROW.format(bs=1, runner='eager', nms='no'), out)
    assert re.search(INFER_ROW.format(bs=1, runner='eager', nms='yes'), out)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 2 and lines[0]['columns'][0] == 'batch' and len(lines[0]['rows']) == 2
    assert lines[0]['rows'][0][:6] == [1, 'float32', 'contiguous', 'eager', 'native', 'no']


def test_infer_compile_runner_on_cpu(capsys):
    main(['--cfg', 'models/yolov4-p5-tiny.yaml', '--img', '64', '--batch-size', '2', '--quick', '--runner', 'compile',
          '--mish', 'native', 'cuda', '--dtype', 'float32', 'float16'])
    out = capsys.readouterr().out
    assert re.search(INFER_ROW.format(bs=2, runner='compile', nms='yes'), out)
    assert len(re.findall(r'\n\s+2\s+float32', out)) == 2  # --mish cuda adds no CPU row: it would run native
    assert len(re.findall(r'\n\s+2\s+float16\s+contiguous\s+compile\s+native', out)) == 2


def test_cuda_graph_runner_refused_on_cpu():
    with pytest.raises(SystemExit, match='--runner graph needs a CUDA device'):
        main(['--quick', '--img', '64', '--runner', 'graph'])


def test_fp16_peak_by_device_name():
    assert fp16_peak_tflops('NVIDIA H100 80GB HBM3') == 989.4
    assert fp16_peak_tflops('NVIDIA H100 PCIe') == 756.0
    assert fp16_peak_tflops('NVIDIA A100-SXM4-80GB') == 312.0
    assert fp16_peak_tflops('Some Future GPU') is None


def test_train_quick_prints_table(capsys):
    main(['--mode', 'train', '--img', '64', '--batch-size', '2', '--quick'])
    out = capsys.readouterr().out
    assert 'train benchmark: models/yolov4-p5-tiny.yaml' in out
    assert re.search(r'batch\s+img\s+precision\s+mish\s+ms/step\s+images/s\s+peak MiB', out)
    assert re.search(r'\n\s+2\s+64\s+float32\s+native\s+[\d.]+\s+[\d.]+\s+\d+', out)


def test_train_on_cpu_reports_the_peak_of_live_tensors(capsys):
    """On the CPU each eager row also gives the live-tensor peak, which lies below the process's peak RSS."""
    main(['--mode', 'train', '--img', '64', '--batch-size', '2', '--quick'])
    out = capsys.readouterr().out
    assert re.search(r'peak MiB\s+tensor MiB\s+memory format', out)
    row = re.search(r'\n\s+2\s+64\s+float32\s+native\s+[\d.]+\s+[\d.]+\s+(\d+)\s+(\d+)', out)
    rss, tensors = map(int, row.groups())
    assert 0 < tensors < rss


MiB = 2 ** 20


def test_tensor_peak_counts_what_autograd_keeps():
    """Known by construction: float32 tensors of 1 MiB each. The output sigmoid saves for backward stays counted after
    Python lets go of it, until backward frees the graph; the peak is reached in backward (the saved output and two
    gradients); in-place updates and views of counted tensors add nothing; tensors made before are the baseline."""
    import gc

    from utils.benchmarks.tensor_peak import TensorPeak, storage_bytes
    x = torch.ones(256, 1024, requires_grad=True)
    assert storage_bytes([x, x.view(-1), x[:10]]) == MiB  # views of one storage count once
    with TensorPeak(baseline_bytes=MiB) as counter:
        y = x.sigmoid()
        z = y * 2
        z.add_(1)
        z.view(-1)
        del y
        gc.collect()
        assert counter.current == MiB + 2 * MiB  # x, z, and y kept by the graph
        s = z.sum()
        del z
        s.backward()
        del s
        assert counter.current == MiB + MiB  # x and x.grad
    assert counter.peak == MiB + 3 * MiB + 8  # x, then y and two 1 MiB gradients; s and its gradient, 4 bytes each


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU to compare with')
def test_tensor_peak_agrees_with_cuda_max_memory_allocated():
    """The real judge: CUDA's caching allocator. A training step of a checkpointed MLP (no cuDNN, whose work buffers
    the counter cannot see; cuBLAS's workspace is made in the warm-up): the peak of live tensors is the rise of
    max_memory_allocated, to the allocator's 512-byte rounding."""
    from torch.utils.checkpoint import checkpoint

    from utils.benchmarks.tensor_peak import TensorPeak
    layers = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.SiLU())
                                   for _ in range(6)]).cuda()
    x = torch.rand(512, 1024, device='cuda')

    def step():
        h = x
        for i, layer in enumerate(layers):
            h = checkpoint(layer, h, use_reentrant=False) if i % 2 else layer(h)
        h.square().mean().backward()
        layers.zero_grad(set_to_none=True)
    step()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with TensorPeak(before) as counter:
        step()
    torch.cuda.synchronize()
    assert counter.peak == pytest.approx(torch.cuda.max_memory_allocated(), abs=512 * 64)


def test_data_quick_prints_table(capsys):
    main(['--mode', 'data', '--img', '128', '--source', str(ROOT / 'data' / 'coco8'), '--quick'])
    out = capsys.readouterr().out
    assert re.search(r'128\s+per-sample seeds\s+8\s+[\d.]+', out) and re.search(r'128\s+plain index\s+8\s+[\d.]+', out)


@pytest.mark.parametrize('source', ['data/coco8/images', 'data/coco8.yaml'])
def test_data_source_images_folder_or_data_yaml(capsys, source):
    main(['--mode', 'data', '--img', '96', '--source', str(ROOT / source), '--quick'])
    assert re.search(r'96\s+per-sample seeds\s+8\s+[\d.]+', capsys.readouterr().out)


def test_data_source_missing_is_named(tmp_path):
    with pytest.raises(SystemExit, match=f'--source {tmp_path / "nope"} not found'):
        main(['--mode', 'data', '--source', str(tmp_path / 'nope'), '--quick'])


def test_checkpoint_mode_times_a_save(capsys, tmp_path, monkeypatch):
    """The background write is reported with the training steps taken while it ran. A fast write may end before
    the first step, so the write is held busy until one step has run (injected timing): the column must count
    exactly the steps the loop took."""
    from utils.train.checkpoint_writer import CheckpointWriter
    busy, calls = CheckpointWriter.busy, []

    def busy_until_a_step(self):
        calls.append(busy(self))
        return len(calls) == 1 or calls[-1]
    monkeypatch.setattr(CheckpointWriter, 'busy', busy_until_a_step)
    main(['--mode', 'checkpoint', '--quick', '--save-dir', str(tmp_path)])
    row = re.search(r'\n\s+2\s+640\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)%',
                    capsys.readouterr().out)
    assert row and int(row.group(1)) > 1  # MiB
    assert int(row.group(6)) == len(calls) - 1 >= 1, calls  # one step per busy() answered True
    assert not list(tmp_path.iterdir())  # its temporary folder is gone


def test_train_options_one_row_each(capsys):
    main(['--mode', 'train', '--img', '64', '--batch-size', '2', '--quick', '--dtype', 'float32', 'bfloat16',
          '--memory-format', 'contiguous', 'channels_last', '--optimizer-impl', 'default', 'foreach'])
    out = capsys.readouterr().out
    numbers = r'\s+[\d.]+\s+[\d.]+\s+\d+\s+\d+'  # ms/step, images/s, peak MiB, tensor MiB
    rows = re.findall(r'\n\s+2\s+64\s+(float32|AMP bfloat16)\s+native' + numbers + r'\s+(\S+)\s+eager\s+(\S+)', out)
    assert len(rows) == 8 and len(set(rows)) == 8, out


def test_test_mode_prints_the_time_split(capsys, monkeypatch):
    import subprocess
    import time
    run, commands = subprocess.run, []

    def timed_run(cmd, *args, **kwargs):
        t = time.perf_counter()
        proc = run(cmd, *args, **kwargs)
        commands.append((cmd, proc, time.perf_counter() - t))
        return proc
    monkeypatch.setattr(subprocess, 'run', timed_run)
    main(['--mode', 'test', '--cfg', 'models/yolov4-p5-tiny.yaml', '--img', '64', '--batch-size', '4', '--device',
          'cpu', '--source', str(ROOT / 'data' / 'coco8.yaml')])
    out = capsys.readouterr().out
    assert re.search(r'batch\s+memory format\s+images\s+total s\s+inference s\s+NMS s\s+COCO JSON\+eval s', out)
    row = re.search(r'\n\s+4\s+contiguous\s+8\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(-?[\d.]+)\s+([\d.]+)'
                    r'\s+([\d.]+)', out)
    total, inference, nms, coco, rest, mean_ap, command = map(float, row.groups())
    # the parts are measured separately and 'rest' is what is left of the total: nothing may be counted twice
    assert inference > 0 and min(nms, coco) >= 0 and rest >= -0.02 and inference + nms + coco <= total + 0.02
    # the command column times `python test.py` on the same weights and data, run to its end in a fresh process
    # (its pycocotools AP is the in-process one) and waited for: at least as long as the process ran
    (cmd, proc, seconds), = commands
    assert Path(cmd[1]).name == 'test.py' and cmd[cmd.index('--batch') + 1] == '4' and proc.returncode == 0
    summary = re.search(r'pycocotools: AP ([\d.]+),', proc.stdout + proc.stderr)  # the column is this AP
    assert summary and summary.group(1) == f'{mean_ap:.4f}', (proc.stdout + proc.stderr)[-2000:]
    assert command >= round(seconds, 2) - 0.01, (command, seconds)


def test_compare_nms_scores_like_the_published_nms(capsys, monkeypatch):
    """--compare-nms runs the published NMS on the same predictions: below our candidate cap, every image it
    scores has exactly our detections. A relative --source also reaches the `python test.py` run."""
    monkeypatch.chdir(ROOT)
    main(['--mode', 'test', '--cfg', 'models/yolov4-p5-tiny.yaml', '--img', '64', '--batch-size', '4', '--device',
          'cpu', '--source', 'data/coco8.yaml', '--compare-nms'])
    out = capsys.readouterr().out
    assert re.search(r'max candidates\s+published NMS s\s+published scored\s+identical', out)
    candidates, seconds, scored, identical = re.search(r'\n\s+4\s+contiguous\s+8(?:\s+\S+){7}\s+(\d+)\s+([\d.]+)'
                                                       r'\s+(\d+)\s+(\d+)', out).groups()
    assert 0 < int(candidates) < 30000 and int(scored) == int(identical) == 8


def test_scale_mode_on_a_small_dataset(tmp_path):
    """--mode scale at a small size: the dataset is made, scanned cold and warm, the loader workers' memory is read
    after each epoch, and test.py's time is split, with its COCO scoring of the made annotations."""
    log = tmp_path / 'scale.jsonl'
    main(['--mode', 'scale', '--device', 'cpu', '--scale-images', '48', '16', '--iters', '2', '--epochs', '2',
          '--img', '64', '--workers', '1', '--json', str(log), '--save-dir', str(tmp_path)])
    rows = dict(json.loads(log.read_text())['rows'])
    assert rows['training images'] == 48 and rows['validation images (boxes)'].startswith('16 (')
    uss = [rows[f'loader worker USS MB after epoch {e} (2 batches)'] for e in (0, 1)]
    assert all(re.fullmatch(r'\d+', u) for u in uss), uss  # one worker, a figure each epoch
    for key in ('label scan, cold s', 'test.py total s', '  model s', '  NMS s', '  metrics s', '  COCO JSON s',
                '  COCO scoring s', 'test.py peak RSS MB'):
        assert re.fullmatch(r'[\d.]+', rows[key]), (key, rows[key])
    assert list(tmp_path.iterdir()) == [log]  # the made dataset is removed
