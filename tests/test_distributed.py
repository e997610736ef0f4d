"""How a process learns its place: flags over environment, cluster detection, clear errors."""

from __future__ import annotations

import argparse

import pytest

from mtl_jax import distributed as D
from mtl_jax import train as train_cli


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    D.add_flags(p)
    return p.parse_args(list(argv))


def _launch(*argv: str, **env: str) -> D.Launch:
    return D.launch_from(_args(*argv), env)


def test_one_process_by_default_initialises_nothing(monkeypatch):
    for var in ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES",
                "MEGASCALE_COORDINATOR_ADDRESS", "TPU_PROCESS_ADDRESSES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(D, "_has_tpu_chips", lambda: False)
    launch = _launch()
    assert launch == D.Launch() and not D.should_initialize(launch)
    assert not D.should_initialize(_launch(JAX_NUM_PROCESSES="1"))


def test_environment_as_the_issue_launches_it():
    launch = _launch(JAX_COORDINATOR_ADDRESS="127.0.0.1:1234", JAX_NUM_PROCESSES="2",
                     JAX_PROCESS_ID="1")
    assert (launch.coordinator_address, launch.num_processes, launch.process_id) == (
        "127.0.0.1:1234", 2, 1)
    assert D.should_initialize(launch)


def test_flags_win_over_environment():
    launch = _launch("--coordinator_address=h:9", "--num_processes=4", "--process_id=3",
                     "--heartbeat_timeout=7", JAX_COORDINATOR_ADDRESS="x:1",
                     JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="0", MTL_JAX_HEARTBEAT_TIMEOUT="99")
    assert launch == D.Launch("auto", "h:9", 4, 3, 7)
    assert not D.should_initialize(_launch("--distributed=off", JAX_NUM_PROCESSES="2"))
    assert D.should_initialize(_launch("--distributed=on"))


@pytest.mark.parametrize("argv,env,match", [
    ((), {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two' is not a valid int"),
    (("--num_processes=2", "--process_id=2", "--coordinator_address=h:1"), {}, r"in 0\.\.1"),
    (("--num_processes=2",), {}, "missing: coordinator address, process id"),
    (("--heartbeat_timeout=0",), {}, ">= 1 second"),
    ((), {"MTL_JAX_DISTRIBUTED": "maybe"}, "expected one of"),
])
def test_bad_launches_are_named(argv, env, match, monkeypatch):
    monkeypatch.setattr(D, "_has_tpu_chips", lambda: False)
    with pytest.raises(D.DistributedConfigError, match=match):
        _launch(*argv, **env)


@pytest.mark.parametrize("env,cluster", [
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
      "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, "slurm"),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1",
      "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, None),  # one task: an interactive allocation
    ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "4"}, "openmpi"),
    ({"TPU_WORKER_HOSTNAMES": "a,b"}, "cloud_tpu"),
    ({}, None),
])
def test_cluster_detection(env, cluster):
    assert D.detected_cluster(env) == cluster


def test_train_cli_names_a_bad_launch_before_touching_anything(tmp_path, capsys):
    code = train_cli.main(["--gin_file=demo_mt5.gin", "--num_processes=2",
                           f"--gin_param=TrainConfig.model_dir={tmp_path / 'run'}"])
    assert code == train_cli.EXIT_CONFIG
    assert "missing: coordinator address, process id" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_data_shards_that_do_not_split_the_batch_stop_before_anything_is_written(tmp_path, capsys):
    code = train_cli.main(["--gin_file=demo_mt5.gin", "--gin_param=TrainConfig.data_shards=3",
                           f"--gin_param=TrainConfig.model_dir={tmp_path / 'run'}"])
    assert code == train_cli.EXIT_CONFIG
    assert "TrainConfig.data_shards=3" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
