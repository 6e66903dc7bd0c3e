"""retrikt.init.adapters.lora_scaling: PEFT's own scale for a saved config, and a clear error where PEFT has none."""
import math

import pytest
from torch import nn

from retrikt.init.adapters import lora_scaling
from retrikt.io import RetriktError


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(4, 4)

    def forward(self, x):
        return self.q(x)


def _peft_scaling(config: dict) -> float:
    """The scale PEFT itself applies when it builds LoRA from ``config`` (fields left out take its defaults)."""
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(_Tiny(), LoraConfig(target_modules=["q"], **config))
    return model.base_model.model.q.scaling["default"]


@pytest.mark.parametrize("config, expected", [
    ({"r": 4, "lora_alpha": 16}, 4.0),                        # plain: alpha / r
    ({"r": 16, "lora_alpha": 8, "use_rslora": True}, 2.0),    # rsLoRA: alpha / sqrt(r)
    ({"r": 4, "lora_alpha": 16, "use_rslora": False}, 4.0),
    ({}, 1.0),                                                # PEFT's defaults r=8, lora_alpha=8
    ({"r": 4}, 2.0),
    ({"lora_alpha": 16}, 2.0),
    ({"r": 2, "lora_alpha": 3.0}, 1.5),
])
def test_lora_scaling_matches_peft(config, expected):
    assert lora_scaling(config) == pytest.approx(expected)
    assert lora_scaling(config) == pytest.approx(_peft_scaling(config))


@pytest.mark.parametrize("config, field", [
    ({"r": 0}, "r="), ({"r": -4}, "r="), ({"r": 2.5}, "r="), ({"r": None}, "r="), ({"r": True}, "r="),
    ({"r": "8"}, "r="), ({"lora_alpha": None}, "lora_alpha="), ({"lora_alpha": "16"}, "lora_alpha="),
    ({"lora_alpha": math.nan}, "lora_alpha="), ({"lora_alpha": math.inf}, "lora_alpha="),
    ({"lora_alpha": False}, "lora_alpha="),
])
def test_lora_scaling_refuses_invalid_values(config, field):
    with pytest.raises(RetriktError, match=f"some/adapter: .*{field}"):
        lora_scaling(config, where="some/adapter")


def test_port_and_arithmetic_use_the_one_lora_scaling():
    from retrikt.init import arithmetic, port_align
    from retrikt.init import portability as port
    assert port.lora_scaling is arithmetic.lora_scaling is lora_scaling
    assert not hasattr(port_align, "_lora_scaling") and not hasattr(arithmetic, "_lora_scaling")
