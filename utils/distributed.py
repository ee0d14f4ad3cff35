"""Joining the process group, with a fresh set of store keys for each torchrun attempt."""
import datetime
import logging
import os

import torch.distributed as dist

from utils.errors import UserError

LOGGER = logging.getLogger(__name__)


def attempt_store(rank, world_size, timeout):
    """Under torchrun, the rendezvous store with a key prefix of its own for each attempt (None elsewhere).

    A restart by the elastic agent keeps the agent's store, and with a static rendezvous (--master-port) the
    process group's keys of the failed attempt are still there: a restarted rank read the dead rank 0's
    address and the gloo connection failed. Fresh keys per attempt avoid that; the watchdog uses the store too.
    """
    if 'TORCHELASTIC_RESTART_COUNT' not in os.environ or 'MASTER_ADDR' not in os.environ:
        return None
    agent = os.environ.get('TORCHELASTIC_USE_AGENT_STORE') == 'True'
    store = dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), world_size,
                          is_master=not agent and rank == 0, timeout=timeout, multi_tenant=True)
    return dist.PrefixStore(f'scaled-yolov4/attempt{os.environ["TORCHELASTIC_RESTART_COUNT"]}', store)


def init_distributed(device, rank, world_size, timeout):
    """Join the process group (NCCL on CUDA, else gloo); a rendezvous that fails is one line, not a traceback."""
    timeout = datetime.timedelta(seconds=timeout)
    try:
        store = attempt_store(rank, world_size, timeout)
        dist.init_process_group(backend='nccl' if device.type != 'cpu' else 'gloo', timeout=timeout,
                                **(dict(store=store, rank=rank, world_size=world_size) if store else {}))
    except (RuntimeError, ValueError, dist.DistError) as e:
        raise UserError(f'torch.distributed could not start ({" ".join(str(e).split())[:300]}): start train.py '
                        f'with torchrun (or set MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE) and check that every '
                        f'node reaches the rendezvous address') from None


def process_group_store():
    """The process group's key-value store (the rendezvous store under torchrun), for the watchdog."""
    try:
        return dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError) as e:
        LOGGER.warning('WARNING: the watchdog cannot see the other ranks (%s): it watches this rank only', e)
        return None
