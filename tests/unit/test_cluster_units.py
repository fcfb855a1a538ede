"""Issue 23: the pieces of `eval --ray` that need no cluster: a replica's cards read inside its share of a node,
free ports for replicas, the address forms, the profiles' cluster sections."""
from __future__ import annotations

import pytest

from rlm_rig.configs.load import load_config
from rlm_rig.experiments.runs.cluster import ClusterError, parse_address
from rlm_rig.experiments.runs.replica import pin_to_assigned_gpus


def test_profile_pins_are_read_inside_the_replicas_cards():
    cfg = load_config("a4500x2", [])
    assert cfg.cluster.gpus == 2 and cfg.controller.server.port == 8000
    pinned = pin_to_assigned_gpus(cfg, ["2", "3"])  # Ray gave this replica cards 2 and 3 of a four-card node
    assert pinned.controller.server.cuda_visible_devices == "2"
    assert pinned.worker.server.cuda_visible_devices == "3"
    assert pinned.controller.server.port == 0 and pinned.worker.server.port == 0  # two replicas on one node
    with pytest.raises(ValueError, match="holds only 1 card"):
        pin_to_assigned_gpus(cfg, ["5"])


def test_cpu_profile_replica_takes_one_cpu_and_keeps_an_attached_url():
    cfg = load_config("cpu-tiny", ["worker.server.url=http://127.0.0.1:9/v1"])
    assert (cfg.cluster.cpus, cfg.cluster.gpus) == (1.0, 0)
    assert pin_to_assigned_gpus(cfg, []).worker.server.url == "http://127.0.0.1:9/v1"


@pytest.mark.parametrize("text,want", [("local", None), ("auto", None), ("10.0.0.1:6379", ("10.0.0.1", 6379)),
                                       ("ray://head:10001", ("head", 10001))])
def test_addresses(text, want):
    assert parse_address(text) == want


@pytest.mark.parametrize("text", ["10.0.0.1", "head:port", ":6379"])
def test_bad_addresses(text):
    with pytest.raises(ClusterError, match="HOST:PORT"):
        parse_address(text)
