"""Components are identical in every process (seeded), and a training checkpoint overrides them."""

import pytest
import torch
from safetensors.torch import save_file

from minmo.model.build import BUILDERS, build_component
from minmo.model.config import load_config


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_process_builds_the_same_weights(name):
    first, second = (build_component(load_config("tiny"), name) for _ in range(2))
    for (key, left), (_, right) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(left, right), key


def test_a_checkpoint_overrides_the_seeded_weights(tmp_path):
    cfg = load_config("tiny")
    trained = {key: value + 1 for key, value in build_component(cfg, "output_projector").state_dict().items()}
    save_file(trained, str(tmp_path / "output_projector.safetensors"))
    loaded = build_component(cfg, "output_projector", checkpoint=tmp_path)
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in trained.items())
    assert not loaded.training, "components come back in eval mode"


def test_a_checkpoint_that_does_not_fit_is_an_error(tmp_path):
    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "output_projector.safetensors"))
    with pytest.raises(RuntimeError, match="state_dict"):
        build_component(load_config("tiny"), "output_projector", checkpoint=tmp_path)
