"""One run per checkpoint path."""
import os
import subprocess
import sys

import pytest

from roi_consistency.errors import UserError
from roi_consistency.files.lock import RunLock, lock_path


def test_a_second_run_on_the_same_checkpoint_is_refused_naming_the_first(tmp_path):
    save = tmp_path / "ck.pt"
    with RunLock(save):
        assert lock_path(save).read_text().split()[0] == str(os.getpid())
        with pytest.raises(UserError, match=rf"another run \(pid {os.getpid()}\) is writing this checkpoint"):
            RunLock(save).__enter__()
    assert not lock_path(save).exists()  # released


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_note(tmp_path, capsys):
    save = tmp_path / "ck.pt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket
    lock_path(save).write_text(f"{dead.pid} {socket.gethostname()}\n")
    with RunLock(save):
        assert lock_path(save).read_text().split()[0] == str(os.getpid())
    assert f"taking over {lock_path(save)}" in capsys.readouterr().err
    lock_path(save).write_text("12 another-host\n")
    with pytest.raises(UserError, match="a run on another-host .pid 12. holds .*delete that file"):
        RunLock(save).__enter__()


def test_train_refuses_a_checkpoint_that_a_running_train_holds(phantom64, tmp_path):
    from roi_consistency.model.config import config
    from roi_consistency.training.train import fit
    save = tmp_path / "ck.pt"
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket
        lock_path(save).write_text(f"{alive.pid} {socket.gethostname()}\n")
        with pytest.raises(UserError, match=f"pid {alive.pid}"):
            fit(config(train_csv=str(phantom64["val"]), image_root=str(phantom64["images"]), save=str(save)))
    finally:
        alive.kill()
